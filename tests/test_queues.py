"""Queues for teams (docs/queues.md) against the real RabbitMQ and fake dashboards: one RabbitMQ
queue per rmcs queue, consumed only while the queue can place; publishers; the queue on events;
messages to no queue dead-lettered with a reason; a removed queue's messages kept."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

import aio_pika
import pytest

from brokeradmin import rabbitmqctl
from fakeray import FakeCluster, FakeServer
from support import Events, make_settings, publish, publish_many, queue_depth, running_daemon, sid

from producers.wire import REASON_HEADER
from scheduler_daemon.broker import alternate_exchange_policy, apply_policy, apply_policy_here, declare
from scheduler_daemon.queueconf import parse_queues, queue_of_key

pytestmark = pytest.mark.usefixtures("rabbitmq")


def queued(tmp_path: Any, queues: dict[str, Any], **kw: Any) -> Any:
    return make_settings(tmp_path, queues=parse_queues(queues), **kw)


@contextlib.asynccontextmanager
async def fleet(*clusters: FakeCluster) -> Any:
    servers = [FakeServer([c]) for c in clusters]
    for server in servers:
        await server.start()
    try:
        yield tuple(c.config() for c in clusters)
    finally:
        for server in servers:
            await server.stop()


async def dead_letters(s: Any, n: int, timeout: float = 10.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    conn = await aio_pika.connect(s.amqp_url)
    got: list[Any] = []
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(s.dead_letter_queue, passive=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < n and loop.time() < deadline:
            msg = await q.get(no_ack=True, fail=False)
            if msg is None:
                await asyncio.sleep(0.1)
            else:
                got.append(msg)
    return got


async def test_each_queue_has_its_rabbitmq_queue_and_events_carry_it(tmp_path: Any) -> None:
    s = queued(tmp_path, {"research": {"weight": 2}, "batch": {}})
    async with fleet(FakeCluster("c0", nodes={"n": {"CPU": 4, "memory": 8 * 2**30}})) as configs, \
            running_daemon(s, configs) as daemon, Events(s) as ev:
        a, b, c = sid("r"), sid("b"), sid("d")
        await publish(s, {"submission_id": a, "entrypoint": "/bin/sleep 0.2"}, queue="research")
        await publish(s, {"submission_id": b, "entrypoint": "/bin/sleep 0.2", "queue": "batch"}, queue="batch")
        await publish(s, {"submission_id": c, "entrypoint": "/bin/sleep 0.2"})
        await ev.wait_final([a, b, c], 30)
        for job, queue in ((a, "research"), (b, "batch"), (c, "default")):
            assert ev.states(job)[-1] == "SUCCEEDED", ev.of(job)
            assert {e["queue"] for e in ev.of(job)} == {queue}
        assert set(daemon.intake.topology.queues) == {"default", "research", "batch"}
        assert await queue_depth(s, queue_of_key(s.intake_queue, "research")) == 0


async def test_publishers_and_a_disagreeing_body_are_rejected_with_the_reason(tmp_path: Any) -> None:
    s = queued(tmp_path, {"research": {"publishers": ["guest"]}, "batch": {"publishers": ["alice"]}})
    async with fleet(FakeCluster("c0")) as configs, running_daemon(s, configs), Events(s) as ev:
        ok, refused, wrong = sid("ok"), sid("no"), sid("wrong")
        await publish(s, {"submission_id": ok, "entrypoint": "/bin/true"}, queue="research", user_id="guest")
        await publish(s, {"submission_id": refused, "entrypoint": "/bin/true"}, queue="batch", user_id="guest")
        await publish(s, {"submission_id": wrong, "entrypoint": "/bin/true", "queue": "research"}, queue="batch")
        await ev.wait_final([ok, refused, wrong], 30)
        assert ev.states(ok)[-1] == "SUCCEEDED"
        rejected = ev.of(refused)[-1]
        assert rejected["state"] == "REJECTED" and rejected["queue"] == "batch"
        assert "broker user 'guest' may not publish to queue 'batch'" in rejected["message"]
        assert "names queue 'research' but the message came through queue 'batch'" in ev.of(wrong)[-1]["message"]
        reasons = {m.message_id or "": (m.headers or {}).get(REASON_HEADER) for m in await dead_letters(s, 2)}
        assert any("may not publish to queue 'batch'" in str(r) for r in reasons.values()), reasons


async def test_a_full_queue_is_not_consumed_and_its_backlog_stays_in_rabbitmq(tmp_path: Any) -> None:
    s = queued(tmp_path, {"small": {"max_running": 1}, "open": {}}, window_size=4)
    cluster = FakeCluster("c0", nodes={"n": {"CPU": 8, "memory": 8 * 2**30}})
    async with fleet(cluster) as configs, running_daemon(s, configs) as daemon, Events(s) as ev:
        await publish_many(s, [({"submission_id": sid("s"), "entrypoint": "/bin/sleep 30"}, 0) for _ in range(20)],
                           queue="small")
        other = sid("o")
        await asyncio.sleep(1.5)
        await publish(s, {"submission_id": other, "entrypoint": "/bin/sleep 0.1"}, queue="open")
        await ev.wait_final([other], 20)  # the other queue is not held up
        assert ev.states(other)[-1] == "SUCCEEDED"
        running = [t for t in daemon.book.tracked.values() if t.job.queue == "small" and not t.final]
        assert len(running) == 1, "max_running bounds the queue's jobs in flight"
        assert not daemon.intake.is_active("small")
        assert await queue_depth(s, queue_of_key(s.intake_queue, "small")) >= 20 - 1 - s.window_size


@pytest.mark.parametrize("by", ["rmcs-declare", "the-daemon"])
async def test_unrouted_messages_are_dead_lettered_with_a_reason(tmp_path: Any, by: str) -> None:
    """The alternate-exchange policy, applied by `rmcs declare` (its `apply_policy`) before the
    daemon runs, or by the daemon itself at start (the broker is on its host)."""
    s = queued(tmp_path, {"research": {}}, unrouted_policy=by == "the-daemon")
    name = alternate_exchange_policy(s)[0]
    try:
        if by == "rmcs-declare":
            await declare(s)
            await apply_policy(s)
        async with fleet(FakeCluster("c0")) as configs, running_daemon(s, configs):
            for _ in range(60):  # the daemon applies it in the background
                if name in await asyncio.to_thread(rabbitmqctl, "list_policies", "-p", "/"):
                    break
                await asyncio.sleep(0.5)
            lost = sid("x")
            async with Events(s) as ev:
                await publish(s, {"submission_id": lost, "entrypoint": "/bin/true"}, message_id=lost,
                              routing_key="submit.nosuchqueue")
                await ev.wait_final([lost], 10)
                assert ev.states(lost) == ["REJECTED"] and "'submit.nosuchqueue' reaches no queue" in ev.of(lost)[0]["message"]
            (msg,) = await dead_letters(s, 1)
            assert msg.message_id == lost
            assert "'submit.nosuchqueue'" in str((msg.headers or {})[REASON_HEADER])
    finally:
        rabbitmqctl("clear_policy", "-p", "/", name)


async def test_a_removed_queue_keeps_its_messages_and_is_reported(tmp_path: Any) -> None:
    s = queued(tmp_path, {"gone": {}})
    async with fleet(FakeCluster("c0")) as configs:
        async with running_daemon(s, configs, cleanup=False):
            pass
        await publish_many(s, [({"submission_id": sid("g"), "entrypoint": "/bin/true"}, 0) for _ in range(3)],
                           queue="gone")
        s2 = replace(s, queues=parse_queues({}))  # restarted without the queue
        async with running_daemon(s2, configs, cleanup=False) as daemon:
            assert daemon.tenancy.removed == {"gone"}
            depths = await daemon.queue_depths()
            assert depths["gone"] == 3
            report = {q["name"]: q for q in daemon.tenancy.report(depths)}
            assert report["gone"]["configured"] is False and report["gone"]["waiting_in_broker"] == 3
    assert await queue_depth(s, queue_of_key(s.intake_queue, "gone")) == 3
    from support import delete_topology
    await delete_topology(s)


async def test_an_idle_queue_gets_its_guarantee_back_by_preemption(tmp_path: Any) -> None:
    s = queued(tmp_path, {"prod": {"guaranteed": {"CPU": 2}}, "batch": {"max_running": 10}})
    cluster = FakeCluster("c0", nodes={"n": {"CPU": 4, "memory": 8 * 2**30}})
    async with fleet(cluster) as configs, running_daemon(s, configs), Events(s) as ev:
        batch = [sid("batch") for _ in range(4)]
        await publish_many(s, [({"submission_id": b, "entrypoint": "/bin/sleep 4", "max_retries": 0}, i)
                               for i, b in enumerate(batch)], queue="batch")
        await ev.wait_for(lambda: all("RUNNING" in ev.states(b) for b in batch), 15, "batch holds the fleet")
        prod = [sid("prod"), sid("prod")]
        await publish_many(s, [({"submission_id": p, "entrypoint": "/bin/sleep 1"}, 0) for p in prod], queue="prod")
        await ev.wait_for(lambda: all("DISPATCHED" in ev.states(p) for p in prod), 10, "prod dispatched")
        await ev.wait_final(batch + prod, 40)
        preempted = [b for b in batch if "PREEMPTED" in ev.states(b)]
        print("preempted", preempted, "max demand", cluster.max_demand)
        assert 1 <= len(preempted) <= 2, {b: ev.states(b) for b in batch}
        # prod got its place from preemption, before any batch job ended by itself (how fast:
        # bench/fair_share.py).
        first_end = min(ev.first(b, "SUCCEEDED", attempt=1) for b in batch if b not in preempted)
        assert max(ev.first(p, "DISPATCHED") for p in prod) < first_end, ev.items
        # The lowest priority go first (the batch jobs have priorities 0, 1, 2, 3).
        assert set(preempted) <= set(batch[:2]) and batch[0] in preempted
        for b in preempted:
            event = next(e for e in ev.of(b) if e["state"] == "PREEMPTED")
            assert event["event"] == "job.preempted.c0" and event["attempt"] == 1 and event["final"] is False
            assert "queue prod is owed its guarantee" in event["message"] and "batch" in event["message"]
            final = ev.of(b)[-1]
            assert (final["state"], final["attempt"]) == ("SUCCEEDED", 2), ev.states(b)
            assert "RETRYING" not in ev.states(b)
        assert all(ev.states(x)[-1] == "SUCCEEDED" for x in batch + prod)
        ray_ids = [name for _, name in cluster.submissions]
        assert len(ray_ids) == len(set(ray_ids)) == 6 + len(preempted)  # every attempt once


async def test_several_waiting_jobs_preempt_at_once_and_never_below_a_guarantee(tmp_path: Any) -> None:
    s = queued(tmp_path, {"prod": {"guaranteed": {"CPU": 4}}, "batch": {"guaranteed": {"CPU": 3}}}, window_size=8)
    cluster = FakeCluster("c0", nodes={"n": {"CPU": 8, "memory": 8 * 2**30}})
    async with fleet(cluster) as configs, running_daemon(s, configs), Events(s) as ev:
        batch = [sid("batch") for _ in range(8)]
        await publish_many(s, [({"submission_id": b, "entrypoint": "/bin/sleep 5"}, 0) for b in batch], queue="batch")
        await ev.wait_for(lambda: all("RUNNING" in ev.states(b) for b in batch), 15, "batch holds the fleet")
        prod = [sid("prod") for _ in range(6)]
        await publish_many(s, [({"submission_id": p, "entrypoint": "/bin/sleep 2"}, 0) for p in prod], queue="prod")
        await ev.wait_for(lambda: sum("RUNNING" in ev.states(p) for p in prod) >= 4, 10, "prod holds its guarantee")
        held = sorted(ev.first(p, "RUNNING") for p in prod if "RUNNING" in ev.states(p))[3]
        preempted = [b for b in batch if "PREEMPTED" in ev.states(b)]
        print(f"{len(preempted)} batch jobs preempted")
        assert len(preempted) <= 5, "batch keeps its own guarantee of 3 of the 8 CPUs"
        # prod held its guarantee by preemption, before any batch job ended by itself.
        ended = [e["_recv"] for b in batch for e in ev.of(b) if e["state"] == "SUCCEEDED" and e["attempt"] == 1]
        assert not ended or held < min(ended), ev.items
        await ev.wait_final(batch + prod, 60)
        assert all(ev.states(x)[-1] == "SUCCEEDED" for x in batch + prod)
        ray_ids = [name for _, name in cluster.submissions]
        dispatched = {e["submission_id"] if e["attempt"] == 1 else f"{e['submission_id']}~{e['attempt']}"
                      for x in batch + prod for e in ev.of(x) if e["state"] == "DISPATCHED"}
        assert len(ray_ids) == len(set(ray_ids)) and set(ray_ids) == dispatched  # each attempt once


async def test_a_waiting_job_does_not_preempt_again_while_ray_frees_its_victims_share(tmp_path: Any) -> None:
    """Ray shows a stopped job STOPPED before its resources are back (here 2 s later): the job its
    stop was for waits for them, and stops nobody else meanwhile."""
    s = queued(tmp_path, {"prod": {"guaranteed": {"CPU": 1}}, "batch": {}})
    cluster = FakeCluster("c0", nodes={"n": {"CPU": 2, "memory": 8 * 2**30}}, stop_lag_s=2.0)
    async with fleet(cluster) as configs, running_daemon(s, configs), Events(s) as ev:
        batch = [sid("batch") for _ in range(2)]
        await publish_many(s, [({"submission_id": b, "entrypoint": "/bin/sleep 6"}, 0) for b in batch], queue="batch")
        await ev.wait_for(lambda: all("RUNNING" in ev.states(b) for b in batch), 15, "batch holds the fleet")
        prod = sid("prod")
        await publish(s, {"submission_id": prod, "entrypoint": "/bin/sleep 1"}, queue="prod")
        await ev.wait_final(batch + [prod], 40)
        preempted = [b for b in batch if "PREEMPTED" in ev.states(b)]
        assert len(preempted) == 1, {b: ev.states(b) for b in batch}
        other = next(b for b in batch if b not in preempted)
        # The freed share went to prod, not to the victim's next attempt.
        assert ev.first(prod, "DISPATCHED") < ev.first(other, "SUCCEEDED"), ev.items
        assert all(ev.states(x)[-1] == "SUCCEEDED" for x in batch + [prod])


async def test_the_daemon_says_what_to_run_when_the_broker_is_elsewhere(tmp_path: Any) -> None:
    s = queued(tmp_path, {}, amqp_url="amqp://guest:guest@broker.example:5672/")
    with pytest.raises(RuntimeError, match="not on this host: run `rmcs declare` where it is"):
        await apply_policy_here(s)
