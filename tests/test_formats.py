"""The seed-003 and seed-004 job dialects: every example job of those seeds is translated into
native fields or rejected with a reason that says what Ray cannot express (docs/formats.md)."""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_daemon.formats import parse_quantity, translate
from scheduler_daemon.formats.seed003 import always_succeeds
from scheduler_daemon.jobs import GIB, InvalidJob, Job, MessageMeta, parse_job

# --- the seeds' examples, verbatim ---------------------------------------------------------------

# Seed 003, section 2.3: the HelloWorld job submitted as JSON text.
SEED003_HELLOWORLD = r'''
{
  "jobName": "helloworld_16be675e",
  "image": "sitonholy/tensorflow:16.04-9.0-3.5-1.8.0",
  "authFile": "",
  "dataDir": "",
  "outputDir": "",
  "codeDir": "",
  "retryCount": 0,
  "taskRoles": [
    {
      "name": "task_1",
      "taskNumber": 1,
      "cpuNumber": 1,
      "memoryMB": 8192,
      "shmMB": 64,
      "gpuNumber": 1,
      "storageGB": 5,
      "minFailedTaskCount": null,
      "minSucceededTaskCount": null,
      "command": "nvidia-smi",
      "portList": []
    }
  ],
  "jobEnvs": {},
  "extras": {},
  "gpuType": "TITANX",
  "tmp": {
    "vgInfo": {
      "名称": "test",
      "正在跑工作数目": "0",
      "使用中內存/全部內存": "0/100000",
      "使用中硬盘/全部硬盘": "0/100",
      "使用中中央处理器/全部中中央处理器": "0/32",
      "显示卡(使用中/全部)": {
        "TITANX": "0/2",
        "P100": "0/2"
      }
    }
  }
}
'''

# Seed 003, section 3.1: a Jupyter service job.
SEED003_JUPYTER = r'''
{
  "jobName": "jupyter_16be8b71",
  "image": "sitonholy/ai:16.04-9.0-3.5-pmt",
  "authFile": "",
  "dataDir": "",
  "outputDir": "",
  "codeDir": "",
  "retryCount": 0,
  "taskRoles": [
    {
      "name": "task_1",
      "taskNumber": 1,
      "cpuNumber": 1,
      "memoryMB": 8192,
      "shmMB": 64,
      "gpuNumber": 1,
      "storageGB": 5,
      "minFailedTaskCount": null,
      "minSucceededTaskCount": null,
      "command": "jupyter notebook --allow-root --no-browser --ip 0.0.0.0 --port=$PAI_CONTAINER_HOST_jupyter_PORT_LIST --NotebookApp.token=\\\"\\\" --NotebookApp.allow_origin=\\\"*\\\" --NotebookApp.base_url=\\\"/\\\"",
      "portList": [
        {
          "label": "jupyter",
          "beginAt": 0,
          "portNumber": 1
        }
      ]
    }
  ],
  "jobEnvs": {},
  "extras": {},
  "gpuType": "TITANX",
  "tmp": {
    "vgInfo": {
      "名称": "test",
      "正在跑工作数目": "1",
      "使用中內存/全部內存": "8192/100000",
      "使用中硬盘/全部硬盘": "5/100",
      "使用中中央处理器/全部中中央处理器": "1/32",
      "显示卡(使用中/全部)": {
        "TITANX": "1/2",
        "P100": "0/2"
      }
    }
  }
}
'''

# Seed 004, section 2.3: `paddleflow job show` prints the job's config and runtime info (with
# trailing commas, which the test strips to read it).
SEED004_SHOW = r'''
[
    {
        "flavour": {
            "cpu": "1",
            "mem": "1Gi",
            "name": "flavour1"
        },
        "fs": {
            "name": ""
        },
        "extraFS": [
            {
                "id": "fs-root-test",
                "name": "test"
            }
        ],
        "labels": null,
        "annotations": null,
        "image": "paddlepaddle/paddle:2.0.2-gpu-cuda10.1-cudnn7",
        "command": "echo 1",
        "args": null,
        "port": 0,
        "framework": "standalone",
        "members": [],
        "message": "job is succeeded",
        "runtime": {
            "name": "job-run-000017-abs-62f5787b",
            "namespace": "default",
            "id": "d1ccfd86-cf00-40bc-a5d9-15fcc39e2fa4",
            "status": "",
            "nodeName": "paddleflow-qa-test",
        },
    }
]
'''


