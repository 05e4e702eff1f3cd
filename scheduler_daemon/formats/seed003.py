"""The seed-003 dialect: a GPU cluster manager in the OpenPAI style (`jobName`, `taskRoles`, ...).
One task role with one task becomes one Ray job; whatever else changes how the job runs is refused."""

from __future__ import annotations

import json
import shlex
from typing import Any

from producers.schema import SUBMISSION_ID

from .dialect import ACCELERATOR_PREFIX, ACCELERATOR_REQUEST, PASSTHROUGH, SEED003, Dialect

_003_NAME = "seed-003 job"
_003_FIELDS = {"jobName", "image", "authFile", "dataDir", "outputDir", "codeDir", "virtualCluster",
               "taskRoles", "gpuType", "retryCount", "jobEnvs", "extras", "tmp"}
_003_HDFS_FIELDS = ("authFile", "dataDir", "outputDir", "codeDir")
_003_ROLE_FIELDS = {"name", "taskNumber", "cpuNumber", "memoryMB", "shmMB", "gpuNumber", "storageGB",
                    "portList", "command", "minFailedTaskCount", "minSucceededTaskCount"}


def always_succeeds(command: str) -> str:
    """`command` run by a shell of its own, its exit status written to the log and then ignored:
    the job succeeds whatever the task does (a `minFailedTaskCount` of null)."""
    return (f"/bin/sh -c {shlex.quote(command)}; code=$?; if [ $code -ne 0 ]; then echo \"rmcs: the task "
            "exited with $code; the job succeeds anyway (minFailedTaskCount: null)\" >&2; fi; exit 0")


