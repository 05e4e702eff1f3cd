"""The two foreign job dialects the intake accepts besides its own fields (docs/formats.md).

`translate` turns a job written in the seed-003 dialect (`jobName`, `taskRoles`, ...: a GPU
cluster manager in the OpenPAI style) or the seed-004 dialect (PaddleFlow's `JobSpec`: `name`,
`schedulingPolicy`, `flavour`, ...) into a dict of native job fields, which `parse_job` then
validates like any other body. It raises `InvalidJob` for whatever Ray cannot do as one job
(several task roles or replicas, exposed ports, mounted file systems, ...): a field that changes
how the job runs is never dropped in silence.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any

from .jobs import SUBMISSION_ID, InvalidJob, parse_priority

# Bound on raw numbers before unit conversion (memory may be written in bytes); the translated
# job then meets the job's own limits (producers/schema.py).
MAX_RESOURCE_VALUE = 1e18

FORMAT_KEY = "rmcs_format"
SEED003 = "seed003"
SEED004 = "seed004"
GPU_SCALAR_RESOURCES = ("nvidia.com/gpu",)
# Ray's convention for a GPU model: nodes carry `accelerator_type:<model>: 1`, a job asks for a sliver.
ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_REQUEST = 0.001
# Native fields neither dialect can state; a dialect job may carry them alongside its own fields.
PASSTHROUGH = ("submission_id", "preferred_cluster", "queue_timeout_s")

_003_NAME = "seed-003 job"
_004_NAME = "seed-004 (PaddleFlow) job"
_003_FIELDS = {"jobName", "image", "authFile", "dataDir", "outputDir", "codeDir", "virtualCluster",
               "taskRoles", "gpuType", "retryCount", "jobEnvs", "extras", "tmp"}
_003_HDFS_FIELDS = ("authFile", "dataDir", "outputDir", "codeDir")
_003_ROLE_FIELDS = {"name", "taskNumber", "cpuNumber", "memoryMB", "shmMB", "gpuNumber", "storageGB",
                    "portList", "command", "minFailedTaskCount", "minSucceededTaskCount"}
_004_FIELDS = {"id", "name", "labels", "annotations", "schedulingPolicy", "flavour", "fs", "extraFS",
               "image", "env", "command", "args", "port", "extensionTemplate", "framework", "members",
               # the flat form of `paddleflow job show` and of the SDK's JobRequest
               "queue", "priority"}
# What `paddleflow job show` adds about a past run: meaningless for a new submission, ignored.
_004_OUTPUT_FIELDS = {"status", "message", "runtime", "distributedRuntime", "workflowRuntime",
                      "acceptTime", "startTime", "finishTime", "updateTime", "user", "username"}
_004_POLICY_FIELDS = {"queue", "priority"}
_004_FLAVOUR_FIELDS = {"name", "cpu", "mem", "scalarResources"}
_004_FS_FIELDS = {"id", "name", "mountPath", "subPath", "readOnly"}
_CUSTOM_FLAVOURS = ("", "customFlavour")
_STANDALONE = ("", "standalone")

_QUANTITY = re.compile(r"^\+?((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40, "Pi": 2.0 ** 50, "Ei": 2.0 ** 60}


def translate(data: dict[str, Any]) -> dict[str, Any] | None:
    """Native job fields for a seed-003 or seed-004 job; None for a native job (or anything else,
    which `parse_job` then judges as native). Raises InvalidJob for what Ray cannot express."""
    if "entrypoint" in data:
        return None
    if "jobName" in data or "taskRoles" in data:
        return _Seed003(data).translate()
    if ("schedulingPolicy" in data or "flavour" in data
            or ("name" in data and ("command" in data or "flavour" in data))):
        return _Seed004(data).translate()
    return None


def parse_quantity(raw: Any) -> float:
    """A Kubernetes quantity ("8Gi", "512Mi", "4G", "500m", "2") or a JSON number, as a float."""
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a quantity")
    if isinstance(raw, int) and abs(raw) > MAX_RESOURCE_VALUE:
        raise ValueError(f"{raw!r} is absurdly large")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str) and (match := _QUANTITY.fullmatch(raw.strip())):
        value = float(match.group(1)) * _SUFFIX[match.group(2)]
    else:
        raise ValueError(f"{raw!r} is not a quantity such as 8Gi, 512Mi, 4G, 500m or 2")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{raw!r} is not a finite quantity >= 0")
    return value


def _env_value(value: Any) -> str | None:
    """An environment variable's value as Ray wants it (a string), or None when it has none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value) < 10 ** 100 or isinstance(value, float) and math.isfinite(value):
        return str(value)
    return None