def seed(text: str) -> Any:
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", text))


def parse(data: dict[str, Any], meta: MessageMeta | None = None) -> Job:
    """Parse as the daemon does; a translated body arrives on the queue it names (docs/queues.md)."""
    meta = meta or MessageMeta(queue=data.get("queue") if "entrypoint" in data and data.get("queue") else "default")
    return parse_job(orjson.dumps(data), meta, default_resources={"CPU": 1.0},
                     max_bytes=1 << 20)


def rejected(data: dict[str, Any]) -> InvalidJob:
    with pytest.raises(InvalidJob) as info:
        translate(data)
    assert "Traceback" not in info.value.reason
    return info.value


# Seed 003, section 4.2: the job file's schema, filled in with values of the stated types.
def seed003_schema_example(command: str = "python train.py") -> dict[str, Any]:
    return {
        "jobName": "lenet_train-1.0~a",
        "image": "sitonholy/tensorflow:16.04-9.0-3.5-1.8.0",
        "authFile": "",
        "dataDir": "",
        "outputDir": "",
        "codeDir": "",
        "virtualCluster": "vc_a",
        "taskRoles": [{
            "name": "main",
            "taskNumber": 1,
            "cpuNumber": 4,
            "memoryMB": 16384,
            "shmMB": 64,
            "gpuNumber": 2,
            "portList": [],
            "command": command,
            "minFailedTaskCount": 1,
            "minSucceededTaskCount": None,
        }],
        "gpuType": "P100",
        "retryCount": 3,
        "jobEnvs": {"foo": 1, "key": "value", "isDebug": False},
        "extras": {"foo": 1, "key": "value"},
    }


# Seed 004, section 2.2: a JobSpec with every field of its table; labels as in `paddleflow job update
# --labels label1=value1,label2=value2`.
def seed004_jobspec(command: str = "python train.py") -> dict[str, Any]:
    return {
        "id": "job-2d7655af86c94de4",
        "name": "zzc-test",
        "labels": {"label1": "value1", "label2": "value2"},
        "annotations": {"owner": "zzc"},
        "schedulingPolicy": {"queue": "dzz", "priority": "high"},
        "flavour": {"name": "customFlavour", "cpu": "4", "mem": "8Gi",
                    "scalarResources": {"nvidia.com/gpu": "1"}},
        "fs": {"name": ""},
        "extraFS": [],
        "image": "paddlepaddle/paddle:2.0.2-gpu-cuda10.1-cudnn7",
        "env": {"EPOCHS": "10", "LR": 0.1},
        "command": command,
        "args": ["--data", "/mnt/data set", "--name=it's"],
        "port": 0,
        "extensionTemplate": {},
        "framework": "",
        "members": [],
    }


# --- seed 003 ------------------------------------------------------------------------------------

def test_seed003_helloworld() -> None:
    out = translate(seed(SEED003_HELLOWORLD))
    assert out is not None
    assert out["job_id"] == "helloworld_16be675e"
    assert "submission_id" not in out  # the dialect has no id: message_id or a generated one
    # minFailedTaskCount null: "the job will always succeed regardless any task failure".
    assert out["entrypoint"] == always_succeeds("nvidia-smi")
    assert out["resource_requirements"] == {"CPU": 1, "GPU": 1, "memory": 8.0,
                                            "accelerator_type:TITANX": 0.001}
    assert out["max_retries"] == 0
    assert out["runtime_env"]["image_uri"] == "sitonholy/tensorflow:16.04-9.0-3.5-1.8.0"
    assert out["runtime_env"]["env_vars"]["PAI_JOB_NAME"] == "helloworld_16be675e"
    assert out["runtime_env"]["env_vars"]["PAI_CURRENT_TASK_ROLE_NAME"] == "task_1"
    assert out["metadata"] == {"rmcs_format": "seed003", "rmcs_task_role": "task_1", "rmcs_gpu_type": "TITANX",
                               "rmcs_shm_mb": "64", "rmcs_storage_gb": "5", "rmcs_min_failed_task_count": "null"}
    env = out["runtime_env"]["env_vars"]
    assert env["PAI_RESOURCE_task_1"] == "1,1,8192,64"  # gpuNumber, cpuNumber, memoryMB, shmMB
    assert env["PAI_MIN_FAILED_TASK_COUNT_task_1"] == "" and env["PAI_MIN_SUCCEEDED_TASK_COUNT_task_1"] == ""
    assert "cluster_tags" not in out and "priority" not in out

    job = parse(out, MessageMeta(message_id="m-1", priority=4))
    assert (job.submission_id, job.job_id) == ("m-1", "helloworld_16be675e")
    assert job.priority == 4  # no priority in the dialect: the message's property rules
    assert job.ray_resources == {"CPU": 1.0, "GPU": 1.0, "memory": 8.0 * GIB, "accelerator_type:TITANX": 0.001}


