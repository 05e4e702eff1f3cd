"""The daemon against the real RabbitMQ and two real local Ray clusters."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aio_pika
import orjson
import pytest

from scheduler_daemon.rayapi import RayDashboard
from support import (Events, assert_each_ran_once_on_ray, daemon_launcher, make_settings, publish, publish_many,
                     queue_depth, request_stop, running_daemon, sid, wait_idle)

pytestmark = pytest.mark.usefixtures("rabbitmq")

LEGAL_NEXT = {
    None: {"ACCEPTED", "REJECTED"},
    "ACCEPTED": {"DISPATCHED", "REJECTED", "CANCELLED", "EXPIRED"},
    "DISPATCHED": {"RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "LOST"},
    "RUNNING": {"SUCCEEDED", "FAILED", "STOPPED", "LOST"},
    "FAILED": {"RETRYING"},
    "LOST": {"RETRYING"},
    "RETRYING": {"ACCEPTED"},
}


def assert_in_order(events: Events, sids: list[str]) -> None:
    """Each job's events, deduplicated as the contract says, follow the state machine."""
    for s in sids:
        seen: set[tuple[str, int]] = set()
        prev = None
        for e in events.of(s):
            key = (e["state"], e["attempt"])
            if key in seen:
                continue
            seen.add(key)
            assert e["state"] in LEGAL_NEXT.get(prev, set()), f"{s}: {prev} -> {e['state']} in {events.states(s)}"
            prev = e["state"]


