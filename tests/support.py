"""Helpers shared by the tests: broker names per test, event collection, publishing."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

import aio_pika
import orjson

from producers.wire import submit_key
from scheduler_daemon.daemon import Daemon
from scheduler_daemon.queueconf import queue_of_key
from scheduler_daemon.settings import ClusterConfig, Settings

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def make_settings(tmp_path: Any, **overrides: Any) -> Settings:
    """Settings with broker names of their own, so tests never see each other's messages."""
    tag = uuid.uuid4().hex[:8]
    base = Settings(
        amqp_url=AMQP_URL,
        http_addr=f"127.0.0.1:{_free_port()}",
        intake_exchange=f"t.{tag}.jobs",
        intake_queue=f"t.{tag}.jobs.submit",
        dead_letter_exchange=f"t.{tag}.jobs.dlx",
        dead_letter_queue=f"t.{tag}.jobs.dead",
        events_exchange=f"t.{tag}.events",
        status_queue=f"t.{tag}.status",
        control_queue=f"t.{tag}.control",
        probe_interval_s=0.5,
        track_interval_s=0.3,
        state_dir=str(tmp_path / "state"),
        lost_after_s=5.0,
        window_size=4,
        status_service="inline",  # the status service in the test's event loop; real processes use "process"
        unrouted_policy=False,  # a `rabbitmqctl` run per daemon (0.8 s of CPU); tests/test_queues.py turns it on
    )
    return replace(base, **overrides).validate()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def delete_topology(s: Settings) -> None:
    conn = await aio_pika.connect(s.amqp_url, **s.amqp_connect_kwargs())
    async with conn:
        ch = await conn.channel()
        queues = [queue_of_key(s.intake_queue, q.name) for q in s.queues]
        for q in (*queues, s.dead_letter_queue, s.status_queue, s.control_queue, f"{s.intake_exchange}.unrouted"):
            with contextlib.suppress(Exception):
                await ch.queue_delete(q)
        for x in (s.intake_exchange, s.dead_letter_exchange, s.events_exchange, f"{s.intake_exchange}.unrouted"):
            with contextlib.suppress(Exception):
                await ch.exchange_delete(x)


class Events:
    """Collects every event from the events exchange into a list, in arrival order."""

    def __init__(self, settings: Settings, pattern: str = "#") -> None:
        self.settings = settings
        self.pattern = pattern
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def __aenter__(self) -> "Events":
        self.conn = await aio_pika.connect(self.settings.amqp_url, **self.settings.amqp_connect_kwargs())
        ch = await self.conn.channel()
        ex = await ch.declare_exchange(self.settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue(exclusive=True)
        await q.bind(ex, self.pattern)

        async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.items.append({**orjson.loads(msg.body), "_recv": time.time()})
            self._changed.set()
            await msg.ack()

        await q.consume(on)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.conn.close()

    def of(self, sid: str) -> list[dict[str, Any]]:
        """The job events of one job (not stop requests or their answers)."""
        return [e for e in self.items if e.get("submission_id") == sid and "state" in e]

    def answers(self, sid: str) -> list[dict[str, Any]]:
        return [e for e in self.items if e.get("event") == "control.stop.answer" and e.get("submission_id") == sid]

    def states(self, sid: str) -> list[str]:
        return [e["state"] for e in self.of(sid)]

    def first(self, sid: str, state: str, attempt: int | None = None) -> float:
        """When the first event of `state` (of `attempt`, if given) arrived, by time.time()."""
        return next(e["_recv"] for e in self.of(sid)
                    if e["state"] == state and (attempt is None or e["attempt"] == attempt))

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what or pred}; events: {self.items[-20:]}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def wait_final(self, sids: list[str], timeout: float = 120.0) -> None:
        def pending() -> dict[str, list[str]]:
            return {s: self.states(s) for s in sids if not any(e.get("final") for e in self.of(s))}
        try:
            await self.wait_for(lambda: not pending(), timeout, "final states")
        except AssertionError:
            raise AssertionError(f"no final state after {timeout} s for {len(pending())} of {len(sids)} jobs;"
                                 f" their states: {pending()}") from None


