"""run_timeout_s: a RUNNING job is stopped once it has run this long, and ends STOPPED with a
message naming the timeout; across a restart too (the start is journaled)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from fakeray import fake_fleet
from scheduler_daemon.jobs import InvalidJob, Job, JobState, MessageMeta, parse_job
from scheduler_daemon.tracking import Tracked, overdue, stop_message
from support import Events, failover_pair, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def _parse(body: bytes) -> Job:
    return parse_job(body, MessageMeta(), default_resources={"CPU": 1.0}, max_bytes=1 << 20)


def test_run_timeout_is_parsed_and_checked() -> None:
    assert _parse(b'{"entrypoint": "/bin/true", "run_timeout_s": 3}').run_timeout_s == 3.0
    assert _parse(b'{"entrypoint": "/bin/true"}').run_timeout_s is None
    for bad in (b"0", b"-1", b'"3"', b"true"):
        with pytest.raises(InvalidJob, match="run_timeout_s must be a finite number > 0"):
            _parse(b'{"entrypoint": "/bin/true", "run_timeout_s": ' + bad + b"}")


def test_overdue_counts_from_the_first_running_look() -> None:
    job = Job("a", "j", "/bin/sleep 60", run_timeout_s=3.0)
    t = Tracked(job, "c", "n", JobState.DISPATCHED).moved(JobState.RUNNING, at=100.0)
    assert t.running_since == 100.0
    assert t.moved(JobState.RUNNING, at=150.0).running_since == 100.0  # the first look counts
    assert not overdue(t, 102.9) and overdue(t, 103.0)
    assert not overdue(Tracked(job, "c", "n", JobState.DISPATCHED), 1e12)  # not running: no deadline
    assert stop_message(t, JobState.STOPPED, "Job was intentionally stopped.", 103.5) == \
        "stopped by rmcs: it ran longer than its run_timeout_s=3"
    assert stop_message(t, JobState.STOPPED, "user", 101.0) == "user"
    assert stop_message(t, JobState.SUCCEEDED, None, 200.0) is None


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def _span(ev: Events, s: str) -> float:
    running = next(e for e in ev.of(s) if e["state"] == "RUNNING")
    stopped = next(e for e in ev.of(s) if e["state"] == "STOPPED")
    return _ts(stopped) - _ts(running)


async def test_run_timeout_stops_the_job_across_a_restart(tmp_path) -> None:
    """On the simulator: the daemon restarts while the job runs; the new one stops it on time."""
    s = make_settings(tmp_path)
    async with fake_fleet(1, name="rto") as fleet:
        async with Events(s) as ev:
            timed, free = sid("timed"), sid("free")
            async with running_daemon(s, fleet.configs(), cleanup=False):
                await publish(s, {"submission_id": timed, "entrypoint": "/bin/sleep 60", "run_timeout_s": 3})
                await publish(s, {"submission_id": free, "entrypoint": "/bin/sleep 2", "run_timeout_s": 30})
                await ev.wait_for(lambda: "RUNNING" in ev.states(timed), 15, "RUNNING")
                await asyncio.sleep(1.0)
            async with running_daemon(s, fleet.configs()):
                await ev.wait_final([timed, free], 20)
            assert ev.states(timed)[-1] == "STOPPED"
            last = ev.of(timed)[-1]
            assert "run_timeout_s=3" in last["message"]
            assert 3.0 <= _span(ev, timed) <= 5.0
            assert ev.states(free)[-1] == "SUCCEEDED"


async def test_run_timeout_on_real_ray(tmp_path, ray_clusters) -> None:
    """The issue's case: `sleep 60` with run_timeout_s 3 ends STOPPED 3-6 s after it started."""
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters), Events(s) as ev:
        timed = sid("timed")
        await publish(s, {"submission_id": timed, "entrypoint": "/bin/sleep 60", "run_timeout_s": 3,
                          "cluster_tags": ["cpu"]})
        await ev.wait_final([timed], 60)
        assert ev.states(timed)[-1] == "STOPPED", ev.states(timed)
        assert "run_timeout_s=3" in ev.of(timed)[-1]["message"]
        span = _span(ev, timed)
        assert 3.0 <= span <= 6.0, span


async def test_run_timeout_holds_across_failover(tmp_path) -> None:
    """On the simulator: the leader of a failover pair stops while the job runs; the standby takes
    over and stops it at its deadline, counted from the RUNNING the leader saw (journaled)."""
    s = make_settings(tmp_path, failover=True)
    async with fake_fleet(1, name="rtofo") as fleet, failover_pair(s, fleet.configs()) as hand_over, \
            Events(s) as ev:
        timed = sid("timed")
        await publish(s, {"submission_id": timed, "entrypoint": "/bin/sleep 60", "run_timeout_s": 3})
        await ev.wait_for(lambda: "RUNNING" in ev.states(timed), 15, "RUNNING")
        await asyncio.sleep(0.5)
        await hand_over()
        await ev.wait_final([timed], 30)
        assert ev.states(timed)[-1] == "STOPPED"
        assert "run_timeout_s=3" in ev.of(timed)[-1]["message"]
        assert 3.0 <= _span(ev, timed) < 30.0  # not before its deadline; by the standby, not by sleep's end
        assert fleet[0].stats()["submissions"] == 1