async def test_gpu_job_goes_to_gpu_cluster_and_cpu_job_to_cpu_cluster(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        await wait_idle(daemon)  # an earlier test's jobs may still hold a CPU in Ray's snapshot
        gpu_job, cpu_job = sid("gpu"), sid("cpu")
        await publish(s, {"submission_id": gpu_job, "entrypoint": "/bin/true",
                          "resource_requirements": {"CPU": 1, "GPU": 1}})
        await publish(s, {"submission_id": cpu_job, "entrypoint": "/bin/true",
                          "resource_requirements": {"CPU": 1, "memory": 0.5}})
        await ev.wait_final([gpu_job, cpu_job])
        assert ev.of(gpu_job)[-1]["cluster"] == "gpu_cluster"
        assert ev.of(cpu_job)[-1]["cluster"] == "cpu_cluster"
        assert ev.states(gpu_job)[-1] == "SUCCEEDED"
        assert_in_order(ev, [gpu_job, cpu_job])
        info = await _ray_job(ray_clusters[1], gpu_job)
        assert info["metadata"]["rmcs_submission_id"] == gpu_job


async def test_preferred_cluster_is_used_and_fallen_back_from(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        await wait_idle(daemon)  # an earlier test's jobs may still hold a CPU in Ray's snapshot
        preferred, fallback = sid("pref"), sid("fall")
        # A CPU job would normally avoid the GPU cluster; preferred, it goes there.
        await publish(s, {"submission_id": preferred, "entrypoint": "/bin/true",
                          "preferred_cluster": "gpu_cluster"})
        # A GPU job preferring the CPU cluster cannot fit there and falls back.
        await publish(s, {"submission_id": fallback, "entrypoint": "/bin/true", "preferred_cluster": "cpu_cluster",
                          "resource_requirements": {"GPU": 1}})
        await ev.wait_final([preferred, fallback])
        assert ev.of(preferred)[-1]["cluster"] == "gpu_cluster"
        assert ev.of(fallback)[-1]["cluster"] == "gpu_cluster"
        assert ev.states(fallback)[-1] == "SUCCEEDED"


async def test_job_larger_than_any_node_is_rejected_with_reason(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters), Events(s) as ev:
        big = sid("big")
        await publish(s, {"submission_id": big, "entrypoint": "/bin/true", "resource_requirements": {"CPU": 64}})
        await ev.wait_final([big], timeout=30)
        (rejected,) = [e for e in ev.of(big) if e["state"] == "REJECTED"]
        assert "infeasible" in rejected["message"] and "CPU 64 > total 2" in rejected["message"]
        assert rejected["event"] == "job.rejected._"
        dead = await _dead_letters(s, 1)
        assert orjson.loads(dead[0][0])["submission_id"] == big
        assert "infeasible" in dead[0][1]


async def test_invalid_message_is_dead_lettered_and_next_job_runs(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters), Events(s) as ev:
        bad_sid, good = sid("bad"), sid("good")
        await publish(s, b"{not json", message_id="garbage-1")
        await publish(s, {"submission_id": bad_sid, "entrypoint": "python script.py"})
        await publish(s, b'{"entrypoint": "/bin/true", "resource_requirements": {"CPU": -1}}')
        await publish(s, {"submission_id": good, "entrypoint": "/bin/true"})
        await ev.wait_final([good])
        assert ev.states(good)[-1] == "SUCCEEDED"
        dead = await _dead_letters(s, 3)
        reasons = sorted(r for _, r in dead)
        assert any("not valid UTF-8 JSON" in r for r in reasons), reasons
        assert any("relative path" in r for r in reasons), reasons
        assert any("resource CPU" in r for r in reasons), reasons
        rejected = [e for e in ev.items if e.get("state") == "REJECTED"]
        assert len(rejected) == 3 and all(e["event"] == "job.rejected._" for e in rejected)
        assert {e["submission_id"] for e in rejected} >= {bad_sid, "garbage-1"}


async def test_backlog_waits_in_rabbitmq_and_high_priority_overtakes(tmp_path, ray_clusters):
    s = make_settings(tmp_path, window_size=2)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        await wait_idle(daemon)
        # Fill every CPU and GPU of both clusters.
        blockers = [sid("block") for _ in range(4)]
        for i, b in enumerate(blockers):
            res = {"CPU": 1, "GPU": 1} if i >= 2 else {"CPU": 1}
            await publish(s, {"submission_id": b, "entrypoint": "/bin/sleep 6", "resource_requirements": res,
                              "preferred_cluster": "gpu_cluster" if i >= 2 else "cpu_cluster"})
        await ev.wait_for(lambda: all("DISPATCHED" in ev.states(b) for b in blockers), 30, "blockers dispatched")
        low = [sid("low") for _ in range(8)]
        await publish_many(s, [({"submission_id": x, "entrypoint": "/bin/sleep 0.2"}, 1) for x in low])
        await asyncio.sleep(1.5)
        depth = await queue_depth(s)
        assert depth == 8, f"the backlog should wait in RabbitMQ, {depth} of 8 there"
        assert not any(ev.of(x) for x in low), "no low-priority job accepted while the clusters are full"
        high = sid("high")
        await publish(s, {"submission_id": high, "entrypoint": "/bin/sleep 0.2"}, priority=9)
        await ev.wait_final(blockers + low + [high], timeout=150)
        # Taken from the broker first (two jobs placed in one pass go to Ray concurrently, so
        # their DISPATCHED events may come in either order).
        order = [e["submission_id"] for e in ev.items if e.get("state") == "ACCEPTED"]
        assert order.index(high) < min(order.index(x) for x in low), order
        assert all(ev.states(x)[-1] == "SUCCEEDED" for x in low + [high])
        assert_in_order(ev, blockers + low + [high])


async def test_queue_timeout_expires_a_waiting_job(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        await wait_idle(daemon)
        blocker, waiting = sid("block"), sid("exp")
        # All 2 GPUs busy, then a GPU job that may wait 2 s.
        # Long enough that its end never races the waiting job's 2 s (Ray may take seconds to
        # show the GPUs used); stopped once the waiting job has expired.
        await publish(s, {"submission_id": blocker, "entrypoint": "/bin/sleep 60",
                          "resource_requirements": {"GPU": 2}})
        # Until a snapshot shows the GPUs used: the daemon's reservation ends with the first
        # snapshot after the job's start on Ray, which may come before its driver holds them.
        gpus_used = lambda: any(n.used.get("GPU", 0) >= 2 for c in daemon.prober.clusters.values()  # noqa: E731
                                if c.snapshot is not None for n in c.snapshot.nodes)
        await ev.wait_for(lambda: "RUNNING" in ev.states(blocker) and gpus_used(), 30, "Ray shows the GPUs used")
        await publish(s, {"submission_id": waiting, "entrypoint": "/bin/true",
                          "resource_requirements": {"GPU": 1}, "queue_timeout_s": 2})
        await ev.wait_final([waiting], timeout=30)
        assert ev.states(waiting) == ["ACCEPTED", "EXPIRED"]
        await request_stop(s, blocker)
        await ev.wait_final([blocker], timeout=30)


async def test_failed_job_is_retried_with_max_retries(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters), Events(s) as ev:
        job = sid("retry")
        await publish(s, {"submission_id": job, "entrypoint": "/bin/false", "max_retries": 1})
        await ev.wait_final([job], timeout=60)
        states = [(e["state"], e["attempt"]) for e in ev.of(job)]
        assert ("FAILED", 1) in states and ("RETRYING", 1) in states and ("FAILED", 2) in states, states
        assert ev.of(job)[-1]["final"] and ev.of(job)[-1]["attempt"] == 2
        assert_in_order(ev, [job])


async def test_a_seed003_task_with_min_failed_task_count_null_succeeds_whatever_it_does(tmp_path, ray_clusters):
    """Seed 003: "if set to null means the job will always succeed regardless any task failure"."""
    s = make_settings(tmp_path)

    def seed003(count):
        return {"jobName": "pai", "taskRoles": [{"name": "main", "taskNumber": 1, "cpuNumber": 1, "memoryMB": 256,
                                                "gpuNumber": 0, "command": "/bin/false",
                                                "minFailedTaskCount": count}]}

    async with running_daemon(s, ray_clusters), Events(s) as ev:
        forgiven, counted = sid("pai-null"), sid("pai-one")
        await publish(s, seed003(None), message_id=forgiven)
        await publish(s, seed003(1), message_id=counted)
        await ev.wait_final([forgiven, counted], timeout=60)
        assert ev.states(forgiven)[-1] == "SUCCEEDED" and ev.states(counted)[-1] == "FAILED"
        cluster = next(c for c in ray_clusters if c.name == ev.of(forgiven)[-1]["cluster"])
        dash = RayDashboard(cluster, 10)
        try:
            logs = await dash.logs(forgiven)
        finally:
            await dash.close()
        assert "rmcs: the task exited with 1; the job succeeds anyway" in logs, logs


async def test_sigkill_mid_stream_then_restart_runs_every_job_exactly_once(tmp_path, ray_clusters):
    s = make_settings(tmp_path, window_size=4)
    start = daemon_launcher(s, ray_clusters, tmp_path)

    from scheduler_daemon.broker import declare
    await declare(s)
    jobs = [sid("kill") for _ in range(16)]
    async with Events(s) as ev:
        await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/sleep 0.3"}, 0) for j in jobs])
        proc = start()
        kills = 0
        for target in (2, 6, 10):
            await ev.wait_for(lambda: sum("DISPATCHED" in ev.states(j) for j in jobs) >= target, 90,
                              f"{target} dispatched")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start()
        # A graceful stop in the middle of the stream loses nothing either.
        await ev.wait_for(lambda: sum("DISPATCHED" in ev.states(j) for j in jobs) >= 13, 90, "13 dispatched")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=s.shutdown_grace_s + 10) == 0
        assert time.monotonic() - t0 < s.shutdown_grace_s + 5
        proc = start()
        try:
            await ev.wait_final(jobs, timeout=180)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        assert proc.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    assert kills == 3
    await assert_each_ran_once_on_ray(ray_clusters, jobs)
    assert_in_order(ev, jobs)
    finals = {j: [e["state"] for e in ev.of(j) if e["final"]] for j in jobs}
    assert all(set(f) == {"SUCCEEDED"} for f in finals.values()), finals


async def _ray_job(cluster, ray_id):
    dash = RayDashboard(cluster, 10)
    try:
        return await dash.job(ray_id)
    finally:
        await dash.close()


async def _dead_letters(s, n, timeout=10.0):
    """Read n messages from the dead-letter queue: (body, x-rmcs-reason)."""
    out = []
    conn = await aio_pika.connect(s.amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(s.dead_letter_queue, passive=True)
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            msg = await q.get(fail=False)
            if msg is None:
                await asyncio.sleep(0.1)
                continue
            out.append((msg.body, msg.headers.get("x-rmcs-reason")))
            await msg.ack()
    assert len(out) == n, out
    return out


async def test_probes_from_a_child_process_place_by_what_ray_reports_and_die_with_the_daemon(tmp_path, ray_clusters):
    """With `probe_process_from: 0` the probes run in a child process; placement follows what
    the real clusters report (a GPU job to the only cluster with a GPU), and a daemon killed outright
    leaves no probe process behind (its input closes)."""
    s = make_settings(tmp_path, probe_process_from=0)
    from scheduler_daemon.broker import declare
    await declare(s)
    proc = daemon_launcher(s, ray_clusters, tmp_path)()
    try:
        async with Events(s) as ev:
            gpu_job, cpu_job = sid("child-gpu"), sid("child-cpu")
            await publish(s, {"submission_id": gpu_job, "entrypoint": "/bin/true",
                              "resource_requirements": {"CPU": 1, "GPU": 1}})
            await publish(s, {"submission_id": cpu_job, "entrypoint": "/bin/true"})
            await ev.wait_final([gpu_job, cpu_job], timeout=90)
            # Only the GPU cluster reports a GPU; the CPU job may go to either (an earlier test's
            # jobs can still fill the CPU cluster in Ray's 5-second snapshot).
            assert ev.of(gpu_job)[-1]["cluster"] == "gpu_cluster"
            assert ev.of(cpu_job)[-1]["cluster"] in ("cpu_cluster", "gpu_cluster")
            assert {ev.states(j)[-1] for j in (gpu_job, cpu_job)} == {"SUCCEEDED"}
        children = _probe_children(proc.pid)
        assert len(children) == 1, (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{children[0]}").exists() and _state(children[0]) != "Z":
        assert time.monotonic() < deadline, "the probe process outlived the daemon"
        await asyncio.sleep(0.1)


def _probe_children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"scheduler_daemon.probe_child" in cmdline:
            out.append(int(stat.parent.name))
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


async def test_jobs_followed_one_by_one_end_as_ray_says(tmp_path, ray_clusters, monkeypatch):
    """Tracking by `GET /api/jobs/<id>` (what the daemon does on a cluster whose job list is
    much longer than the jobs it follows there) against real Ray: the job list is never read,
    and a success and a failure are followed to their ends with Ray's messages."""
    monkeypatch.setattr("scheduler_daemon.following.one_by_one", lambda followed, listed: True)
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters) as d, Events(s) as ev:
        listed = 0
        for state in d.prober.clusters.values():
            original = state.dashboard.list_jobs

            async def counted(original=original):
                nonlocal listed
                listed += 1
                return await original()
            state.dashboard.list_jobs = counted
        ok, bad = sid("each-ok"), sid("each-bad")
        await publish(s, {"submission_id": ok, "entrypoint": "sleep 2"})
        await publish(s, {"submission_id": bad, "entrypoint": "sleep 1; exit 3"})
        await ev.wait_final([ok, bad], timeout=60)
        assert ev.states(ok) == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
        assert ev.states(bad)[-1] == "FAILED" and "exit code 3" in (ev.of(bad)[-1]["message"] or "")
        assert listed == 0