def test_seed003_jupyter_is_rejected_for_its_ports() -> None:
    exc = rejected(seed(SEED003_JUPYTER))
    assert "portList" in exc.reason and "cannot be expressed" in exc.reason
    assert exc.job_id == "jupyter_16be8b71"


def test_seed003_schema_example() -> None:
    out = translate(seed003_schema_example("/usr/bin/python3 /opt/lenet/train.py"))
    assert out is not None
    assert out["queue"] == "vc_a" and "cluster_tags" not in out  # the virtual cluster selects the queue
    assert out["max_retries"] == 3
    assert out["resource_requirements"] == {"CPU": 4, "GPU": 2, "memory": 16.0, "accelerator_type:P100": 0.001}
    env = out["runtime_env"]["env_vars"]
    assert env["foo"] == "1" and env["key"] == "value" and "isDebug" not in env
    assert env["PAI_TASK_ROLE_TASK_COUNT_main"] == "1"
    assert out["metadata"]["extras.foo"] == "1" and out["metadata"]["extras.key"] == "value"
    job = parse(out, MessageMeta(queue="vc_a"))
    assert job.queue == "vc_a" and job.max_retries == 3
    assert parse(seed003_schema_example("/usr/bin/python3 /opt/lenet/train.py")).queue == "vc_a"
    assert job.entrypoint == "/usr/bin/python3 /opt/lenet/train.py"
    assert job.runtime_env == out["runtime_env"]


def test_seed003_relative_script_is_rejected_by_parse_job() -> None:
    out = translate(seed003_schema_example("python train.py"))
    assert out is not None and out["entrypoint"] == "python train.py"
    with pytest.raises(InvalidJob) as info:
        parse(out)
    assert "relative path" in info.value.reason and "train.py" in info.value.reason


def test_seed003_one_role_with_two_tasks_is_rejected() -> None:
    # Seed 003, figure 1-1, job-1: one task role with two tasks on two GPUs of one host.
    data = seed(SEED003_HELLOWORLD)
    data["taskRoles"][0]["taskNumber"] = 2
    exc = rejected(data)
    assert "taskNumber 2" in exc.reason and "cannot be expressed" in exc.reason
    assert "one entrypoint per job" in exc.reason


def test_seed003_two_task_roles_are_rejected() -> None:
    # Seed 003, figure 1-1, job-2: task roles main and work, three tasks on two hosts.
    data = seed(SEED003_HELLOWORLD)
    main = data["taskRoles"][0]
    data["taskRoles"] = [{**main, "name": "main"}, {**main, "name": "work", "taskNumber": 2}]
    exc = rejected(data)
    assert "2 task roles" in exc.reason and "'main'" in exc.reason and "'work'" in exc.reason
    assert "cannot be expressed" in exc.reason


@pytest.mark.parametrize(("change", "words"), [
    ({"codeDir": "hdfs://nn/code"}, ["codeDir", "HDFS", "cannot be expressed"]),
    ({"dataDir": "hdfs://nn/data"}, ["dataDir", "cannot be expressed"]),
    ({"outputDir": "hdfs://nn/out"}, ["outputDir", "cannot be expressed"]),
    ({"authFile": "hdfs://nn/auth"}, ["authFile", "cannot be expressed"]),
    ({"jobEnvs": {"isDebug": True}}, ["isDebug", "cannot be expressed"]),
    ({"jobEnvs": {"A": {"nested": 1}}}, ["jobEnvs.A"]),
    ({"jobEnvs": ["A=1"]}, ["jobEnvs must be an object"]),
    ({"retryCount": -1}, ["retryCount"]),
    ({"retryCount": "3"}, ["retryCount", "integer"]),
    ({"jobName": ""}, ["jobName"]),
    ({"frameworkVersion": "1"}, ["unknown field 'frameworkVersion'"]),
    ({"flavour": {"cpu": "1"}}, ["unknown field 'flavour'"]),
    ({"taskRoles": []}, ["taskRoles must be a list of one task role"]),
    ({"taskRoles": "x"}, ["taskRoles must be a list of one task role"]),
])
def test_seed003_rejections(change: dict[str, Any], words: list[str]) -> None:
    data = {**seed(SEED003_HELLOWORLD), **change}
    exc = rejected(data)
    assert exc.reason.startswith("seed-003 job: ")
    for word in words:
        assert word in exc.reason


