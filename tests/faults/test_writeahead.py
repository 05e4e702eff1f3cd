"""Write-ahead dispatch: the intent is journaled before the POST, and any answer or failure
that leaves it open is settled on that cluster before the job may go anywhere else. One test
per window in which a job could run twice or be lost; each ends with one run per attempt.
On fake dashboards (faults that real Ray cannot show on demand) and the real broker; those the
daemon's own journal serves run on both journals, SQLite and PostgreSQL (a database of their own)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg
import pytest

from fakeray import FakeCluster, FakeServer
from builders import job as built
from scheduler_daemon.dispatch import submit_body
from scheduler_daemon.jobs import JobState
from scheduler_daemon.state import journal_for
from pgkit import state_url  # noqa: F401  (fixture)
from support import Events, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def serve(*clusters: FakeCluster) -> list[FakeServer]:
    servers = [FakeServer([c]) for c in clusters]
    for server in servers:
        await server.start()
    return servers


def runs(*clusters: FakeCluster) -> dict[str, list[str]]:
    return {c.name: [s for _, s in c.submissions] for c in clusters}


async def test_a_dashboard_that_creates_the_job_then_answers_504(tmp_path: Any, state_url: str) -> None:
    s = make_settings(tmp_path, state_url=state_url)
    gateway, other = FakeCluster("gateway", duration_s=0.2), FakeCluster("other", duration_s=0.2)
    gateway.submit_faults = ["created_then_504"]
    servers = await serve(gateway, other)
    try:
        async with running_daemon(s, (gateway.config(), other.config())), Events(s) as ev:
            job = sid("gw")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true", "preferred_cluster": "gateway"})
            await ev.wait_final([job], timeout=20)
            assert ev.of(job)[-1]["state"] == "SUCCEEDED" and ev.of(job)[-1]["cluster"] == "gateway"
        assert runs(gateway, other) == {"gateway": [job], "other": []}
    finally:
        for server in servers:
            await server.stop()


async def test_a_journal_write_that_fails_once_after_the_post(tmp_path: Any, state_url: str) -> None:
    s = make_settings(tmp_path, state_url=state_url)
    error = (sqlite3.OperationalError("disk I/O error") if state_url == "sqlite:" else
             asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    first, other = FakeCluster("first", duration_s=0.2), FakeCluster("other", duration_s=0.2)
    servers = await serve(first, other)
    try:
        async with running_daemon(s, (first.config(), other.config())) as daemon, Events(s) as ev:
            record, failed = daemon.journal.record, []

            async def fails_once(t: Any) -> None:
                if t.state == JobState.DISPATCHED and not failed:
                    failed.append(t.job.submission_id)
                    raise error
                await record(t)

            daemon.journal.record = fails_once  # type: ignore[method-assign]
            job = sid("jw")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true", "preferred_cluster": "first"})
            await ev.wait_final([job], timeout=20)
            assert failed == [job]
            assert ev.of(job)[-1]["state"] == "SUCCEEDED" and ev.of(job)[-1]["cluster"] == "first"
        assert runs(first, other) == {"first": [job], "other": []}
    finally:
        for server in servers:
            await server.stop()


async def test_a_cluster_down_during_the_redelivery_look_up_keeps_the_job_waiting(tmp_path: Any,
                                                                                   state_url: str) -> None:
    """The daemon died after the POST and before its journal record: the intent names the
    cluster. That cluster is down when the message comes back: the job waits for it (it is
    never taken for "not there"), and is found there once it answers."""
    s = make_settings(tmp_path, lost_after_s=60.0, state_url=state_url)
    down, other = FakeCluster("down", duration_s=0.5), FakeCluster("other", duration_s=0.2)
    servers = await serve(down, other)
    job = sid("rd")
    body = {"submission_id": job, "entrypoint": "/bin/true"}
    journal = journal_for(s)
    await journal.open()
    await journal.intend(built(job), "down")  # what the dead daemon wrote before its POST
    await journal.close()
    # and the POST it made, with rmcs's metadata (so the job is rmcs's to adopt)
    assert down.submit(submit_body(built(job, owner="anonymous"), down.config()))[0] == 200
    await down.set_mode("dead")
    try:
        async with running_daemon(s, (down.config(), other.config())), Events(s) as ev:
            await publish(s, body)
            await ev.wait_for(lambda: "ACCEPTED" in ev.states(job), 20, "ACCEPTED")
            await asyncio.sleep(4.0)
            assert runs(down, other) == {"down": [job], "other": []} and "DISPATCHED" not in ev.states(job)
            await down.set_mode("ok")
            await ev.wait_final([job], timeout=30)
            assert ev.of(job)[-1]["state"] == "SUCCEEDED" and ev.of(job)[-1]["cluster"] == "down"
        assert runs(down, other) == {"down": [job], "other": []}
    finally:
        for server in servers:
            await server.stop()


async def test_a_lost_clusters_old_attempt_is_stopped_when_it_comes_back(tmp_path: Any, state_url: str) -> None:
    s = make_settings(tmp_path, lost_after_s=2.0, state_url=state_url)
    away = FakeCluster("away", duration_of=lambda e: 60.0)
    spare = FakeCluster("spare", duration_of=lambda e: 0.3)
    servers = await serve(away, spare)
    try:
        async with running_daemon(s, (away.config(), spare.config())) as daemon, Events(s) as ev:
            job = sid("lost")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true", "preferred_cluster": "away",
                              "max_retries": 1})
            await ev.wait_for(lambda: "RUNNING" in ev.states(job), 20, "RUNNING on away")
            await away.set_mode("dead")
            await ev.wait_final([job], timeout=40)
            assert [e["state"] for e in ev.of(job) if e["attempt"] == 1][-2:] == ["LOST", "RETRYING"]
            assert ev.of(job)[-1]["state"] == "SUCCEEDED" and ev.of(job)[-1]["cluster"] == "spare"
            assert away.jobs[job].final is None, "cut off, the old attempt still runs"
            await away.set_mode("ok")
            deadline = asyncio.get_running_loop().time() + 30
            while away.jobs[job].final != "STOPPED":
                assert asyncio.get_running_loop().time() < deadline, "the old attempt was not stopped"
                await asyncio.sleep(0.2)
            assert await daemon.journal.lost_attempts() == []
        assert runs(away, spare) == {"away": [job], "spare": [f"{job}~2"]}
    finally:
        for server in servers:
            await server.stop()


async def test_a_leader_that_loses_its_lease_while_writing_the_intent_does_not_post(tmp_path: Any) -> None:
    """Frozen in the intent's write past its lease (SIGSTOP, a long pause): the write went through,
    but once thawed the daemon asks again before the POST, and sends nothing."""
    s = make_settings(tmp_path, failover=True)
    cluster = FakeCluster("solo", duration_s=0.2)
    servers = await serve(cluster)
    try:
        async with running_daemon(s, (cluster.config(),)) as daemon, Events(s) as ev:
            assert daemon.leadership is not None
            intend, written = daemon.journal.intend, []

            async def frozen_meanwhile(job: Any, where: str) -> None:
                await intend(job, where)
                written.append(job.submission_id)
                daemon.leadership.lost = True  # what its own clock says once thawed past the lease

            daemon.journal.intend = frozen_meanwhile  # type: ignore[method-assign]
            job = sid("fz")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true"})
            await ev.wait_for(lambda: "ACCEPTED" in ev.states(job), 20, "ACCEPTED")
            deadline = asyncio.get_running_loop().time() + 10
            while not written:
                assert asyncio.get_running_loop().time() < deadline, "no intent was written"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            assert written == [job] and "DISPATCHED" not in ev.states(job)
        assert runs(cluster) == {"solo": []}
    finally:
        for server in servers:
            await server.stop()
