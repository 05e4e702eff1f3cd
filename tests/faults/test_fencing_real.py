"""Two daemons that share nothing but the broker and PostgreSQL (separate state directories,
separate HTTP addresses), as on two hosts. A leader frozen with SIGSTOP past its lease, then
thawed, dispatches nothing and writes nothing while the other runs the jobs; it steps down.
Real RabbitMQ, PostgreSQL and Ray."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from faults.test_failover import log_events, until_logged
from pgkit import pg_url  # noqa: F401  (fixture)
from scheduler_daemon.broker import declare
from scheduler_daemon.settings import ClusterConfig, Settings
from support import AMQP_URL, Events, _free_port, assert_each_ran_once_on_ray, daemon_launcher, make_settings, \
    publish_many, request_stop, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

HEARTBEAT_S = 2  # the broker drops a frozen daemon's connection (and requeues what it held) in seconds


def two_hosts(tmp_path: Path, pg: str, **overrides: Any) -> tuple[Settings, dict[str, Settings]]:
    base = make_settings(tmp_path, state_url=pg, failover=True, leader_tick_s=0.5, probe_interval_s=0.5,
                         track_interval_s=0.2, amqp_url=f"{AMQP_URL}?heartbeat={HEARTBEAT_S}", **overrides)
    hosts = {}
    for name in "ab":
        (tmp_path / name).mkdir()
        hosts[name] = replace(base, state_dir=str(tmp_path / name / "state"), http_addr=f"127.0.0.1:{_free_port()}")
    return base, hosts


class Hosts:
    def __init__(self, hosts: dict[str, Settings], clusters: tuple[ClusterConfig, ...], tmp_path: Path) -> None:
        self.logs = {n: tmp_path / n / "daemon.log" for n in hosts}
        self.start = {n: daemon_launcher(s, clusters, tmp_path / n) for n, s in hosts.items()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def launch(self, name: str) -> None:
        self.procs[name] = self.start[name]()
        await until_logged(self.logs[name], "standing by for leadership")

    async def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            await asyncio.to_thread(proc.wait, 40)


async def leader_epoch(pg: str) -> int:
    conn = await asyncpg.connect(pg)
    try:
        return int(await conn.fetchval("SELECT epoch FROM rmcs_leader WHERE id = 1") or 0)
    finally:
        await conn.close()


async def until_epoch(pg: str, epoch: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await leader_epoch(pg) < epoch:
        assert time.monotonic() < deadline, f"no leader of epoch {epoch}"
        await asyncio.sleep(0.1)


async def test_a_frozen_leader_thawed_changes_nothing_and_steps_down(tmp_path: Any, ray_clusters: Any,
                                                                    pg_url: str) -> None:
    base, hosts = two_hosts(tmp_path, pg_url)
    await declare(base)
    pair = Hosts(hosts, ray_clusters, tmp_path)
    before = [sid("fz") for _ in range(4)]
    during = [sid("fz") for _ in range(8)]
    try:
        await pair.launch("a")
        await until_epoch(pg_url, 1)
        await pair.launch("b")
        async with Events(base, "job.#") as ev:
            # Frozen while it follows running jobs: thawed, its tracking would record their ends.
            await publish_many(base, [({"submission_id": j, "entrypoint": "sleep 6",
                                        "resource_requirements": {"CPU": 0.5}}, 0) for j in before])
            await ev.wait_for(lambda: all(ev.states(j)[-1:] == ["RUNNING"] for j in before), 120,
                              "the first jobs running")
            dispatched_by_a = log_events(pair.logs["a"]).count("job dispatched")
            pair.procs["a"].send_signal(signal.SIGSTOP)
            frozen = time.time()
            await until_epoch(pg_url, 2)  # b leads once a's lease has run out
            await publish_many(base, [({"submission_id": j, "entrypoint": "sleep 1"}, 0) for j in during])
            await asyncio.sleep(max(0.0, frozen + 4 * HEARTBEAT_S - time.time()))
            pair.procs["a"].send_signal(signal.SIGCONT)
            code = await asyncio.to_thread(pair.procs["a"].wait, 60)  # it steps down by itself
            assert code != 0 and "leadership lost; stepping down" in log_events(pair.logs["a"])
            await ev.wait_final(during, timeout=180)
            finals = {j: [e["state"] for e in ev.of(j) if e["final"]] for j in before + during}
            assert all(set(f) == {"SUCCEEDED"} for f in finals.values()), finals
        assert log_events(pair.logs["a"]).count("job dispatched") == dispatched_by_a, "the thawed leader dispatched"
        await assert_each_ran_once_on_ray(ray_clusters, before + during)
        conn = await asyncpg.connect(pg_url)
        try:
            late = await conn.fetchval("SELECT count(*) FROM rmcs_tracked WHERE epoch = 1 AND updated > $1", frozen)
            assert late == 0, "the frozen leader wrote after it was frozen"
            late = await conn.fetchval("SELECT count(*) FROM rmcs_intents WHERE epoch = 1 AND ts > $1", frozen)
            assert late == 0, "the frozen leader meant to dispatch after it was frozen"
            epochs = {r[0]: r[1] for r in await conn.fetch(
                "SELECT submission_id, epoch FROM rmcs_tracked WHERE submission_id = ANY($1)", before + during)}
            assert epochs == {j: 2 for j in before + during}, epochs  # the first jobs' ends: b's
        finally:
            await conn.close()
    finally:
        await pair.close()


async def api_job(http: aiohttp.ClientSession, url: str, until: Any = lambda body: True,
                  timeout: float = 30.0) -> dict[str, Any]:
    """GET a job from a daemon's API, once it serves it (and `until` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    body = await resp.json()
                    if until(body):
                        return body
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, f"{url} not served"
        await asyncio.sleep(0.2)