async def publish(settings: Settings, body: dict[str, Any] | bytes, *, priority: int = 0,
                  message_id: str | None = None, queue: str | None = None, user_id: str | None = None,
                  routing_key: str | None = None) -> None:
    conn = await aio_pika.connect(settings.amqp_url, **settings.amqp_connect_kwargs())
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(settings.intake_exchange)
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        await ex.publish(aio_pika.Message(data, priority=priority, message_id=message_id, user_id=user_id,
                                          content_type="application/json",
                                          delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                         routing_key=routing_key or submit_key(queue, settings.intake_routing_key))


async def publish_many(settings: Settings, bodies: list[tuple[dict[str, Any], int]], *,
                       queue: str | None = None) -> None:
    conn = await aio_pika.connect(settings.amqp_url, **settings.amqp_connect_kwargs())
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(settings.intake_exchange)
        for body, prio in bodies:
            await ex.publish(aio_pika.Message(orjson.dumps(body), priority=prio, content_type="application/json",
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key=submit_key(queue, settings.intake_routing_key))


async def queue_depth(settings: Settings, queue: str | None = None) -> int:
    conn = await aio_pika.connect(settings.amqp_url, **settings.amqp_connect_kwargs())
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue or settings.intake_queue, passive=True)
        return int(q.declaration_result.message_count or 0)


@contextlib.asynccontextmanager
async def running_daemon(settings: Settings, clusters: tuple[ClusterConfig, ...], *,
                         cleanup: bool = True) -> AsyncIterator[Daemon]:
    from scheduler_daemon.broker import declare

    await declare(settings)
    daemon = Daemon(settings, clusters)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
        if cleanup:
            await delete_topology(settings)


@contextlib.asynccontextmanager
async def failover_pair(settings: Settings, clusters: tuple[ClusterConfig, ...]
                        ) -> AsyncIterator[Callable[[], Any]]:
    """Two in-process daemons of a failover pair (`settings` with failover on; they share its
    state): the first leads. The yielded `hand_over()` stops it and waits until the second leads."""
    from scheduler_daemon.broker import declare

    await declare(settings)
    first, second = Daemon(settings, clusters), Daemon(settings, clusters)
    standby = None
    try:
        await first.start()
        standby = asyncio.create_task(second.start())

        async def hand_over() -> None:
            await first.stop()
            await asyncio.wait_for(standby, 30)

        yield hand_over
    finally:
        if standby is not None and not standby.done():
            standby.cancel()
        await first.stop()
        await second.stop()
        await delete_topology(settings)


def sid(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def wait_idle(daemon: Daemon, timeout: float = 30.0) -> None:
    """Wait until the daemon sees every CPU and GPU of every cluster free (earlier tests'
    jobs leave Ray's 5-second snapshot behind them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = daemon.prober.views()
        if views and all(v.nodes for v in views) and all(
                n.free(r) >= n.total[r] for v in views for n in v.nodes for r in ("CPU", "GPU") if r in n.total):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"clusters not idle after {timeout}s: {[v.summary() for v in daemon.prober.views()]}")


async def request_stop(settings: Settings, submission_id: str, reason: str = "test") -> None:
    """Publish a stop request as the contract says: to the event exchange, key control.stop."""
    conn = await aio_pika.connect(settings.amqp_url, **settings.amqp_connect_kwargs())
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(settings.events_exchange)
        await ex.publish(aio_pika.Message(orjson.dumps({"submission_id": submission_id, "reason": reason}),
                                          content_type="application/json"), routing_key="control.stop")


def daemon_launcher(settings: Settings, clusters: tuple[ClusterConfig, ...], workdir: Any,
                    log_name: str = "daemon.log") -> Callable[[], Any]:
    """A function that starts the daemon as a real process (python -m scheduler_daemon) with these
    settings (as RMCS_* variables) and clusters, logging to workdir/<log_name>."""
    import os
    import subprocess
    import sys

    import yaml

    clusters_file = workdir / "clusters.yaml"
    clusters_file.write_text(yaml.safe_dump({"clusters": {
        c.name: {"dashboard_url": c.dashboard_url, "tags": sorted(c.tags)} for c in clusters}}))
    env = dict(os.environ, **{f"RMCS_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                              for k, v in settings.__dict__.items() if isinstance(v, (str, int, float))})
    if settings.status_service == "inline":  # a real daemon runs its status service as a real child
        env["RMCS_STATUS_SERVICE"] = "process"

    def start() -> subprocess.Popen[bytes]:
        log = open(workdir / log_name, "ab")
        return subprocess.Popen([sys.executable, "-m", "scheduler_daemon", "--clusters", str(clusters_file)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)

    return start


async def assert_each_ran_once_on_ray(clusters: tuple[ClusterConfig, ...], sids: list[str],
                                      status: str | None = "SUCCEEDED") -> None:
    """Check the clusters' own job lists: each job is on exactly one cluster, once (and ended
    with `status`, when given)."""
    from scheduler_daemon.rayapi import RayDashboard

    seen: dict[str, list[Any]] = {j: [] for j in sids}
    for c in clusters:
        dash = RayDashboard(c, 10)
        try:
            for info in await dash.list_jobs():
                if info.get("submission_id") in seen:
                    seen[info["submission_id"]].append(info)
        finally:
            await dash.close()
    assert all(len(v) == 1 for v in seen.values()), {j: len(v) for j, v in seen.items() if len(v) != 1}
    if status is not None:
        assert all(v[0]["status"] == status for v in seen.values()), \
            {j: v[0]["status"] for j, v in seen.items() if v[0]["status"] != status}
