"""The status cache and the stop handler against the real RabbitMQ and real Ray clusters."""

from __future__ import annotations

import asyncio

import pytest

from scheduler_daemon.access import TRUSTED_LOCAL
from scheduler_daemon.rayapi import RayDashboard, RayNotFound
from support import (Events, make_settings, publish, publish_many, request_stop, running_daemon, sid,
                     wait_idle)

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def _on_ray(clusters, ray_id: str) -> list[str]:
    """Names of the clusters whose own job list has this id."""
    found = []
    for c in clusters:
        dash = RayDashboard(c, 10)
        try:
            if any(j.get("submission_id") == ray_id for j in await dash.list_jobs()):
                found.append(c.name)
        finally:
            await dash.close()
    return found


async def test_stop_before_dispatch_deep_in_the_queue_and_in_the_window(tmp_path, ray_clusters):
    s = make_settings(tmp_path, window_size=2)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        await wait_idle(daemon)
        blockers = [sid("block") for _ in range(4)]
        await publish_many(s, [({"submission_id": b, "entrypoint": "/bin/sleep 5",
                                 "resource_requirements": {"CPU": 1, "GPU": 1} if i >= 2 else {"CPU": 1},
                                 "preferred_cluster": "gpu_cluster" if i >= 2 else "cpu_cluster"}, 0)
                               for i, b in enumerate(blockers)])
        await ev.wait_for(lambda: all("DISPATCHED" in ev.states(b) for b in blockers), 30, "blockers")
        queued = [sid("queued") for _ in range(6)]
        await publish_many(s, [({"submission_id": q, "entrypoint": "/bin/true"}, 0) for q in queued])
        await asyncio.sleep(1.0)
        deep = queued[4]  # the window holds two: this one waits in RabbitMQ behind two more
        await request_stop(s, deep, "no longer needed")
        await ev.wait_for(lambda: ev.answers(deep), 10, "stop answer")
        assert ev.answers(deep)[0]["outcome"] == "recorded", ev.answers(deep)
        await ev.wait_final(blockers + queued, timeout=120)
        assert [(e["state"], e["message"]) for e in ev.of(deep)] == [("CANCELLED", "no longer needed")]
        assert await _on_ray(ray_clusters, deep) == []
        assert all(ev.states(q)[-1] == "SUCCEEDED" for q in queued if q != deep)
        # A repeated stop of the ended job is harmless and answered clearly.
        await request_stop(s, deep)
        await ev.wait_for(lambda: len(ev.answers(deep)) == 2, 10)
        assert ev.answers(deep)[1]["outcome"] == "already_final"
        status = await daemon.store.get(deep)
        assert status is not None and status.state == "CANCELLED"


