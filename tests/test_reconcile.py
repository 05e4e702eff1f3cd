"""The reconcile at start publishes every final state it writes: a job the status history thinks
runs, which ended while no daemon was there, gets its end as an event, so waiters hear it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer
from scheduler_daemon.status.store import SqliteStatusStore
from support import Events, make_settings, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def test_the_reconcile_at_start_publishes_the_final_states_it_finds(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    cluster = FakeCluster("c", duration_s=0.05)
    server = FakeServer([cluster])
    await server.start()
    job = sid("rc")
    try:
        assert cluster.submit({"entrypoint": "/bin/true", "submission_id": job,
                               "metadata": {"rmcs_submission_id": job}})[0] == 200
        await asyncio.sleep(0.2)
        cluster.advance()
        assert cluster.jobs[job].final == "SUCCEEDED"
        store = SqliteStatusStore(f"{s.state_dir}/status.db")  # what the history said when the daemon stopped
        await store.open()
        for state in ("ACCEPTED", "DISPATCHED", "RUNNING"):
            await store.apply({"submission_id": job, "state": state, "attempt": 1, "cluster": "c",
                               "owner": "alice", "ts": "2026-01-01T00:00:00.000Z"})
        await store.close()
        async with Events(s, "job.#") as ev, running_daemon(s, (cluster.config(),)):
            await ev.wait_final([job], timeout=20)
            end = ev.of(job)[-1]
            assert (end["state"], end["final"], end["owner"]) == ("SUCCEEDED", True, "alice")
            assert "reconciled" in end["message"]
    finally:
        await server.stop()
