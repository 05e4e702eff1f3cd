"""The seed-004 dialect: PaddleFlow's `JobSpec` (`name`, `schedulingPolicy`, `flavour`, ...) and
the flat form of `paddleflow job show`. A standalone job becomes one Ray job; distributed members,
mounted file systems, ports and pod templates are refused."""

from __future__ import annotations

import shlex
from typing import Any

from producers.schema import SUBMISSION_ID

from ..invalid import InvalidJob, parse_priority
from .dialect import GPU_SCALAR_RESOURCES, PASSTHROUGH, SEED004, Dialect, env_value, parse_quantity

_004_NAME = "seed-004 (PaddleFlow) job"
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


class Seed004(Dialect):
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
            out["queue"] = queue  # selects the rmcs queue of that name (docs/queues.md)
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
            text = env_value(arg)
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