@pytest.mark.parametrize(("change", "words"), [
    ({"command": None}, ["no command"]),
    ({"command": "  "}, ["no command"]),
    ({"portList": [{"label": "ssh", "beginAt": 0, "portNumber": 1}]}, ["portList", "cannot be expressed"]),
    ({"minFailedTaskCount": 2}, ["minFailedTaskCount 2", "cannot be expressed"]),
    ({"minSucceededTaskCount": 3}, ["minSucceededTaskCount 3", "cannot be expressed"]),
    ({"taskNumber": 0}, ["taskNumber must be an integer >= 1"]),
    ({"cpuNumber": "1"}, ["cpuNumber must be a number"]),
    ({"memoryMB": -5}, ["memoryMB must be a finite number >= 0"]),
    ({"gpuNumber": True}, ["gpuNumber must be a number"]),
    ({"sriov": True}, ["unknown field taskRoles[0].'sriov'"]),
])
def test_seed003_task_role_rejections(change: dict[str, Any], words: list[str]) -> None:
    data = seed(SEED003_HELLOWORLD)
    data["taskRoles"][0].update(change)
    exc = rejected(data)
    for word in words:
        assert word in exc.reason


def test_seed003_details() -> None:
    data = seed(SEED003_HELLOWORLD)
    data.update(virtualCluster="default", gpuType="", tmp={"anything": 1}, queue_timeout_s=30,
                preferred_cluster="gpu_cluster", submission_id="s-003",
                jobEnvs={"PAI_JOB_NAME": "mine", "N": 2, "ON": True, "isDebug": False})
    role = data["taskRoles"][0]
    role.update(gpuNumber=0, minFailedTaskCount=1, minSucceededTaskCount=1)
    out = translate(data)
    assert out is not None
    assert "cluster_tags" not in out and out["queue"] == "default"  # the default virtual cluster
    assert out["resource_requirements"] == {"CPU": 1, "GPU": 0, "memory": 8.0}
    assert out["runtime_env"]["env_vars"]["PAI_JOB_NAME"] == "mine"  # jobEnvs win
    assert out["runtime_env"]["env_vars"]["N"] == "2" and out["runtime_env"]["env_vars"]["ON"] == "true"
    assert (out["queue_timeout_s"], out["preferred_cluster"], out["submission_id"]) == (30, "gpu_cluster", "s-003")
    assert out["entrypoint"] == "nvidia-smi"  # minFailedTaskCount 1: the task's failure fails the job
    assert out["runtime_env"]["env_vars"]["PAI_MIN_FAILED_TASK_COUNT_task_1"] == "1"
    job = parse(out)
    assert job.submission_id == "s-003" and job.queue_timeout_s == 30.0
    assert job.resources == {"CPU": 1.0, "memory": 8.0}
    del role["minFailedTaskCount"]  # absent: the default, 1
    out = translate(data)
    assert out is not None and out["entrypoint"] == "nvidia-smi" and "rmcs_min_failed_task_count" not in out["metadata"]


def test_seed003_gpu_type_without_gpus_only_recorded() -> None:
    data = seed(SEED003_HELLOWORLD)
    data["taskRoles"][0]["gpuNumber"] = 0
    out = translate(data)
    assert out is not None
    assert "accelerator_type:TITANX" not in out["resource_requirements"]
    assert out["metadata"]["rmcs_gpu_type"] == "TITANX"


def test_seed003_minimal_job() -> None:
    out = translate({"taskRoles": [{"command": "/bin/true"}]})
    assert out == {"entrypoint": "/bin/true", "metadata": {"rmcs_format": "seed003"}}
    job = parse(out)
    assert job.resources == {"CPU": 1.0}  # the daemon's defaults apply


# --- seed 004 ------------------------------------------------------------------------------------

def test_seed004_show_example_is_rejected_for_its_extra_fs() -> None:
    (data,) = seed(SEED004_SHOW)
    exc = rejected(data)
    assert exc.reason.startswith("seed-004 (PaddleFlow) job: ")
    assert "extraFS" in exc.reason and "'test'" in exc.reason and "cannot be expressed" in exc.reason


