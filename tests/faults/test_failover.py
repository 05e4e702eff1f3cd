"""Two daemons on one intake queue (failover): one leads and dispatches, the other stands by;
the leader killed with SIGKILL, the standby takes over within seconds and no job runs twice.
Both run as real processes sharing one state directory, as the systemd pair does."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import orjson
import pytest

from fakeray import FakeCluster, FakeServer
from scheduler_daemon.broker import declare
from scheduler_daemon.settings import ClusterConfig, Settings
from support import Events, assert_each_ran_once_on_ray, daemon_launcher, make_settings, publish_many, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def log_events(path: Path) -> list[str]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(str(orjson.loads(line).get("event")))
        except orjson.JSONDecodeError:
            continue
    return out


async def until_logged(path: Path, event: str, timeout: float = 60.0, after: int = 0) -> float:
    """Wait until `event` is logged in `path` (past its first `after` events); when it was seen (epoch s)."""
    deadline = time.monotonic() + timeout
    while event not in log_events(path)[after:]:
        assert time.monotonic() < deadline, f"{event!r} not logged in {path.name}:\n{path.read_text()[-3000:]}"
        await asyncio.sleep(0.02)
    return time.time()


class Pair:
    """Two daemon processes with the same settings (the HTTP API's address too: only the leader
    serves it), each with its own log."""

    def __init__(self, s: Settings, clusters: tuple[ClusterConfig, ...], workdir: Path) -> None:
        self.logs = {n: workdir / f"daemon-{n}.log" for n in "ab"}
        self.start: dict[str, Callable[[], subprocess.Popen[bytes]]] = {
            n: daemon_launcher(s, clusters, workdir, log_name=self.logs[n].name) for n in "ab"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def launch(self, name: str) -> int:
        """Start one; returns how many events its log held before (to read only the new run)."""
        seen = len(log_events(self.logs[name]))
        self.procs[name] = self.start[name]()
        await until_logged(self.logs[name], "standing by for leadership", after=seen)
        return seen

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> float:
        self.procs[name].send_signal(sig)
        killed = time.time()
        code = await asyncio.to_thread(self.procs[name].wait, 60)
        assert sig != signal.SIGTERM or code == 0, f"SIGTERM ended {name} with {code}"
        return killed

    async def close(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            await asyncio.to_thread(proc.wait, 40)


async def api_answers(url: str, timeout: float = 30.0) -> float:
    """Wait until the pair's HTTP API answers `url` with 200 (the new leader serves it); when."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return time.time()
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, f"the API at {url} did not come back"
            await asyncio.sleep(0.05)


def dispatched_before_leading(path: Path) -> bool:
    """Whether a daemon's log shows a job submitted before it acquired leadership (per run)."""
    leading = False
    for event in log_events(path):
        if event == "standing by for leadership":
            leading = False
        elif event == "leadership acquired":
            leading = True
        elif event == "job dispatched" and not leading:
            return True
    return False


async def test_standby_takes_over_from_a_killed_leader_on_real_ray(tmp_path: Any, ray_clusters: Any) -> None:
    s = make_settings(tmp_path, failover=True, probe_interval_s=0.5, track_interval_s=0.2)
    await declare(s)
    pair = Pair(s, ray_clusters, tmp_path)
    jobs = [sid("fo") for _ in range(12)]
    try:
        await pair.launch("a")
        await until_logged(pair.logs["a"], "leadership acquired")
        await pair.launch("b")
        await asyncio.sleep(1.0)
        assert "leadership acquired" not in log_events(pair.logs["b"]), "only one daemon leads"
        async with Events(s, "job.#") as ev:
            await publish_many(s, [({"submission_id": j, "entrypoint": "sleep 1", "max_retries": 0}, 0)
                                   for j in jobs])
            await ev.wait_for(lambda: sum("DISPATCHED" in ev.states(j) for j in jobs) >= 3, 60, "first dispatches")
            killed = await pair.kill("a")
            took_over = await until_logged(pair.logs["b"], "leadership acquired", timeout=30)
            await ev.wait_for(lambda: any(e["state"] == "DISPATCHED" and e["_recv"] > killed for e in ev.items),
                              60, "a dispatch by the new leader")
            first_dispatch = min(e["_recv"] for e in ev.items if e["state"] == "DISPATCHED" and e["_recv"] > killed)
            api_back = await api_answers(f"http://{s.http_addr}/api/v1/jobs/{jobs[0]}")
            seen = await pair.launch("a")  # the old leader comes back as the standby
            await ev.wait_final(jobs, timeout=180)
            finals = {j: [e["state"] for e in ev.of(j) if e["final"]] for j in jobs}
            assert all(set(f) == {"SUCCEEDED"} for f in finals.values()), finals
        assert "leadership acquired" not in log_events(pair.logs["a"])[seen:], "the restarted daemon stands by"
        assert not any(dispatched_before_leading(p) for p in pair.logs.values()), "a standby dispatched"
        await assert_each_ran_once_on_ray(ray_clusters, jobs)
        print(f"failover: leadership {took_over - killed:.2f} s after SIGKILL, first dispatch by the new "
              f"leader {first_dispatch - killed:.2f} s after it, its HTTP API by {api_back - killed:.2f} s")
    finally:
        await pair.close()


