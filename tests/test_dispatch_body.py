"""The body of Ray's job submission: resources, metadata, runtime_env and the attempt's id."""

from __future__ import annotations

from builders import job
from scheduler_daemon.dispatch import submit_body
from scheduler_daemon.jobs import GIB
from scheduler_daemon.settings import ClusterConfig

CLUSTER = ClusterConfig("cpu_cluster", "http://127.0.0.1:8265",
                        runtime_env={"pip": ["numpy"], "env_vars": {"RMCS_CLUSTER": "cpu_cluster", "A": "cluster"}})


def test_submit_body_maps_resources_and_metadata() -> None:
    j = job("s1", resources={"CPU": 2.0, "GPU": 1.0, "memory": 1.5, "GPU_fake": 0.5, "A100": 1.0},
            metadata={"owner": "alice"}, runtime_env={"env_vars": {"A": "job"}, "working_dir": "/w"})
    body = submit_body(j, CLUSTER)
    assert body["entrypoint"] == "echo hi"
    assert body["submission_id"] == "s1"
    assert body["entrypoint_num_cpus"] == 2.0
    assert body["entrypoint_num_gpus"] == 1.0
    assert body["entrypoint_memory"] == int(1.5 * GIB) and isinstance(body["entrypoint_memory"], int)
    assert body["entrypoint_resources"] == {"GPU_fake": 0.5, "A100": 1.0}
    assert body["metadata"]["owner"] == "alice"
    assert body["metadata"]["rmcs_submission_id"] == "s1"
    assert body["metadata"]["rmcs_job_id"] == "job-s1"
    assert all(isinstance(v, str) for v in body["metadata"].values())
    assert body["runtime_env"] == {"pip": ["numpy"], "working_dir": "/w",
                                   "env_vars": {"RMCS_CLUSTER": "cpu_cluster", "A": "job"}}
    assert CLUSTER.runtime_env["env_vars"]["A"] == "cluster"  # the cluster default is not modified


def test_submit_body_minimal_and_retry() -> None:
    body = submit_body(job("s2", resources={"CPU": 1.0}, attempt=3), ClusterConfig("c", "http://h:8265"))
    assert body["submission_id"] == "s2~3"
    assert body["metadata"]["rmcs_submission_id"] == "s2"
    assert body["metadata"]["rmcs_attempt"] == "3"
    assert "runtime_env" not in body and "entrypoint_resources" not in body
    assert "entrypoint_num_gpus" not in body and "entrypoint_memory" not in body
