"""depends_on on real Ray, with the real RabbitMQ: a three-stage DAG (A, then B and C, then D)
runs in that order, by Ray's own clocks; a failing B cancels D with the reason."""

from __future__ import annotations

import pytest

from producers.pipeline import plan
from scheduler_daemon.rayapi import RayDashboard
from support import Events, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def _ray_times(cluster, ray_id: str) -> tuple[float, float]:
    dash = RayDashboard(cluster, 10)
    try:
        info = await dash.job(ray_id)
    finally:
        await dash.close()
    assert info["status"] == "SUCCEEDED", info
    return info["start_time"] / 1000.0, info["end_time"] / 1000.0


async def test_three_stage_dag_runs_in_order_on_real_ray(tmp_path, ray_clusters) -> None:
    s = make_settings(tmp_path)
    cpu = ray_clusters[0]
    tag = sid("dag")
    stage = {"entrypoint": "/bin/sleep 1", "cluster_tags": ["cpu"]}
    stages = {"A": stage, "B": {**stage, "after": ["A"]}, "C": {**stage, "after": ["A"]},
              "D": {**stage, "after": ["B", "C"]},
              # The failing branch: F fails, so G (after F and A) is cancelled naming F.
              "F": {"entrypoint": "/bin/false", "cluster_tags": ["cpu"], "after": ["A"]},
              "G": {**stage, "after": ["A", "F"]}}
    planned = dict(plan(stages, prefix=tag))
    ids = {name: kw["submission_id"] for name, kw in planned.items()}
    async with running_daemon(s, ray_clusters), Events(s) as ev:
        for name in ("G", "D", "C", "B", "F", "A"):  # dependents first: they wait for what is not seen yet
            kw = planned[name]
            await publish(s, {k: v for k, v in kw.items()})
        await ev.wait_final(list(ids.values()), 120)
        for name in "ABCD":
            assert ev.states(ids[name])[-1] == "SUCCEEDED", (name, ev.states(ids[name]))
        times = {name: await _ray_times(cpu, ids[name]) for name in "ABCD"}
        # Ray's start_time is its submission: each stage was submitted after its dependencies ended.
        assert times["A"][1] <= min(times["B"][0], times["C"][0])
        assert max(times["B"][1], times["C"][1]) <= times["D"][0]
        assert "WAITING" in ev.states(ids["D"])
        assert ev.states(ids["F"])[-1] == "FAILED"
        assert ev.states(ids["G"])[-1] == "CANCELLED"
        assert ev.of(ids["G"])[-1]["message"] == f"dependency {ids['F']} ended FAILED, not SUCCEEDED"
