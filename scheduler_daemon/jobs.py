"""The job model, its states (the wire's, from `producers.wire`), and the parsing of intake
messages into jobs.

Parsing happens once, at the edge: `parse_job` turns the bytes and AMQP properties of
a message into a frozen `Job`, or raises `InvalidJob` with a reason a person can act on.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import orjson

from producers import packages, schema
from producers.job import FIELDS
from producers.schema import (MAX_ENTRYPOINT, MAX_METADATA_ITEMS, MAX_METADATA_VALUE, MAX_RESOURCE_VALUE,  # noqa: F401
                              MAX_TAG_LEN, MAX_TAGS, PRIORITY_NAMES, SUBMISSION_ID, Command)
# The wire's names, re-exported: the daemon's modules take them from here.
from producers.wire import (ATTEMPT_HEADER, OWNER_HEADER, PREEMPTIONS_HEADER, RAY_STATES, REASON_HEADER,  # noqa: F401
                            RELEASED_HEADER, TERMINAL, JobState)

from .formats import translate
from .invalid import InvalidJob, parse_priority  # noqa: F401  (re-exported)
from .queueconf import DEFAULT, QUEUE_NAME

GIB = 1024 ** 3
_JOB_ID_NAMESPACE = uuid.UUID("7c1d6f0e-3a52-4d0b-9a57-3f1c8e2b6a10")


def attempt_ray_id(submission_id: str, attempt: int) -> str:
    """The id an attempt of a job has on its Ray cluster: the submission id, with the attempt
    after the first (the `~` cannot occur in a submission id, so no two jobs collide)."""
    return submission_id if attempt == 1 else f"{submission_id}~{attempt}"


@dataclass(frozen=True)
class Job:
    submission_id: str
    job_id: str
    entrypoint: str
    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    preferred_cluster: str | None = None
    # Requested resources in the job's units (memory in GiB), as written by the producer.
    resources: Mapping[str, float] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    cluster_tags: frozenset[str] = frozenset()
    priority: int = 0
    max_retries: int = 0
    queue_timeout_s: float | None = None
    attempt: int = 1
    correlation_id: str | None = None
    reply_to: str | None = None
    body: bytes = b""
    # The broker user that submitted it (docs/security.md); None for a job journaled before owners.
    owner: str | None = None
    # Submission ids that must all have SUCCEEDED before this job is placed (docs/scheduling.md).
    depends_on: tuple[str, ...] = ()
    # Stop the job once it has been RUNNING this long.
    run_timeout_s: float | None = None
    queue: str = "default"  # the queue it belongs to (docs/queues.md)
    preemptions: int = 0    # attempts that ended PREEMPTED: not counted against max_retries

    @cached_property
    def command(self) -> Command:
        """What the entrypoint runs, for the per-cluster allow-lists (checked once at parse)."""
        return schema.command_of(self.entrypoint, in_working_dir=bool(self.runtime_env.get("working_dir")))

    @property
    def ray_resources(self) -> dict[str, float]:
        """Resources in Ray's units: memory in bytes."""
        return {k: (v * GIB if k == "memory" else v) for k, v in self.resources.items()}

    @property
    def ray_submission_id(self) -> str:
        return attempt_ray_id(self.submission_id, self.attempt)


def ray_id_to_submission(ray_id: str) -> tuple[str, int]:
    sid, sep, attempt = ray_id.partition("~")
    return (sid, int(attempt)) if sep and attempt.isdigit() else (ray_id, 1)


def check_entrypoint(entrypoint: str, *, in_working_dir: bool = False) -> None:
    """Scripts and executables must be named by absolute path (seed 000), with no `..`; in a
    job's `working_dir`, relative paths name its files."""
    try:
        schema.check_entrypoint(entrypoint, in_working_dir=in_working_dir)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None


def _resources(raw: Any, defaults: Mapping[str, float], ceiling: Mapping[str, float] | None) -> dict[str, float]:
    try:
        return schema.check_resources(defaults if raw is None else raw, ceiling)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None