class _Dialect:
    name = ""
    fmt = ""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.submission_id: str | None = None
        self.job_id: str | None = None

    def fail(self, reason: str) -> InvalidJob:
        return InvalidJob(f"{self.name}: {reason}", self.submission_id, self.job_id)

    def unknown(self, present: Any, allowed: set[str], where: str = "") -> None:
        extra = sorted(set(present) - allowed)
        if extra:
            raise self.fail(f"unknown field {where}{extra[0]!r}: rmcs does not know what it does, "
                            "so it cannot run the job as asked")

    def obj(self, raw: Any, where: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be an object")
        return raw

    def text(self, raw: Any, where: str) -> str | None:
        """An optional string; None and "" both mean absent."""
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise self.fail(f"{where} must be a string")
        return raw or None

    def number(self, raw: Any, where: str, *, integer: bool = False) -> float | int | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int if integer else (int, float)):
            raise self.fail(f"{where} must be {'an integer' if integer else 'a number'}, got {raw!r}")
        if not 0 <= raw <= MAX_RESOURCE_VALUE:  # also rules out NaN, infinity and huge integers
            raise self.fail(f"{where} must be a finite number >= 0, got {raw!r}")
        return raw

    def str_map(self, raw: Any, where: str, *, coerce: bool) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.obj(raw, where).items():
            text = _env_value(value) if coerce else value
            if not isinstance(text, str):
                kind = "a string, number or boolean" if coerce else "a string"
                raise self.fail(f"{where}.{key} must be {kind}, got {value!r}")
            out[key] = text
        return out

    def passthrough(self, out: dict[str, Any]) -> None:
        for key in PASSTHROUGH:
            if self.data.get(key) is not None:
                out[key] = self.data[key]

    def finish(self, out: dict[str, Any], resources: dict[str, float | int], env: dict[str, str],
               image: str | None, metadata: dict[str, str]) -> dict[str, Any]:
        runtime_env: dict[str, Any] = {}
        if env:
            runtime_env["env_vars"] = env
        if image:
            # Ray 2.x: the job runs in this container image (podman on the nodes); only `env_vars`
            # and `config` may sit beside it. The older `container: {"image": ...}` is deprecated.
            runtime_env["image_uri"] = image
        if runtime_env:
            out["runtime_env"] = runtime_env
        if resources:
            out["resource_requirements"] = resources
        out["metadata"] = {**metadata, FORMAT_KEY: self.fmt}
        return out


class _Seed003(_Dialect):
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

        retries = d.get("retryCount")
        if retries is not None:
            out["max_retries"] = self.number(retries, "retryCount", integer=True)
        vc = self.text(d.get("virtualCluster"), "virtualCluster")
        if vc and vc != "default":
            out["cluster_tags"] = [vc]
        env = self.pai_env(job_name, role_name)
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

    def job_envs(self, raw: Any) -> dict[str, str]:
        envs = dict(self.obj(raw, "jobEnvs"))
        debug = envs.pop("isDebug", None)
        if debug not in (None, False):
            raise self.fail(f"jobEnvs.isDebug {debug!r} (keep the failed container for debugging) "
                            "cannot be expressed: Ray keeps no container of a finished job")
        return self.str_map(envs, "jobEnvs", coerce=True)


