"""The daemon killed with SIGKILL at many points of a stream of jobs, then restarted: every job
reaches exactly one final state and runs once. A fake dashboard records every submission, so a
second run of a job would show; the daemon runs as a real process."""

from __future__ import annotations

import asyncio
import random
import signal
from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer
from support import Events, daemon_launcher, make_settings, publish_many, sid
from scheduler_daemon.broker import declare

pytestmark = pytest.mark.usefixtures("rabbitmq")

KILLS = 14
JOBS = 210


async def test_sigkill_at_many_points_loses_nothing_and_runs_nothing_twice(tmp_path: Any) -> None:
    s = make_settings(tmp_path, window_size=6, track_interval_s=0.1, probe_interval_s=0.2)
    a = FakeCluster("ka", nodes={"n": {"CPU": 3, "memory": 8 * 2**30}}, duration_s=0.15)
    b = FakeCluster("kb", nodes={"n": {"CPU": 3, "memory": 8 * 2**30}}, duration_s=0.15)
    servers = [FakeServer([a]), FakeServer([b])]
    for server in servers:
        await server.start()
    start = daemon_launcher(s, (a.config(), b.config()), tmp_path)

    await declare(s)
    jobs = [sid("kp") for _ in range(JOBS)]
    rng = random.Random(7)
    proc = start()
    try:
        async with Events(s, "job.#") as ev:
            await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/true", "max_retries": 0}, 0)
                                   for j in jobs])
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.3, 1.2))  # lands while consuming, dispatching, publishing
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
                proc = start()
            await ev.wait_final(jobs, timeout=180)
            finals = {j: {e["state"] for e in ev.of(j) if e["final"]} for j in jobs}
            assert all(f == {"SUCCEEDED"} for f in finals.values()), {j: f for j, f in finals.items()
                                                                       if f != {"SUCCEEDED"}}
        submitted = [sub for c in (a, b) for _, sub in c.submissions]
        assert sorted(submitted) == sorted(jobs), "each job submitted to Ray exactly once, on one cluster"
        print(f"{KILLS} kills during {JOBS} jobs: every job ran once")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        for server in servers:
            await server.stop()