async def test_repeated_failovers_submit_every_job_exactly_once(tmp_path: Any) -> None:
    """Five stops of whichever daemon leads (SIGKILL, SIGTERM, SIGKILL, SIGTERM, SIGKILL) during
    200 jobs on fake dashboards that record every submission: each job submitted once, on one
    cluster, and ended once."""
    s = make_settings(tmp_path, failover=True, window_size=6, probe_interval_s=0.2, track_interval_s=0.1)
    a = FakeCluster("fa", nodes={"n": {"CPU": 3, "memory": 8 * 2**30}}, duration_s=0.1)
    b = FakeCluster("fb", nodes={"n": {"CPU": 3, "memory": 8 * 2**30}}, duration_s=0.1)
    servers = [FakeServer([a]), FakeServer([b])]
    for server in servers:
        await server.start()
    await declare(s)
    pair = Pair(s, (a.config(), b.config()), tmp_path)
    jobs = [sid("rf") for _ in range(200)]
    takeovers = []
    try:
        await pair.launch("a")
        await until_logged(pair.logs["a"], "leadership acquired")
        await pair.launch("b")
        leader, standby = "a", "b"
        async with Events(s, "job.#") as ev:
            await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/true", "max_retries": 0}, 0)
                                   for j in jobs])
            for sig in (signal.SIGKILL, signal.SIGTERM) * 2 + (signal.SIGKILL,):
                await asyncio.sleep(1.0)
                seen = len(log_events(pair.logs[standby]))
                killed = await pair.kill(leader, sig)
                took = await until_logged(pair.logs[standby], "leadership acquired", 30, seen) - killed
                if sig == signal.SIGKILL:
                    takeovers.append(took)
                await pair.launch(leader)
                leader, standby = standby, leader
            await ev.wait_final(jobs, timeout=120)
            finals = {j: [e["state"] for e in ev.of(j) if e["final"]] for j in jobs}
            assert all(set(f) == {"SUCCEEDED"} for f in finals.values()), {j: f for j, f in finals.items()
                                                                          if set(f) != {"SUCCEEDED"}}
        submitted = [sub for c in (a, b) for _, sub in c.submissions]
        assert sorted(submitted) == sorted(jobs), "each job submitted to Ray exactly once, on one cluster"
        assert not any(dispatched_before_leading(p) for p in pair.logs.values()), "a standby dispatched"
        print(f"5 failovers during 200 jobs: takeover after SIGKILL "
              f"{min(takeovers):.2f}-{max(takeovers):.2f} s")
    finally:
        await pair.close()
        for server in servers:
            await server.stop()


def close_connection_of(pid: int) -> None:
    """Have the broker close the daemon process's connection (a network cut, seen from the broker)."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    conns = [line.split("\t", 1)[0] for line in out.splitlines() if f":{pid}" in line and "rmcs-scheduler" in line]
    assert conns, out
    for conn in conns:
        subprocess.run(["rabbitmqctl", "close_connection", conn, "failover test"], check=True,
                       capture_output=True, timeout=60)


async def test_leader_cut_off_from_the_broker_steps_down(tmp_path: Any) -> None:
    """The broker drops the leader's connection while the leader lives: the standby takes over,
    the old leader stops submitting at once, steps down and exits (for its supervisor to start it
    again as a standby), and every job is submitted once."""
    s = make_settings(tmp_path, failover=True, window_size=6, probe_interval_s=0.2, track_interval_s=0.1)
    a = FakeCluster("ca", nodes={"n": {"CPU": 3, "memory": 8 * 2**30}}, duration_s=0.1)
    server = FakeServer([a])
    await server.start()
    await declare(s)
    pair = Pair(s, (a.config(),), tmp_path)
    jobs = [sid("cut") for _ in range(120)]
    try:
        await pair.launch("a")
        await until_logged(pair.logs["a"], "leadership acquired")
        seen = await pair.launch("b")
        async with Events(s, "job.#") as ev:
            await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/true", "max_retries": 0}, 0)
                                   for j in jobs])
            await ev.wait_for(lambda: sum("DISPATCHED" in ev.states(j) for j in jobs) >= 20, 60, "dispatches")
            await asyncio.to_thread(close_connection_of, pair.procs["a"].pid)
            await until_logged(pair.logs["b"], "leadership acquired", 30, seen)
            code = await asyncio.to_thread(pair.procs["a"].wait, 60)
            assert code == 75, pair.logs["a"].read_text()[-3000:]
            assert "leadership lost: no tick for the lease; stepping down" in log_events(pair.logs["a"])
            await ev.wait_final(jobs, timeout=120)
            finals = {j: [e["state"] for e in ev.of(j) if e["final"]] for j in jobs}
            assert all(set(f) == {"SUCCEEDED"} for f in finals.values()), {j: f for j, f in finals.items()
                                                                          if set(f) != {"SUCCEEDED"}}
        submitted = [sub for _, sub in a.submissions]
        assert sorted(submitted) == sorted(jobs), "each job submitted to Ray exactly once"
    finally:
        await pair.close()
        await server.stop()
