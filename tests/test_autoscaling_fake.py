"""Autoscaling-aware placement on the simulator (tests/fakescale.py: an autoscaler model that
reads the resource demand as Ray's does), with the real daemon and the real RabbitMQ: jobs
that fit only a node type not yet running are dispatched and the nodes started; the launches
counted never exceed the room; existing capacity goes first; a launch that never comes sends
the job elsewhere."""

from __future__ import annotations

from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer, _start
from fakescale import ScalingCluster
from scheduler_daemon.nodetypes import parse_autoscaling
from scheduler_daemon.settings import ClusterConfig
from support import Events, make_settings, publish, publish_many, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

GPU_WORKER = {"CPU": 2.0, "GPU": 1.0}


def scaling_config(c: FakeCluster, max_workers: int, **kw: Any) -> ClusterConfig:
    spec = {"node_types": {"gpuworker": {"resources": dict(GPU_WORKER), "max_workers": max_workers}}}
    return c.config(autoscaling=parse_autoscaling(spec, c.name), **kw)


def gpu_job(entrypoint: str = "/bin/sleep 1", **kw: Any) -> dict[str, Any]:
    return {"submission_id": sid("g"), "entrypoint": entrypoint, "resource_requirements": {"CPU": 1, "GPU": 1}, **kw}


async def test_many_jobs_on_many_autoscaling_clusters_never_exceed_the_room(tmp_path) -> None:
    clusters = [ScalingCluster(f"as{i}", {"gpuworker": (GPU_WORKER, 2)}, launch_delay_s=1.0, idle_timeout_s=3.0)
                for i in range(8)]
    fleet = await _start(clusters, [FakeServer([c]) for c in clusters])
    s = make_settings(tmp_path, window_size=16)
    try:
        async with running_daemon(s, tuple(scaling_config(c, 2) for c in clusters)), Events(s) as ev:
            jobs = [gpu_job("/bin/sleep 1.5") for _ in range(60)]
            await publish_many(s, [(j, 0) for j in jobs])
            await ev.wait_final([j["submission_id"] for j in jobs], 120)
            assert all(ev.states(j["submission_id"])[-1] == "SUCCEEDED" for j in jobs)
            scaled = [e for j in jobs for e in ev.of(j["submission_id"])
                      if e["state"] == "DISPATCHED" and "fits after scale-up on gpuworker" in (e["message"] or "")]
            assert scaled, "no job was sent to a node yet to launch"
        for c in clusters:
            # Ray never had more GPU demand than two nodes hold: rmcs sent no job beyond the room.
            assert c.max_demand.get("GPU", 0.0) <= 2.0, (c.name, c.max_demand, c.max_demand_jobs["GPU"])
            assert c.max_nodes["gpuworker"] <= 2
        assert sum(c.launches["gpuworker"] for c in clusters) >= len(clusters)
    finally:
        await fleet.close()


async def test_room_for_one_node_two_jobs_launch_one(tmp_path) -> None:
    c = ScalingCluster("one", {"gpuworker": (GPU_WORKER, 1)}, launch_delay_s=1.0)
    fleet = await _start([c], [FakeServer([c])])
    s = make_settings(tmp_path)
    try:
        async with running_daemon(s, (scaling_config(c, 1),)), Events(s) as ev:
            a, b = gpu_job(), gpu_job()
            await publish(s, a)
            await publish(s, b)
            await ev.wait_final([a["submission_id"], b["submission_id"]], 60)
            assert [ev.states(x["submission_id"])[-1] for x in (a, b)] == ["SUCCEEDED", "SUCCEEDED"]
        assert c.launches["gpuworker"] == 1
        assert c.max_demand.get("GPU", 0.0) <= 1.0
    finally:
        await fleet.close()


async def test_existing_capacity_goes_first(tmp_path) -> None:
    auto = ScalingCluster("auto", {"gpuworker": (GPU_WORKER, 4)}, launch_delay_s=1.0)
    fixed = FakeCluster("fixed", {"g1": {"CPU": 2.0, "GPU": 1.0}})
    fleet = await _start([auto, fixed], [FakeServer([auto]), FakeServer([fixed])])
    s = make_settings(tmp_path)
    try:
        configs = (scaling_config(auto, 4, weight=5.0), fixed.config())
        async with running_daemon(s, configs), Events(s) as ev:
            first = gpu_job("/bin/sleep 2")
            await publish(s, first)
            await ev.wait_final([first["submission_id"]], 30)
            assert ev.of(first["submission_id"])[-1]["cluster"] == "fixed"
            assert auto.launches["gpuworker"] == 0
    finally:
        await fleet.close()


async def test_a_launch_that_never_comes_sends_the_job_elsewhere(tmp_path) -> None:
    stuck = ScalingCluster("stuck", {"gpuworker": (GPU_WORKER, 2)}, never_launch=True)
    works = ScalingCluster("works", {"gpuworker": (GPU_WORKER, 2)}, launch_delay_s=1.0)
    fleet = await _start([stuck, works], [FakeServer([stuck]), FakeServer([works])])
    s = make_settings(tmp_path, autoscale_timeout_s=2.0)
    try:
        configs = (scaling_config(stuck, 2, weight=5.0), scaling_config(works, 2))
        async with running_daemon(s, configs), Events(s) as ev:
            job = gpu_job()
            await publish(s, job)
            await ev.wait_final([job["submission_id"]], 60)
            states = [(e["state"], e["attempt"], e["cluster"]) for e in ev.of(job["submission_id"])]
            # Taken back as a preemption is (PREEMPTED, then ACCEPTED as attempt 2): never a STOPPED,
            # which every consumer of the contract takes for the job's end.
            assert ("DISPATCHED", 1, "stuck") in states and ("PREEMPTED", 1, "stuck") in states
            assert ("ACCEPTED", 2, None) in states and states[-1] == ("SUCCEEDED", 2, "works")
            assert not {"STOPPED", "RETRYING"} & {state for state, _, _ in states}
            taken = next(e for e in ev.of(job["submission_id"]) if e["state"] == "PREEMPTED")
            assert taken["message"] == "no gpuworker node started on stuck within autoscale_timeout_s=2; trying elsewhere"
            assert stuck.jobs[job["submission_id"]].stop_requested
    finally:
        await fleet.close()
