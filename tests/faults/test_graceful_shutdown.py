"""SIGTERM during a burst: the daemon stops within its grace period and loses nothing; a restart
finishes every job once."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer
from scheduler_daemon.broker import declare
from support import Events, daemon_launcher, make_settings, publish_many, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def test_sigterm_during_a_burst_is_graceful_and_loses_nothing(tmp_path: Any) -> None:
    s = make_settings(tmp_path, window_size=8, shutdown_grace_s=5.0)
    # Slow answers, so dispatches are in flight when the signal lands.
    cluster = FakeCluster("busy", nodes={"n": {"CPU": 16, "memory": 32 * 2**30}}, duration_s=0.5)
    cluster.latency_s = 0.2
    server = FakeServer([cluster])
    await server.start()
    start = daemon_launcher(s, (cluster.config(),), tmp_path)

    await declare(s)
    jobs = [sid("burst") for _ in range(100)]
    proc = start()
    try:
        async with Events(s, "job.#") as ev:
            await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/true"}, 0) for j in jobs])
            await ev.wait_for(lambda: sum("DISPATCHED" in ev.states(j) for j in jobs) >= 20, 60, "20 dispatched")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, s.shutdown_grace_s + 15)
            took = time.monotonic() - t0
            assert code == 0
            assert took < s.shutdown_grace_s + 5, f"stopping took {took:.1f}s"
            print(f"SIGTERM with dispatches in flight: stopped in {took:.2f}s (grace {s.shutdown_grace_s}s)")
            proc = start()
            await ev.wait_final(jobs, timeout=120)
            assert all({e["state"] for e in ev.of(j) if e["final"]} == {"SUCCEEDED"} for j in jobs)
        assert sorted(sub for _, sub in cluster.submissions) == sorted(jobs)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        await server.stop()