def _str_list(raw: Any, name: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidJob(f"{name} must be a list of strings")
    try:
        return tuple(schema.check_strings(raw, name))
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidJob(f"{key} must be a string")
    return value


@dataclass(frozen=True)
class MessageMeta:
    """The AMQP properties of an intake message that matter to parsing."""

    message_id: str | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    attempt: int = 1
    owner: str | None = None
    queue: str = "default"  # the rmcs queue whose RabbitMQ queue delivered it
    preemptions: int = 0


def parse_job(body: bytes, meta: MessageMeta, *, default_resources: Mapping[str, float],
              max_bytes: int, ceiling: Mapping[str, float] | None = None) -> Job:
    """Validate an intake message into a Job, or raise InvalidJob with the reason. `ceiling` is
    the most of each resource one job may ask for (the max_job_resources setting)."""
    if len(body) > max_bytes:
        raise InvalidJob(f"message of {len(body)} bytes is larger than the limit of {max_bytes}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJob(f"body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidJob("body must be a JSON object")
    try:
        translated = translate(data)  # the job formats of seeds 003 and 004
    except InvalidJob as exc:
        mid = meta.message_id if meta.message_id and SUBMISSION_ID.fullmatch(meta.message_id) else None
        raise InvalidJob(exc.reason, exc.submission_id or mid, exc.job_id) from None
    if translated is not None:
        data = translated
    sid = data.get("submission_id")
    if sid is None:
        sid = meta.message_id
    if sid is None:
        sid = f"sub_{uuid.uuid4().hex}"
    job_id = data.get("job_id")
    ids = (sid if isinstance(sid, str) and SUBMISSION_ID.fullmatch(sid) else None,
           job_id if isinstance(job_id, str) else None)
    try:
        data, queue = _queue_of(data, meta, seed=translated is not None)
        return _parse_fields(data, meta, sid, default_resources, ceiling, body, queue)
    except InvalidJob as exc:
        raise InvalidJob(exc.reason, *ids) from None


def _queue_of(data: dict[str, Any], meta: MessageMeta, *, seed: bool) -> tuple[dict[str, Any], str]:
    """The job's queue: the one that delivered it. A body may name it too and must then agree,
    except a seed-format job sent to `default`: its queue (or virtual cluster) selects the queue."""
    if "queue" not in data:
        return data, meta.queue
    data = dict(data)
    named = data.pop("queue")
    if named is None or named == meta.queue:
        return data, meta.queue
    if not isinstance(named, str) or not QUEUE_NAME.fullmatch(named):
        raise InvalidJob(f"queue must be a queue name matching [A-Za-z0-9_-]{{1,64}}, got {named!r}")
    if seed and meta.queue == DEFAULT:
        return data, named
    raise InvalidJob(f"the body names queue {named!r} but the message came through queue {meta.queue!r}; "
                     f"publish it with routing key submit.{named}" if named != DEFAULT else
                     f"the body names queue 'default' but the message came through queue {meta.queue!r}")


def _parse_fields(data: dict[str, Any], meta: MessageMeta, sid: Any, default_resources: Mapping[str, float],
                  ceiling: Mapping[str, float] | None, body: bytes, queue: str = DEFAULT) -> Job:
    if not isinstance(sid, str) or not SUBMISSION_ID.fullmatch(sid):
        raise InvalidJob(f"submission_id must be {schema.SUBMISSION_ID_RULE}, got {sid!r}")
    entrypoint = data.get("entrypoint")
    if not isinstance(entrypoint, str):
        raise InvalidJob("entrypoint is required and must be a string")
    runtime_env = data.get("runtime_env")
    runtime_env = {} if runtime_env is None else runtime_env
    if not isinstance(runtime_env, dict):
        raise InvalidJob("runtime_env must be an object")
    check_runtime_env_locations(runtime_env)
    check_entrypoint(entrypoint, in_working_dir=bool(runtime_env.get("working_dir")))
    job_id = data.get("job_id")
    if job_id is None:
        # Derived from the submission id, so a redelivered message keeps its job id.
        job_id = f"job_{uuid.uuid5(_JOB_ID_NAMESPACE, sid).hex}"
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 256:
        raise InvalidJob("job_id must be a string of 1 to 256 characters")
    metadata = data.get("metadata")
    metadata = {} if metadata is None else metadata
    try:
        metadata = schema.check_metadata(metadata)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None
    preferred = _opt_str(data, "preferred_cluster")
    priority = meta.priority if meta.priority is not None else 0
    if "priority" in data and data["priority"] is not None:
        priority = parse_priority(data["priority"])
    elif meta.priority is not None and not 0 <= meta.priority <= 9:
        raise InvalidJob(f"message priority must be 0..9, got {meta.priority}")
    try:  # any integer >= 0 (the contract); at most MAX_RETRIES retries are made
        max_retries = min(schema.check_max_retries(data.get("max_retries", 0)), schema.MAX_RETRIES)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None
    timeout = data.get("queue_timeout_s")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
            raise InvalidJob("queue_timeout_s must be a finite number > 0")
        timeout = float(timeout)
    try:
        depends_on = tuple(schema.check_depends_on(data["depends_on"], sid)) if data.get("depends_on") else ()
        run_timeout = data.get("run_timeout_s")
        run_timeout = None if run_timeout is None else schema.check_seconds(run_timeout, "run_timeout_s")
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidJob(f"unknown field {unknown[0]!r}")
    return Job(
        submission_id=sid,
        job_id=job_id,
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata=metadata,
        preferred_cluster=preferred,
        resources=_resources(data.get("resource_requirements"), default_resources, ceiling),
        tags=_str_list(data.get("tags"), "tags"),
        cluster_tags=frozenset(_str_list(data.get("cluster_tags"), "cluster_tags")),
        priority=priority,
        max_retries=max_retries,
        queue_timeout_s=timeout,
        attempt=meta.attempt,
        correlation_id=meta.correlation_id,
        reply_to=meta.reply_to,
        body=body,
        owner=meta.owner,
        depends_on=depends_on,
        run_timeout_s=run_timeout,
        queue=queue,
        preemptions=meta.preemptions,
    )


def check_runtime_env_locations(runtime_env: Mapping[str, Any]) -> None:
    """A `working_dir` or `py_modules` entry that is a path on the producer's machine cannot be
    read by the cluster: the producers' helper and `rmcs submit --working-dir` upload it and
    send its URI instead (producers/packages.py)."""
    for key, _, path in packages.local_paths(runtime_env):
        raise InvalidJob(f"runtime_env.{key} {path!r} is a path on the submitting machine, which no cluster "
                         "can read: submit through the producers' helper or `rmcs submit --working-dir`, which "
                         "upload it, or name a URI (gcs://, s3://, https://...zip, or local:// for a directory "
                         "on the cluster's nodes)")


def merge_runtime_env(default: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """The job's runtime_env over the cluster's: top-level keys replaced, env_vars merged by name."""
    merged = dict(default)
    for key, value in job.items():
        if key == "env_vars" and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