async def test_stop_of_a_waiting_job_cancels_it_at_once(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        await wait_idle(daemon)
        blocker, waiting = sid("gpus"), sid("waits")
        await publish(s, {"submission_id": blocker, "entrypoint": "/bin/sleep 4", "resource_requirements": {"GPU": 2}})
        await ev.wait_for(lambda: "DISPATCHED" in ev.states(blocker), 30)
        await publish(s, {"submission_id": waiting, "entrypoint": "/bin/true", "resource_requirements": {"GPU": 1}})
        await ev.wait_for(lambda: "ACCEPTED" in ev.states(waiting), 10)
        answer = await daemon.control.stop_job(waiting, "changed my mind", TRUSTED_LOCAL)
        assert answer.outcome == "cancelled"
        await ev.wait_final([waiting, blocker], timeout=30)
        assert ev.states(waiting) == ["ACCEPTED", "CANCELLED"]
        assert await _on_ray(ray_clusters, waiting) == []


async def test_stop_of_a_running_job_ends_in_stopped(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        job = sid("long")
        await publish(s, {"submission_id": job, "entrypoint": "/bin/sleep 60"})
        await ev.wait_for(lambda: "RUNNING" in ev.states(job), 30)
        await request_stop(s, job, "enough")
        await ev.wait_final([job], timeout=30)
        assert ev.states(job)[-1] == "STOPPED"
        assert ev.answers(job)[0]["outcome"] == "stopping"
        await request_stop(s, job)  # harmless
        await ev.wait_for(lambda: len(ev.answers(job)) == 2, 10)
        assert ev.answers(job)[1]["outcome"] == "already_final"
        unknown = sid("nobody")
        answer = await daemon.control.stop_job(unknown, "stop requested", TRUSTED_LOCAL)
        assert answer.outcome == "recorded" and "no such job" in answer.message


async def test_status_cache_survives_a_restart_and_shows_jobs_that_ended_meanwhile(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    short = [sid("short") for _ in range(3)]
    long_job = sid("during")
    async with Events(s) as ev:
        async with running_daemon(s, ray_clusters, cleanup=False) as daemon:
            await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/true", "tags": ["restart"]}, 0)
                                   for j in short])
            await publish(s, {"submission_id": long_job, "entrypoint": "/bin/sleep 4", "tags": ["restart"]})
            await ev.wait_final(short, timeout=60)
            await ev.wait_for(lambda: "RUNNING" in ev.states(long_job), 30)
            await asyncio.sleep(1.0)  # let the status consumer catch up
            before = await daemon.store.get(long_job)
            assert before is not None and before.state == "RUNNING"
        await asyncio.sleep(5.0)  # the long job ends while no daemon runs
        async with running_daemon(s, ray_clusters) as daemon:
            await ev.wait_final([long_job], timeout=30)
            for _ in range(50):
                after = await daemon.store.get(long_job)
                if after is not None and after.state == "SUCCEEDED":
                    break
                await asyncio.sleep(0.2)
            assert after is not None and after.state == "SUCCEEDED", after
            assert [t.state for t in after.transitions] == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
            for j in short:
                status = await daemon.store.get(j)
                assert status is not None and status.state == "SUCCEEDED" and status.tags == ("restart",)


async def test_terminal_jobs_are_deleted_from_ray_after_the_retention(tmp_path, ray_clusters):
    s = make_settings(tmp_path, ray_job_retention_s=0.5)
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        job = sid("retained")
        await publish(s, {"submission_id": job, "entrypoint": "/bin/true"})
        await ev.wait_final([job], timeout=30)
        cluster = ev.of(job)[-1]["cluster"]
        for _ in range(60):
            status = await daemon.store.get(job)
            if status is not None and status.deleted_from_cluster:
                break
            await asyncio.sleep(0.25)
        assert status is not None and status.deleted_from_cluster and status.state == "SUCCEEDED"
        dash = RayDashboard(next(c for c in ray_clusters if c.name == cluster), 10)
        try:
            for _ in range(40):  # Ray answered the DELETE; under load its GET may lag a moment
                try:
                    await dash.job(job)
                except RayNotFound:
                    break
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("the job should be gone from Ray")
        finally:
            await dash.close()


async def test_cli_drives_submit_list_show_logs_stop_on_real_ray(tmp_path, ray_clusters):
    import json

    from test_rmcs_cli import run, write_config

    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters) as daemon:
        await wait_idle(daemon)
        config = str(write_config(tmp_path / "rmcs.yaml", s))
        done, long_job = sid("cli"), sid("cli-long")
        r = await run(["--config", config, "submit", "--submission-id", done, "--tag", "cli", "--wait",
                       "--", "/bin/echo", "hello from rmcs"], timeout=90)
        assert r.code == 0 and "SUCCEEDED" in r.out, r
        r = await run(["--config", config, "submit", "--submission-id", long_job, "--tag", "cli",
                       "--", "/bin/sleep", "60"])
        assert r.code == 0 and long_job in r.out, r
        for _ in range(100):
            r = await run(["--config", config, "show", long_job, "--json"])
            if r.code == 0 and json.loads(r.out)["state"] == "RUNNING":
                break
            await asyncio.sleep(0.3)
        r = await run(["--config", config, "list", "--tag", "cli", "--json"])
        assert r.code == 0 and {j["submission_id"] for j in json.loads(r.out)["jobs"]} == {done, long_job}, r
        r = await run(["--config", config, "list", "--tag", "cli"])
        assert r.code == 0 and done in r.out and "SUCCEEDED" in r.out
        r = await run(["--config", config, "logs", done])
        assert r.code == 0 and "hello from rmcs" in r.out, r
        r = await run(["--config", config, "stop", long_job, "--reason", "cli test"])
        assert r.code == 0, r
        for _ in range(100):
            r = await run(["--config", config, "show", long_job, "--json"])
            if json.loads(r.out)["state"] == "STOPPED":
                break
            await asyncio.sleep(0.3)
        assert json.loads(r.out)["state"] == "STOPPED" and json.loads(r.out)["cluster"] in ("cpu_cluster", "gpu_cluster")
        r = await run(["--config", config, "show", sid("nobody")])
        assert r.code == 4
