"""A real Ray head killed with a running job: the job becomes LOST and, with max_retries, runs
again on another cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scheduler_daemon.localray import HeadSpec, LocalHead, kill_processes_of
from scheduler_daemon.settings import ClusterConfig
from slots import BLOCK, TEMP_ROOT
from support import Events, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

DOOMED = HeadSpec("doomed", dashboard_port=BLOCK + 1800, port_base=BLOCK + 1500, num_cpus=2, temp_root=TEMP_ROOT)
# Sleeps only where the cluster's runtime_env says it is the doomed one.
ENTRYPOINT = "/bin/sh -c 'if [ \"$RMCS_CLUSTER\" = doomed ]; then sleep 60; fi'"


async def test_killed_ray_head_makes_its_jobs_lost_and_they_retry_elsewhere(tmp_path: Any, ray_clusters: Any) -> None:
    head = LocalHead.launch(DOOMED)
    try:
        await asyncio.to_thread(head.wait_ready, 120)
        clusters = (
            ClusterConfig("doomed", head.spec.dashboard_url, runtime_env={"env_vars": {"RMCS_CLUSTER": "doomed"}}),
            *(ClusterConfig(c.name, c.dashboard_url, tags=c.tags, runtime_env={"env_vars": {"RMCS_CLUSTER": c.name}})
              for c in ray_clusters),
        )
        s = make_settings(tmp_path, lost_after_s=3.0, down_after_failures=2, probe_interval_s=0.5)
        async with running_daemon(s, clusters), Events(s) as ev:
            retried, single = sid("lost-retry"), sid("lost-once")
            for job, retries in ((retried, 1), (single, 0)):
                await publish(s, {"submission_id": job, "entrypoint": ENTRYPOINT,
                                  "preferred_cluster": "doomed", "max_retries": retries})
            await ev.wait_for(lambda: all("RUNNING" in ev.states(j) for j in (retried, single)), 60, "running")
            assert {ev.of(j)[-1]["cluster"] for j in (retried, single)} == {"doomed"}
            await asyncio.to_thread(kill_processes_of, head.spec.temp_dir, [head.proc.pid], 1.0)
            await ev.wait_final([retried, single], timeout=90)
            states = [(e["state"], e["attempt"]) for e in ev.of(retried)]
            assert ("LOST", 1) in states and ("RETRYING", 1) in states and states[-1] == ("SUCCEEDED", 2), states
            assert ev.of(retried)[-1]["cluster"] in ("cpu_cluster", "gpu_cluster")
            assert [e["state"] for e in ev.of(single) if e["final"]] == ["LOST"]
            assert any(e.get("event") == "cluster.down.doomed" for e in ev.items)
    finally:
        await asyncio.to_thread(head.stop)