async def ready(http: aiohttp.ClientSession, host: Settings, until: Any = lambda body: True,
                timeout: float = 30.0) -> dict[str, Any]:
    """A daemon's /readyz answer once it is ready (and `until` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(f"http://{host.http_addr}/readyz") as resp:
                body = await resp.json()
                if resp.status == 200 and until(body):
                    return body
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, f"{host.http_addr} not ready"
        await asyncio.sleep(0.2)


async def test_the_standby_takes_over_every_job_of_a_killed_leader_on_real_ray(tmp_path: Any, ray_clusters: Any,
                                                                               pg_url: str) -> None:
    """30 jobs; the leader SIGKILLed with jobs queued, dispatched and running. Each ends SUCCEEDED
    exactly once (one Ray submission each); the standby's API, before and after, answers from the
    shared history; the owner's stop of a job the dead leader dispatched stops it."""
    base, hosts = two_hosts(tmp_path, pg_url)
    await declare(base)
    pair = Hosts(hosts, ray_clusters, tmp_path)
    jobs = [sid("to") for _ in range(30)]
    long_job = sid("to-long")
    api_b = f"http://{hosts['b'].http_addr}/api/v1/jobs"
    try:
        await pair.launch("a")
        await until_epoch(pg_url, 1)
        await pair.launch("b")
        async with Events(base, "job.#") as ev, aiohttp.ClientSession() as http:
            await publish_many(base, [({"submission_id": long_job, "entrypoint": "/bin/sleep 120",
                                        "resource_requirements": {"CPU": 0.5}}, 9)])
            await ev.wait_for(lambda: "RUNNING" in ev.states(long_job), 90, "the long job running")
            # The standby answers from the shared history (applied by either daemon's status service).
            await api_job(http, f"{api_b}/{long_job}", until=lambda body: body["state"] == "RUNNING")
            assert (await ready(http, hosts["b"]))["role"] == "standby"
            assert (await ready(http, hosts["a"]))["role"] == "leader"
            await publish_many(base, [({"submission_id": j, "entrypoint": "/bin/sleep 1",
                                        "resource_requirements": {"CPU": 0.5}}, 0) for j in jobs])

            def stages() -> dict[str, int]:
                """How many of the jobs are queued, dispatched (not yet running) and running now."""
                last = [ev.states(j)[-1:] for j in jobs]
                return {"queued": sum(s in ([], ["ACCEPTED"]) for s in last),
                        "dispatched": sum(s == ["DISPATCHED"] for s in last),
                        "running": sum(s == ["RUNNING"] for s in last)}

            # Killed with jobs in each stage: Ray takes a second or more to start a dispatched job.
            await ev.wait_for(lambda: all(n > 0 for n in stages().values()) and stages()["running"] >= 2, 90,
                              "jobs queued, dispatched and running")
            left = stages()
            pair.procs["a"].send_signal(signal.SIGKILL)
            await asyncio.to_thread(pair.procs["a"].wait, 30)
            await until_epoch(pg_url, 2)
            assert (await ready(http, hosts["b"], lambda body: body["role"] == "leader"))["ready"]
            await request_stop(base, long_job, "enough")  # as its owner (the default owner, both)
            await ev.wait_final(jobs + [long_job], timeout=240)
            assert ev.states(long_job)[-1] == "STOPPED"
            finals = {j: {(e["state"], e["attempt"]) for e in ev.of(j) if e["final"]} for j in jobs}
            assert all(f == {("SUCCEEDED", 1)} for f in finals.values()), finals
            for j in jobs + [long_job]:
                body = await api_job(http, f"{api_b}/{j}", until=lambda b: b["final"])
                assert [t["state"] for t in body["transitions"]][:2] == ["ACCEPTED", "DISPATCHED"], body
        assert all(n > 0 for n in left.values()), left  # as the events showed them at the kill
        await assert_each_ran_once_on_ray(ray_clusters, jobs)
    finally:
        await pair.close()
