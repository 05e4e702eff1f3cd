"""Backpressure with a deep queue, and LOST jobs on a dead cluster, against fake dashboards
and the real RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import resource
from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer
from support import Events, make_settings, publish, publish_many, queue_depth, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def _serve(*clusters: FakeCluster) -> list[FakeServer]:
    servers = [FakeServer([c]) for c in clusters]
    for server in servers:
        await server.start()
    return servers


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_deep_backlog_stays_in_rabbitmq_and_window_stays_small(tmp_path: Any) -> None:
    s = make_settings(tmp_path, window_size=4)
    (busy,) = clusters = (FakeCluster("busy", nodes={"n1": {"CPU": 1, "memory": 8 * 2**30}}),)
    servers = await _serve(*clusters)
    try:
        async with running_daemon(s, tuple(c.config() for c in clusters)) as daemon, Events(s) as ev:
            first = sid("long")
            await publish(s, {"submission_id": first, "entrypoint": "/bin/sleep 60"})
            await ev.wait_for(lambda: "DISPATCHED" in ev.states(first), 15)
            rss_before = _rss_mb()
            n = 3000
            await publish_many(s, [({"submission_id": sid("deep"), "entrypoint": "/bin/sleep 1"}, i % 10)
                                   for i in range(n)])
            await asyncio.sleep(2.0)
            depth = await queue_depth(s)
            assert len(daemon.window) <= s.window_size
            assert daemon.intake.consumed <= 1 + s.window_size, daemon.intake.consumed
            assert depth >= n - s.window_size, depth
            assert not daemon.intake.active, "the consumer is cancelled while no cluster has room"
            assert len(busy.submissions) == 1
            print(f"queue depth {depth}, window {len(daemon.window)}, test process RSS "
                  f"{rss_before:.0f} -> {_rss_mb():.0f} MB")
    finally:
        for server in servers:
            await server.stop()


async def test_jobs_on_a_dead_cluster_become_lost_and_retry_elsewhere(tmp_path: Any) -> None:
    s = make_settings(tmp_path, lost_after_s=1.5, probe_interval_s=0.3, down_after_failures=2)
    doomed = FakeCluster("doomed", duration_of=lambda e: None, duration_s=60)
    spare = FakeCluster("spare", duration_of=lambda e: None, duration_s=0.3)
    servers = await _serve(doomed, spare)
    try:
        configs = (doomed.config(), spare.config())
        async with running_daemon(s, configs), Events(s) as ev:
            retried, single = sid("retried"), sid("single")
            for job, retries in ((retried, 1), (single, 0)):
                await publish(s, {"submission_id": job, "entrypoint": "/bin/true",
                                  "preferred_cluster": "doomed", "max_retries": retries})
            await ev.wait_for(lambda: all("RUNNING" in ev.states(j) for j in (retried, single)), 15)
            await doomed.set_mode("dead")
            await ev.wait_final([retried, single], timeout=30)
            assert [(e["state"], e["attempt"], e["cluster"]) for e in ev.of(retried)] == [
                ("ACCEPTED", 1, None), ("DISPATCHED", 1, "doomed"), ("RUNNING", 1, "doomed"),
                ("LOST", 1, "doomed"), ("RETRYING", 1, "doomed"),
                ("ACCEPTED", 2, None), ("DISPATCHED", 2, "spare"), ("RUNNING", 2, "spare"),
                ("SUCCEEDED", 2, "spare"),
            ], ev.of(retried)
            lost = [e for e in ev.of(single) if e["state"] == "LOST"]
            assert lost and lost[0]["final"] and "down" in lost[0]["message"]
            assert [j for j in spare.jobs] == [f"{retried}~2"]
    finally:
        for server in servers:
            await server.stop()


async def test_failed_dispatch_puts_the_job_back_for_another_cluster(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    flaky, steady = FakeCluster("flaky", duration_s=0.2), FakeCluster("steady", duration_s=0.2)
    flaky.submit_faults = ["no_agent"]
    servers = await _serve(flaky, steady)
    try:
        async with running_daemon(s, (flaky.config(), steady.config())), Events(s) as ev:
            job = sid("flaky")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true", "preferred_cluster": "flaky"})
            await ev.wait_final([job], timeout=15)
            assert ev.states(job) == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
            assert ev.of(job)[-1]["cluster"] == "steady"
            assert not flaky.jobs and list(steady.jobs) == [job]
    finally:
        for server in servers:
            await server.stop()


async def test_dispatch_timeout_looks_on_the_cluster_before_going_elsewhere(tmp_path: Any) -> None:
    s = make_settings(tmp_path, dispatch_timeout_s=1.0)
    slow, other = FakeCluster("slow", duration_s=0.3), FakeCluster("other", duration_s=0.3)
    slow.submit_faults = ["hang_after_create"]
    servers = await _serve(slow, other)
    try:
        async with running_daemon(s, (slow.config(), other.config())), Events(s) as ev:
            job = sid("ambiguous")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true", "preferred_cluster": "slow"})
            await ev.wait_final([job], timeout=20)
            assert ev.of(job)[-1]["state"] == "SUCCEEDED" and ev.of(job)[-1]["cluster"] == "slow"
            assert list(slow.jobs) == [job] and not other.jobs, "the job ran exactly once, where it landed"
    finally:
        for server in servers:
            await server.stop()


async def test_job_refused_by_every_cluster_is_rejected(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    a, b = FakeCluster("ra"), FakeCluster("rb")
    a.submit_faults, b.submit_faults = ["refuse"], ["refuse"]
    servers = await _serve(a, b)
    try:
        async with running_daemon(s, (a.config(), b.config())), Events(s) as ev:
            job = sid("refused")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true"})
            await ev.wait_final([job], timeout=15)
            last = ev.of(job)[-1]
            assert last["state"] == "REJECTED" and "refused" in last["message"] and "runtime_env" in last["message"]
            assert not a.jobs and not b.jobs
    finally:
        for server in servers:
            await server.stop()


async def test_a_restart_publishes_the_path_of_a_job_whose_events_were_not_confirmed(tmp_path: Any) -> None:
    """A dispatched job is acknowledged once journaled; its events are confirmed afterwards.
    A daemon that dies in between leaves the record unpublished, and the next start publishes
    the job's path again, in order, and then follows it to its end."""
    from scheduler_daemon.dispatch import submit_body
    from scheduler_daemon.jobs import Job, JobState
    from scheduler_daemon.journal import Journal, Tracked

    s = make_settings(tmp_path)
    only = FakeCluster("only", duration_s=0.5)
    servers = await _serve(only)
    try:
        job = Job(submission_id=sid("unconfirmed"), job_id="j", entrypoint="/bin/true", resources={"CPU": 1.0})
        status, _ = only.submit(submit_body(job, only.config()))  # what the daemon that died sent
        assert status == 200
        journal = Journal(f"{s.state_dir}/daemon.db")
        await journal.open()
        await journal.record(Tracked(job, "only", "n1", JobState.DISPATCHED, published=False))
        await journal.close()
        async with Events(s) as ev, running_daemon(s, (only.config(),)):
            await ev.wait_final([job.submission_id], timeout=15)
            assert ev.states(job.submission_id) == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
        assert list(only.jobs) == [job.submission_id]  # not submitted again
    finally:
        for server in servers:
            await server.stop()