def test_seed004_show_example_without_extra_fs() -> None:
    (data,) = seed(SEED004_SHOW)
    del data["extraFS"]
    out = translate(data)
    assert out is not None
    assert out["entrypoint"] == "echo 1"
    assert out["resource_requirements"] == {"CPU": 1.0, "memory": 1.0}
    assert out["runtime_env"] == {"image_uri": "paddlepaddle/paddle:2.0.2-gpu-cuda10.1-cudnn7"}
    assert out["priority"] == 5  # PaddleFlow's default, NORMAL
    assert out["metadata"] == {"rmcs_format": "seed004", "rmcs_flavour": "flavour1"}
    assert not {"message", "runtime", "job_id", "submission_id", "cluster_tags", "tags"} & set(out)
    job = parse(out)
    assert job.entrypoint == "echo 1" and job.priority == 5
    assert job.ray_resources == {"CPU": 1.0, "memory": 1.0 * GIB}


def test_seed004_jobspec() -> None:
    out = translate(seed004_jobspec("/usr/bin/python3 /opt/train.py"))
    assert out is not None
    assert (out["submission_id"], out["job_id"]) == ("job-2d7655af86c94de4", "zzc-test")
    assert out["tags"] == ["label1=value1", "label2=value2"]
    assert out["metadata"] == {"label1": "value1", "label2": "value2", "owner": "zzc",
                               "rmcs_queue": "dzz", "rmcs_format": "seed004"}
    assert out["queue"] == "dzz" and "cluster_tags" not in out  # PaddleFlow's queue selects the queue
    assert out["priority"] == 9
    assert out["resource_requirements"] == {"CPU": 4.0, "memory": 8.0, "GPU": 1.0}
    assert out["runtime_env"] == {"env_vars": {"EPOCHS": "10", "LR": "0.1"},
                                  "image_uri": "paddlepaddle/paddle:2.0.2-gpu-cuda10.1-cudnn7"}
    assert out["entrypoint"] == ("/usr/bin/python3 /opt/train.py --data '/mnt/data set' "
                                 "'--name=it'\"'\"'s'")
    job = parse(out, MessageMeta(message_id="ignored", priority=9, queue="dzz"))
    assert job.submission_id == "job-2d7655af86c94de4" and job.job_id == "zzc-test"
    assert job.tags == ("label1=value1", "label2=value2") and job.queue == "dzz"
    assert job.priority == 9 and job.resources == {"CPU": 4.0, "memory": 8.0, "GPU": 1.0}


def test_seed004_relative_script_is_rejected_by_parse_job() -> None:
    out = translate(seed004_jobspec("python train.py"))
    assert out is not None
    with pytest.raises(InvalidJob) as info:
        parse(out)
    assert "relative path" in info.value.reason and "train.py" in info.value.reason
    assert info.value.submission_id == "job-2d7655af86c94de4"


@pytest.mark.parametrize(("raw", "expected"), [
    ("HIGH", 9), ("NORMAL", 5), ("LOW", 1), ("High", 9), ("low", 1), (None, 5),
])
def test_seed004_priority(raw: str | None, expected: int) -> None:
    data = seed004_jobspec("/bin/true")
    data["schedulingPolicy"]["priority"] = raw
    out = translate(data)
    assert out is not None and out["priority"] == expected


def test_seed004_flat_queue_and_priority_of_show_and_sdk() -> None:
    data = seed004_jobspec("/bin/true")
    del data["schedulingPolicy"]
    data.update(queue="wf-143", priority="HIGH", status="succeeded", acceptTime="2022-07-12 22:31:43")
    out = translate(data)
    assert out is not None and out["queue"] == "wf-143" and out["priority"] == 9
    data["schedulingPolicy"] = {"queue": "other"}
    assert "disagree" in rejected(data).reason


@pytest.mark.parametrize(("mem", "gib"), [
    ("8Gi", 8.0), ("512Mi", 0.5), ("4G", 4e9 / 2 ** 30), ("1Ti", 1024.0), ("1073741824", 1.0),
    ("1.5Gi", 1.5), ("1048576Ki", 1.0), (2 ** 31, 2.0),
])
def test_seed004_memory_units(mem: Any, gib: float) -> None:
    data = seed004_jobspec("/bin/true")
    data["flavour"]["mem"] = mem
    out = translate(data)
    assert out is not None and math.isclose(out["resource_requirements"]["memory"], gib)


