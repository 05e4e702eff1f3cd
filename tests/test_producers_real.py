"""Every function of the Python producer helper against the real broker, the daemon and
two real local Ray clusters."""

from __future__ import annotations

import asyncio
import os

import pytest

import producers
from support import make_settings, running_daemon, sid, wait_idle
from test_producers import RMCS_ENV, call, write_config

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def test_helper_functions_against_real_ray(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    saved = {k: os.environ.pop(k) for k in RMCS_ENV if k in os.environ}
    try:
        async with running_daemon(s, ray_clusters) as daemon:
            await wait_idle(daemon)
            await call(producers.initialize_scheduler_environment, write_config(tmp_path / "rmcs.yaml", s))
            marker = sid("hello")
            batch = [await call(producers.submit_job, f"/bin/echo {marker}-{i}", job_id=f"batch_job_{i}",
                                resource_requirements={"CPU": 1, "memory": 0.25}, tags=["batch", f"iteration_{i}"])
                     for i in range(3)]
            gpu_job = await call(producers.submit_job, "/bin/true", preferred_cluster="gpu_cluster",
                                 resource_requirements={"CPU": 1, "GPU": 1})
            assert await call(producers.wait_for_all_jobs, batch + [gpu_job], 1, 120) is True
            for i, job in enumerate(batch):
                assert await call(producers.get_job_status, job) == "SUCCEEDED"
                info = await call(producers.get_job_info, job)
                assert info["cluster"] in ("cpu_cluster", "gpu_cluster") and f"{marker}-{i}" in (info["logs"] or "")
            assert (await call(producers.get_job_info, gpu_job))["cluster"] == "gpu_cluster"

            long_job = await call(producers.submit_job, "/bin/sleep 60")
            for _ in range(100):
                if await call(producers.get_job_status, long_job) == "RUNNING":
                    break
                await asyncio.sleep(0.3)
            assert await call(producers.stop_job, long_job) is True
            with pytest.raises(RuntimeError, match=long_job):
                await call(producers.wait_for_all_jobs, [long_job], 1, 60)
            assert await call(producers.get_job_status, long_job) == "STOPPED"
            with pytest.raises(ValueError):
                await call(producers.submit_job, "python script.py")
            await call(producers.shutdown_scheduler_environment)
    finally:
        os.environ.update(saved)


async def test_a_local_working_dir_is_shipped_to_the_cluster_the_job_runs_on(tmp_path, ray_clusters):
    """Seed 002: "If `working_dir` is a local directory, it will be automatically zipped and
    uploaded ... the entrypoint command will be run in the remote cluster's copy". Both clusters
    get a job of the same directory: each gets the package, once, from rmcs."""
    s = make_settings(tmp_path)
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    marker = sid("shipped")
    (project / "run.sh").write_text(f"cat lib/words.txt\necho {marker} in $(basename $PWD)\n")
    (project / "lib" / "words.txt").write_text("hello from the working_dir\n")
    saved = {k: os.environ.pop(k) for k in RMCS_ENV if k in os.environ}
    try:
        async with running_daemon(s, ray_clusters) as daemon:
            await wait_idle(daemon)
            await call(producers.initialize_scheduler_environment, write_config(tmp_path / "rmcs.yaml", s))
            jobs = [await call(producers.submit_job, "/bin/sh run.sh", runtime_env={"working_dir": str(project)},
                               preferred_cluster=name, resource_requirements={"CPU": 1})
                    for name in ("cpu_cluster", "gpu_cluster")]
            assert await call(producers.wait_for_all_jobs, jobs, 1, 120) is True
            for job, name in zip(jobs, ("cpu_cluster", "gpu_cluster")):
                info = await call(producers.get_job_info, job)
                assert info["cluster"] == name, info
                assert "hello from the working_dir" in info["logs"] and f"{marker} in " in info["logs"], info["logs"]
            await call(producers.shutdown_scheduler_environment)
    finally:
        os.environ.update(saved)