class _Seed004(_Dialect):
    name = _004_NAME
    fmt = SEED004

    def translate(self) -> dict[str, Any]:
        d = self.data
        name = d.get("name")
        if name is not None and not isinstance(name, str):
            raise self.fail("name must be a string")
        self.job_id = name or None
        job_id = d.get("id")
        if job_id is not None and (not isinstance(job_id, str) or not SUBMISSION_ID.fullmatch(job_id)):
            raise self.fail(f"id must match [A-Za-z0-9._-]{{1,128}} (it becomes the submission_id), "
                            f"got {job_id!r}")
        sid = d.get("submission_id")
        self.submission_id = job_id or (sid if isinstance(sid, str) and SUBMISSION_ID.fullmatch(sid) else None)
        if job_id and sid is not None and sid != job_id:
            raise self.fail(f"id {job_id!r} and submission_id {sid!r} disagree")
        self.unknown(d, _004_FIELDS | _004_OUTPUT_FIELDS | set(PASSTHROUGH))

        out: dict[str, Any] = {}
        self.passthrough(out)
        if job_id:
            out["submission_id"] = job_id
        if name:
            out["job_id"] = name
        self.distribution(d.get("framework"), d.get("members"))
        self.storage(d.get("fs"), d.get("extraFS"))
        port = d.get("port")
        if port not in (None, 0):
            raise self.fail(f"port {port!r} cannot be expressed: PaddleFlow exposes it on the job's pod, "
                            "Ray has no per-job port")
        if d.get("extensionTemplate") not in (None, "", {}):
            raise self.fail("extensionTemplate (a Kubernetes object template for the job's pods) "
                            "cannot be expressed on Ray")

        out["entrypoint"] = self.entrypoint(d.get("command"), d.get("args"))
        metadata = self.labels_and_annotations(d.get("labels"), d.get("annotations"), out)
        queue, priority = self.policy(d)
        if queue:
            out["cluster_tags"] = [queue]
            metadata["rmcs_queue"] = queue
        out["priority"] = priority
        resources = self.flavour(d.get("flavour"), metadata)
        env = self.str_map(d.get("env"), "env", coerce=True)
        image = self.text(d.get("image"), "image")
        return self.finish(out, resources, env, image, metadata)

    def distribution(self, framework: Any, members: Any) -> None:
        if members is not None and not isinstance(members, list):
            raise self.fail("members must be a list")
        if members:
            roles = [m.get("role") if isinstance(m, dict) else m for m in members]
            replicas = sum(m.get("replicas", 1) for m in members
                           if isinstance(m, dict) and isinstance(m.get("replicas", 1), int))
            raise self.fail(f"distributed job ({len(members)} member(s), roles {roles!r}, {replicas} "
                            "replica(s) in all): PaddleFlow runs one pod per replica under the framework's "
                            "operator, but Ray runs one entrypoint per job, so members cannot be expressed "
                            "(submit a standalone job, or use Ray Train inside one)")
        fw = self.text(framework, "framework")
        if fw and fw not in _STANDALONE:
            raise self.fail(f"framework {fw!r} needs PaddleFlow's {fw} operator; rmcs runs standalone "
                            "jobs only, so it cannot be expressed on Ray")

    def storage(self, fs: Any, extra: Any) -> None:
        fs = self.obj(fs, "fs")
        self.unknown(fs, _004_FS_FIELDS, "fs.")
        if fs.get("name") or fs.get("id"):
            raise self.fail(f"fs {fs.get('name') or fs.get('id')!r}: mounting a PaddleFlow file system "
                            "into the job cannot be expressed on Ray")
        if extra is not None and not isinstance(extra, list):
            raise self.fail("extraFS must be a list")
        named = [e.get("name") or e.get("id") for e in extra or [] if isinstance(e, dict)]
        if any(named) or any(not isinstance(e, dict) for e in extra or []):
            raise self.fail(f"extraFS {named!r}: mounting PaddleFlow file systems into the job cannot "
                            "be expressed on Ray")

    def entrypoint(self, command: Any, args: Any) -> str:
        if not isinstance(command, str) or not command.strip():
            raise self.fail("command is required (a non-empty string): Ray has no image default "
                            "command to fall back on")
        if args is None:
            return command
        if not isinstance(args, list):
            raise self.fail("args must be a list of strings")
        words = []
        for arg in args:
            text = _env_value(arg)
            if text is None:
                raise self.fail(f"args must be a list of strings, got {arg!r}")
            words.append(shlex.quote(text))
        return " ".join([command, *words])

    def labels_and_annotations(self, labels: Any, annotations: Any, out: dict[str, Any]) -> dict[str, str]:
        label_map = self.str_map(labels, "labels", coerce=False)
        note_map = self.str_map(annotations, "annotations", coerce=False)
        if label_map:
            out["tags"] = [f"{k}={v}" for k, v in label_map.items()]
        metadata = dict(label_map)
        for key, value in note_map.items():
            if metadata.get(key, value) != value:
                raise self.fail(f"label and annotation {key!r} disagree ({metadata[key]!r} and {value!r}); "
                                "both become job metadata")
            metadata[key] = value
        reserved = sorted(k for k in metadata if k.startswith("rmcs_"))
        if reserved:
            raise self.fail(f"label or annotation {reserved[0]!r}: the rmcs_ prefix is reserved")
        return metadata

    def policy(self, d: dict[str, Any]) -> tuple[str | None, int]:
        policy = self.obj(d.get("schedulingPolicy"), "schedulingPolicy")
        self.unknown(policy, _004_POLICY_FIELDS, "schedulingPolicy.")
        values = []
        for key in ("queue", "priority"):
            nested, flat = policy.get(key), d.get(key)
            if nested is not None and flat is not None and nested != flat:
                raise self.fail(f"schedulingPolicy.{key} {nested!r} and {key} {flat!r} disagree")
            values.append(nested if nested is not None else flat)
        queue = self.text(values[0], "schedulingPolicy.queue")
        # PaddleFlow's default priority is NORMAL.
        try:
            priority = parse_priority("NORMAL" if values[1] is None else values[1], "schedulingPolicy.priority")
        except InvalidJob as exc:
            raise self.fail(exc.reason) from None
        return queue, priority

    def flavour(self, raw: Any, metadata: dict[str, str]) -> dict[str, float | int]:
        flavour = self.obj(raw, "flavour")
        self.unknown(flavour, _004_FLAVOUR_FIELDS, "flavour.")
        name = self.text(flavour.get("name"), "flavour.name")
        sized = any(flavour.get(k) not in (None, "") for k in ("cpu", "mem"))
        if name and name not in _CUSTOM_FLAVOURS:
            if not sized:
                raise self.fail(f"flavour {name!r} is a flavour registered in PaddleFlow, whose size "
                                "rmcs does not know; give flavour.cpu and flavour.mem")
            metadata["rmcs_flavour"] = name
        resources: dict[str, float | int] = {}
        if flavour.get("cpu") not in (None, ""):
            resources["CPU"] = self.quantity(flavour["cpu"], "flavour.cpu")
        if flavour.get("mem") not in (None, ""):
            resources["memory"] = self.quantity(flavour["mem"], "flavour.mem") / 2 ** 30
        for key, value in self.obj(flavour.get("scalarResources"), "flavour.scalarResources").items():
            amount = self.quantity(value, f"flavour.scalarResources.{key}")
            target = "GPU" if key in GPU_SCALAR_RESOURCES else key
            if target in resources:
                raise self.fail(f"flavour.scalarResources.{key} repeats resource {target}")
            resources[target] = amount
        return resources

    def quantity(self, raw: Any, where: str) -> float:
        try:
            return parse_quantity(raw)
        except ValueError as exc:
            raise self.fail(f"{where}: {exc}") from None