@pytest.mark.parametrize("mem", ["8GB", "-1Gi", "lots", "Gi", True, "1e400"])
def test_seed004_bad_memory(mem: Any) -> None:
    data = seed004_jobspec("/bin/true")
    data["flavour"]["mem"] = mem
    assert "flavour.mem" in rejected(data).reason


@pytest.mark.parametrize(("cpu", "cores"), [("500m", 0.5), ("2", 2.0), (3, 3.0), ("0.25", 0.25)])
def test_seed004_cpu(cpu: Any, cores: float) -> None:
    data = seed004_jobspec("/bin/true")
    data["flavour"]["cpu"] = cpu
    out = translate(data)
    assert out is not None and out["resource_requirements"]["CPU"] == cores


def test_seed004_scalar_resources() -> None:
    data = seed004_jobspec("/bin/true")
    data["flavour"] = {"cpu": "1", "mem": "1Gi",
                       "scalarResources": {"nvidia.com/gpu": "2", "example.com/fpga": "1"}}
    out = translate(data)
    assert out is not None
    assert out["resource_requirements"] == {"CPU": 1.0, "memory": 1.0, "GPU": 2.0, "example.com/fpga": 1.0}
    assert parse(out).resources["example.com/fpga"] == 1.0


def test_seed004_minimal_and_without_flavour() -> None:
    out = translate({"name": "n", "command": "/bin/true"})
    assert out == {"job_id": "n", "entrypoint": "/bin/true", "priority": 5,
                   "metadata": {"rmcs_format": "seed004"}}
    assert parse(out).resources == {"CPU": 1.0}


@pytest.mark.parametrize(("change", "words"), [
    ({"members": [{"role": "pserver", "replicas": 2}, {"role": "pworker", "replicas": 4}], "framework": "paddle"},
     ["distributed job", "2 member(s)", "6 replica(s)", "one entrypoint per job", "cannot be expressed"]),
    ({"members": [{"role": "worker", "replicas": 1}], "framework": "paddle"},
     ["distributed job", "members cannot be expressed"]),
    ({"framework": "spark"}, ["framework 'spark'", "cannot be expressed"]),
    ({"members": "x"}, ["members must be a list"]),
    ({"fs": {"name": "myfs", "mountPath": "/mnt"}}, ["fs 'myfs'", "cannot be expressed"]),
    ({"extraFS": [{"name": "data"}]}, ["extraFS", "cannot be expressed"]),
    ({"port": 8080}, ["port 8080", "cannot be expressed"]),
    ({"extensionTemplate": {"apiVersion": "v1"}}, ["extensionTemplate", "cannot be expressed"]),
    ({"command": None}, ["command is required"]),
    ({"command": ""}, ["command is required"]),
    ({"args": "--x"}, ["args must be a list"]),
    ({"args": [["x"]]}, ["args must be a list of strings"]),
    ({"flavour": {"name": "flavour1"}}, ["flavour 'flavour1'", "registered", "cpu"]),
    ({"flavour": {"cpu": "1", "gpu": "1"}}, ["unknown field flavour.'gpu'"]),
    ({"flavour": {"scalarResources": {"nvidia.com/gpu": "one"}}}, ["flavour.scalarResources.nvidia.com/gpu"]),
    ({"schedulingPolicy": {"queue": "q", "priority": "URGENT"}}, ["schedulingPolicy.priority", "URGENT"]),
    ({"schedulingPolicy": {"queue": "q", "maxRunTime": 5}}, ["unknown field schedulingPolicy.'maxRunTime'"]),
    ({"schedulingPolicy": {"queue": 3}}, ["schedulingPolicy.queue must be a string"]),
    ({"labels": {"a": 1}}, ["labels.a must be a string"]),
    ({"labels": {"owner": "x"}}, ["'owner'", "disagree"]),
    ({"annotations": {"rmcs_format": "x"}}, ["rmcs_format", "reserved"]),
    ({"env": {"A": None}}, ["env.A"]),
    ({"id": "has space"}, ["id must match"]),
    ({"submission_id": "other"}, ["disagree"]),
    ({"workflow": {}}, ["unknown field 'workflow'"]),
])
def test_seed004_rejections(change: dict[str, Any], words: list[str]) -> None:
    data = {**seed004_jobspec("/bin/true"), **change}
    exc = rejected(data)
    assert exc.reason.startswith("seed-004 (PaddleFlow) job: ")
    for word in words:
        assert word in exc.reason, exc.reason
    if "id" not in change:
        assert (exc.submission_id, exc.job_id) == ("job-2d7655af86c94de4", "zzc-test")


