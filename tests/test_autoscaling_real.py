"""Autoscaling-aware placement on a real local Ray cluster that grows with Ray's own autoscaler
and its fake multi-node provider (tests/rayscale.py), with the real RabbitMQ: a job that fits
only a node type not yet running is dispatched, Ray starts the node, and the job SUCCEEDS;
with room for one node, two such jobs launch one node, not two; after the node is removed,
rmcs still answers for the job's logs (the tail it kept)."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import aiohttp
import pytest

from rayscale import ScalingHead
from scheduler_daemon.localray import HeadSpec
from scheduler_daemon.nodetypes import parse_autoscaling
from scheduler_daemon.rayapi import RayDashboard, RayError
from scheduler_daemon.settings import ClusterConfig
from slots import BLOCK, SLOT
from support import Events, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

# Between the port blocks of tests/conftest.py's heads, in this process's slot (slots.py).
BASE = BLOCK + 400
SPEC = HeadSpec("ascluster", dashboard_port=BASE + 500, port_base=BASE, num_cpus=1,
                temp_root=f"/tmp/rmcs-a{SLOT or ''}")
WORKER = {"CPU": 1, "GPU": 1}


@pytest.fixture(scope="module")
def scaling_head() -> Iterator[ScalingHead]:
    head = ScalingHead.launch_scaling(SPEC, "gpuworker", WORKER, max_workers=1)
    try:
        head.wait_ready(timeout=180)
        yield head
    finally:
        head.stop()


def config() -> ClusterConfig:
    spec = {"node_types": {"gpuworker": {"resources": dict(WORKER), "max_workers": 1}}}
    return ClusterConfig("ascluster", SPEC.dashboard_url, autoscaling=parse_autoscaling(spec, "ascluster"))


async def watch_nodes(seen: dict[str, Any], stop: asyncio.Event) -> None:
    """Record, from Ray's own cluster_status, the most gpuworker nodes up or coming at once
    and every worker node id that ever ran."""
    dash = RayDashboard(config(), 5)
    try:
        while not stop.is_set():
            try:
                status = (await dash.cluster_status())["data"]["clusterStatus"]
            except Exception:  # a slow answer under load: look again
                await asyncio.sleep(0.5)
                continue
            report = status.get("autoscalerReport") or {}
            coming = (report.get("activeNodes") or {}).get("gpuworker", 0) \
                + (report.get("pendingLaunches") or {}).get("gpuworker", 0) \
                + sum(1 for n in report.get("pendingNodes") or [] if n[1] == "gpuworker")
            seen["most"] = max(seen.get("most", 0), coming)
            seen.setdefault("nodes", set()).update(status["loadMetricsReport"].get("usageByNode") or {})
            await asyncio.sleep(0.5)
    finally:
        await dash.close()


async def wait_scaled_down(timeout: float) -> None:
    dash = RayDashboard(config(), 5)
    try:
        for _ in range(int(timeout)):
            status = (await dash.cluster_status())["data"]["clusterStatus"]
            report = status.get("autoscalerReport") or {}
            if not (report.get("activeNodes") or {}).get("gpuworker") and not report.get("pendingNodes"):
                return
            await asyncio.sleep(1.0)
    finally:
        await dash.close()
    raise AssertionError(f"the gpuworker node was not removed within {timeout} s")


async def test_jobs_for_a_node_type_not_running_start_one_node_and_succeed(tmp_path, scaling_head) -> None:
    s = make_settings(tmp_path)
    seen: dict[str, Any] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_nodes(seen, stop))
    try:
        async with running_daemon(s, (config(),)), Events(s) as ev:
            a, b = sid("as"), sid("as")
            for x in (a, b):
                await publish(s, {"submission_id": x, "entrypoint": "/bin/sleep 3",
                                  "resource_requirements": {"CPU": 1, "GPU": 1}})
            await ev.wait_final([a, b], 180)
            assert [ev.states(x)[-1] for x in (a, b)] == ["SUCCEEDED", "SUCCEEDED"], (ev.states(a), ev.states(b))
            first = next(e for e in ev.of(a) if e["state"] == "DISPATCHED")
            assert "fits after scale-up on gpuworker" in first["message"]
            # Scale-down: once the idle node is removed (idle_timeout_minutes 0.2), Ray no longer has
            # the logs; rmcs answers from the tail it kept when the job ended.
            await wait_scaled_down(120)
            with pytest.raises(RayError):
                dash = RayDashboard(config(), 10)
                try:
                    await dash.logs(a)
                finally:
                    await dash.close()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{s.http_addr}/api/v1/jobs/{a}/logs") as resp:
                    body = await resp.json()
            assert resp.status == 200, body
            assert body["logs"].startswith("[rmcs: ascluster no longer has this job's logs")
            assert f"Running entrypoint for job {a}: /bin/sleep 3" in body["logs"]
    finally:
        stop.set()
        await watcher
    assert seen["most"] == 1, seen  # room for one node: one launched, never two
    workers = {n for n in seen["nodes"] if not n.endswith("00000")}  # the head's fake id ends in 00000
    assert len(workers) == 1, seen["nodes"]