class Seed003(Dialect):
    name = _003_NAME
    fmt = SEED003

    def translate(self) -> dict[str, Any]:
        d = self.data
        job_name = d.get("jobName")
        if job_name is not None and (not isinstance(job_name, str) or not job_name):
            raise self.fail("jobName must be a non-empty string")
        self.job_id = job_name
        sid = d.get("submission_id")
        self.submission_id = sid if isinstance(sid, str) and SUBMISSION_ID.fullmatch(sid) else None
        self.unknown(d, _003_FIELDS | set(PASSTHROUGH))
        out: dict[str, Any] = {}
        if job_name:
            out["job_id"] = job_name
        self.passthrough(out)
        for key in _003_HDFS_FIELDS:
            if self.text(d.get(key), key):
                raise self.fail(f"{key} {d[key]!r} is an HDFS location the cluster manager copies or "
                                "mounts into the job's container; Ray jobs get no such mount, so it "
                                "cannot be expressed (put the files where the cluster's nodes can read "
                                "them, and name them by absolute path in the command)")
        role = self.single_role(d.get("taskRoles"))
        role_name = self.text(role.get("name"), "taskRoles[0].name")
        metadata: dict[str, str] = {}
        if role_name:
            metadata["rmcs_task_role"] = role_name
        where = f"task role {role_name!r}" if role_name else "the task role"

        command = role.get("command")
        if not isinstance(command, str) or not command.strip():
            raise self.fail(f"{where} has no command (a non-empty string is required)")
        out["entrypoint"] = command

        resources: dict[str, float | int] = {}
        cpu = self.number(role.get("cpuNumber"), "cpuNumber")
        gpu = self.number(role.get("gpuNumber"), "gpuNumber")
        memory_mb = self.number(role.get("memoryMB"), "memoryMB")
        if cpu is not None:
            resources["CPU"] = cpu
        if gpu is not None:
            resources["GPU"] = gpu
        if memory_mb is not None:
            resources["memory"] = memory_mb / 1024
        gpu_type = self.text(d.get("gpuType"), "gpuType")
        if gpu_type:
            metadata["rmcs_gpu_type"] = gpu_type
            if gpu:
                resources[ACCELERATOR_PREFIX + gpu_type] = ACCELERATOR_REQUEST
        # Container limits Ray does not enforce per job; recorded, so nothing vanishes unseen.
        for key, meta_key in (("shmMB", "rmcs_shm_mb"), ("storageGB", "rmcs_storage_gb")):
            value = self.number(role.get(key), key)
            if value is not None:
                metadata[meta_key] = str(value)

        ports = role.get("portList")
        if ports not in (None, []):
            raise self.fail(f"{where} asks for ports (portList {ports!r}); the cluster manager "
                            "reserves them per container and exports PAI_*_PORT_LIST variables, which "
                            "Ray cannot do for a job, so it cannot be expressed")
        for key in ("minFailedTaskCount", "minSucceededTaskCount"):
            value = role.get(key)
            if value is not None and (isinstance(value, bool) or value != 1):
                raise self.fail(f"{where}: {key} {value!r} cannot be expressed: a Ray job is one "
                                "task, which fails or succeeds the job by itself (only null or 1 fit)")
        if "minFailedTaskCount" in role and role["minFailedTaskCount"] is None:
            # "null means the job will always succeed regardless any task failure" (absent: 1).
            out["entrypoint"] = always_succeeds(command)
            metadata["rmcs_min_failed_task_count"] = "null"

        retries = d.get("retryCount")
        if retries is not None:
            out["max_retries"] = self.number(retries, "retryCount", integer=True)
        vc = self.text(d.get("virtualCluster"), "virtualCluster")
        if vc:  # the virtual cluster selects the rmcs queue of that name (docs/queues.md)
            out["queue"] = vc
        env = self.pai_env(job_name, role_name)
        if role_name:
            env.update(self.role_env(role_name, role, cpu, gpu, memory_mb))
        env.update(self.job_envs(d.get("jobEnvs")))
        for key, value in self.obj(d.get("extras"), "extras").items():
            try:
                metadata[f"extras.{key}"] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            except ValueError:
                raise self.fail(f"extras.{key} cannot be written as job metadata") from None
        image = self.text(d.get("image"), "image")
        return self.finish(out, resources, env, image, metadata)

    def single_role(self, roles: Any) -> dict[str, Any]:
        if not isinstance(roles, list) or not roles:
            raise self.fail("taskRoles must be a list of one task role")
        if len(roles) > 1:
            names = [r.get("name") if isinstance(r, dict) else r for r in roles]
            raise self.fail(f"{len(roles)} task roles {names!r}: the cluster manager starts a separate "
                            "container per role and task, but Ray runs one entrypoint per job, so "
                            "several task roles cannot be expressed (submit one job per role)")
        role = roles[0]
        if not isinstance(role, dict):
            raise self.fail("taskRoles[0] must be an object")
        self.unknown(role, _003_ROLE_FIELDS, "taskRoles[0].")
        count = role.get("taskNumber", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise self.fail(f"taskRoles[0].taskNumber must be an integer >= 1, got {count!r}")
        if count > 1:
            raise self.fail(f"task role {role.get('name')!r} has taskNumber {count}: the cluster manager "
                            f"starts {count} containers, but Ray runs one entrypoint per job, so several "
                            "tasks cannot be expressed (submit one job per task)")
        return role

    @staticmethod
    def pai_env(job_name: str | None, role: str | None) -> dict[str, str]:
        """The cluster manager's runtime variables that still hold for a one-task job on Ray."""
        env: dict[str, str] = {}
        if job_name:
            env["PAI_JOB_NAME"] = job_name
        if role:
            env.update({"PAI_TASK_ROLE_COUNT": "1", "PAI_TASK_ROLE_LIST": role,
                        f"PAI_TASK_ROLE_TASK_COUNT_{role}": "1", "PAI_CURRENT_TASK_ROLE_NAME": role,
                        "PAI_CURRENT_TASK_ROLE_CURRENT_TASK_INDEX": "0"})
        return env

    def role_env(self, role_name: str, role: dict[str, Any], cpu: float | None, gpu: float | None,
                 memory_mb: float | None) -> dict[str, str]:
        """The task role's variables: its resources (as the cluster manager lists them: gpuNumber,
        cpuNumber, memoryMB, shmMB) and its two task counts (an empty value for null)."""
        shm = self.number(role.get("shmMB"), "shmMB")
        counts = {key: "" if role.get(key) is None else str(role[key])
                  for key in ("minFailedTaskCount", "minSucceededTaskCount")}
        return {f"PAI_RESOURCE_{role_name}": ",".join("" if v is None else f"{v:g}" for v in (gpu, cpu, memory_mb, shm)),
                f"PAI_MIN_FAILED_TASK_COUNT_{role_name}": counts["minFailedTaskCount"],
                f"PAI_MIN_SUCCEEDED_TASK_COUNT_{role_name}": counts["minSucceededTaskCount"]}

    def job_envs(self, raw: Any) -> dict[str, str]:
        envs = dict(self.obj(raw, "jobEnvs"))
        debug = envs.pop("isDebug", None)
        if debug not in (None, False):
            raise self.fail(f"jobEnvs.isDebug {debug!r} (keep the failed container for debugging) "
                            "cannot be expressed: Ray keeps no container of a finished job")
        return self.str_map(envs, "jobEnvs", coerce=True)