# --- which dialect ------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    {"entrypoint": "/bin/true"},
    {"entrypoint": "/bin/true", "jobName": "x"},  # native; parse_job then rejects the unknown field
    {"name": "x"},
    {"foo": 1},
    {},
])
def test_native_or_unknown_bodies_are_left_alone(data: dict[str, Any]) -> None:
    assert translate(copy.deepcopy(data)) is None


@pytest.mark.parametrize(("data", "fmt"), [
    ({"jobName": "x", "taskRoles": [{"command": "/bin/true"}]}, "seed003"),
    ({"taskRoles": [{"command": "/bin/true"}]}, "seed003"),
    ({"name": "x", "command": "/bin/true"}, "seed004"),
    ({"command": "/bin/true", "schedulingPolicy": {"queue": "q"}}, "seed004"),
    ({"command": "/bin/true", "flavour": {"cpu": "1"}}, "seed004"),
])
def test_dialect_detection(data: dict[str, Any], fmt: str) -> None:
    out = translate(data)
    assert out is not None and out["metadata"]["rmcs_format"] == fmt


def test_translate_does_not_modify_its_input() -> None:
    data = seed004_jobspec("/bin/true")
    before = copy.deepcopy(data)
    translate(data)
    assert data == before
    data = seed(SEED003_HELLOWORLD)
    before = copy.deepcopy(data)
    translate(data)
    assert data == before


def test_parse_quantity() -> None:
    assert parse_quantity("100m") == pytest.approx(0.1)
    assert parse_quantity("2k") == 2000.0
    assert parse_quantity("+1Ki") == 1024.0
    for bad in ("", "1KB", "1 Gi", None, [], float("nan"), -1, 10 ** 400):
        with pytest.raises(ValueError):
            parse_quantity(bad)


# --- property: nothing but InvalidJob escapes ---------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
keys_003 = st.sampled_from(["jobName", "image", "codeDir", "virtualCluster", "taskRoles", "gpuType",
                            "retryCount", "jobEnvs", "extras", "tmp", "submission_id"])
keys_004 = st.sampled_from(["id", "name", "labels", "annotations", "schedulingPolicy", "flavour", "fs",
                            "extraFS", "image", "env", "command", "args", "port", "framework", "members",
                            "queue", "priority"])
roles = st.fixed_dictionaries({"command": st.sampled_from(["/bin/true", "python x.py", ""]) | json_values}, optional={
    k: json_values for k in ("name", "taskNumber", "cpuNumber", "memoryMB", "gpuNumber", "portList",
                             "minFailedTaskCount", "shmMB")})
flavours = st.fixed_dictionaries({}, optional={"name": json_values, "cpu": json_values, "mem": json_values,
                                               "scalarResources": json_values})


def _check(data: dict[str, Any]) -> None:
    try:
        out = translate(data)
    except InvalidJob as exc:
        assert exc.reason
        return
    if out is None:
        return
    try:
        parse(out)
    except InvalidJob as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys_003, json_values, max_size=6), st.lists(roles, min_size=0, max_size=2) | json_values)
def test_arbitrary_seed003_bodies_raise_only_invalid_job(data: dict[str, Any], task_roles: Any) -> None:
    data["taskRoles"] = task_roles
    _check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys_004, json_values, max_size=8), flavours | json_values)
def test_arbitrary_seed004_bodies_raise_only_invalid_job(data: dict[str, Any], flavour: Any) -> None:
    data["flavour"] = flavour
    _check(data)


def test_queue_field_must_agree_with_the_routing_queue() -> None:
    body = {"entrypoint": "/bin/true", "queue": "research"}
    assert parse(body, MessageMeta(queue="research")).queue == "research"
    assert parse({"entrypoint": "/bin/true"}, MessageMeta(queue="research")).queue == "research"
    with pytest.raises(InvalidJob, match="came through queue 'default'.*submit.research"):
        parse(body, MessageMeta())  # a native job names its queue by routing key; the body must agree
    with pytest.raises(InvalidJob, match="queue must be a queue name"):
        parse({"entrypoint": "/bin/true", "queue": "no such!"}, MessageMeta(queue="x"))
