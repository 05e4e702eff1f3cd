"""`rmcs submit`: the job from the arguments (and --file) through the producers' job builder,
published by the producers' Client; with --wait, its events until it ends."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from producers.amqp import EventStream
from producers.errors import DuplicateJob, NotConfirmed, NotRouted
from producers.job import FIELDS, build_job as build_contract_job
from producers.wire import submit_key
from producers.schema import check_priority, check_submission_id
from producers.wire import JobState

from scheduler_daemon.formats import translate
from scheduler_daemon.invalid import InvalidJob

from .context import Ctx
from .output import JOB_FAILED, OK, TIMED_OUT, UNREACHABLE, USAGE, CliError, dumps, transition_line

_FIELDS = frozenset(FIELDS)


def _read_job_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(USAGE, f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CliError(USAGE, f"{path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(USAGE, f"{path}: the job must be a JSON object")
    return data


def _runtime_env(raw: str) -> dict[str, Any]:
    try:
        if raw.startswith("@"):
            data = yaml.safe_load(Path(raw[1:]).read_text(encoding="utf-8"))
        else:
            data = json.loads(raw)
    except OSError as exc:
        raise CliError(USAGE, f"--runtime-env: cannot read {raw[1:]}: {exc.strerror}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise CliError(USAGE, f"--runtime-env is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(USAGE, "--runtime-env must be a JSON object")
    return data


def _fields(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """The job fields the options set (over the file's, for resources and metadata)."""
    fields: dict[str, Any] = {}
    if args.entrypoint:
        words = args.entrypoint
        fields["entrypoint"] = words[0] if len(words) == 1 else shlex.join(words)
    if args.job_id is not None:
        fields["job_id"] = args.job_id
    resources: dict[str, float] = {}
    for name, value in (("CPU", args.cpus), ("GPU", args.gpus), ("memory", args.memory), *args.resource):
        if value is not None:
            resources[name] = value
    if resources:
        fields["resource_requirements"] = {**(body.get("resource_requirements") or {}), **resources}
    if args.preferred_cluster is not None:
        fields["preferred_cluster"] = args.preferred_cluster
    if args.tag:
        fields["tags"] = args.tag
    if args.cluster_tag:
        fields["cluster_tags"] = args.cluster_tag
    if args.max_retries is not None:
        fields["max_retries"] = args.max_retries
    if args.queue_timeout is not None:
        fields["queue_timeout_s"] = args.queue_timeout
    if args.after:
        fields["depends_on"] = [*(body.get("depends_on") or []), *args.after]
    if args.run_timeout is not None:
        fields["run_timeout_s"] = args.run_timeout
    if getattr(args, "queue", None) is not None:
        fields["queue"] = args.queue
    if args.runtime_env is not None:
        fields["runtime_env"] = _runtime_env(args.runtime_env)
    if args.working_dir is not None:
        fields["runtime_env"] = {**fields.get("runtime_env", body.get("runtime_env") or {}),
                                 "working_dir": args.working_dir}
    if args.metadata:
        fields["metadata"] = {**(body.get("metadata") or {}), **dict(args.metadata)}
    if args.submission_id is not None:
        fields["submission_id"] = args.submission_id
    if args.priority is not None:
        fields["priority"] = args.priority
    return fields


def build_job(args: argparse.Namespace) -> tuple[dict[str, Any], str, int | None]:
    """The message body, its submission id and its AMQP priority, from the submit arguments: a
    contract job through the producers' job builder (so it is checked before it is sent); a
    file in another format the daemon translates as it is, with only the id and priority."""
    if args.file and args.entrypoint:
        raise CliError(USAGE, "give the entrypoint after `--` or in --file, not both")
    if not args.file and not args.entrypoint:
        raise CliError(USAGE, "nothing to run: give the entrypoint after `--` (rmcs submit -- CMD ...) or --file")
    if args.timeout is not None and not args.wait:
        raise CliError(USAGE, "--timeout goes with --wait")
    body: dict[str, Any] = _read_job_file(args.file) if args.file else {}
    fields = _fields(args, body)
    if body and "entrypoint" not in body and set(body) - _FIELDS:  # another format: passed as it is
        extra = sorted(set(fields) - {"submission_id", "priority"})
        if extra:
            raise CliError(USAGE, f"{args.file} is not in the contract's format (no 'entrypoint'); options like "
                                  f"--{extra[0].replace('_', '-')} apply only to contract-format files")
        return body, *_foreign_id_and_priority(args.file, body, fields)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise CliError(USAGE, f"{args.file}: unknown field {unknown[0]!r}")
    merged = {**body, **fields}
    if "entrypoint" not in merged:
        raise CliError(USAGE, f"{args.file}: the job has no 'entrypoint'")
    try:
        job, priority = build_contract_job(**merged)
    except ValueError as exc:
        raise CliError(USAGE, str(exc)) from None
    return job, job["submission_id"], priority


def _foreign_id_and_priority(path: str, body: dict[str, Any], fields: dict[str, Any]) -> tuple[str, int | None]:
    """A seed-003 or seed-004 job, sent as it is: the submission id the daemon will give it (the
    file's own, as a PaddleFlow `id`, or the option's, or a new one) and its AMQP priority (the
    file's, so that RabbitMQ orders it as the daemon will). Translated here as the daemon does,
    so that a job it would refuse is refused before it is sent."""
    try:
        native = translate(body)
    except InvalidJob as exc:
        raise CliError(USAGE, f"{path}: {exc.reason}") from None
    if native is None:
        raise CliError(USAGE, f"{path} is neither a contract job (no 'entrypoint') nor a job in the "
                              "seed-003 or seed-004 format (docs/formats.md)")
    own, given = native.get("submission_id"), fields.get("submission_id")
    if own is not None and given is not None and own != given:
        raise CliError(USAGE, f"--submission-id {given} disagrees with the id in {path} ({own}), which the "
                              "daemon would take; leave the option out or change the file")
    try:
        sid = check_submission_id(given or own or f"sub_{uuid.uuid4().hex}")
        own_priority = None if native.get("priority") is None else check_priority(native["priority"], path)
    except ValueError as exc:
        raise CliError(USAGE, str(exc)) from None
    priority = fields.get("priority", own_priority)
    if own_priority is not None and priority != own_priority:
        raise CliError(USAGE, f"--priority {priority} disagrees with the job's priority in {path} ({own_priority}, "
                              "its format's default if the file names none); set it in the file")
    return sid, priority


def _named(args: argparse.Namespace, body: dict[str, Any], sid: str) -> bool:
    """Whether the submission id is the caller's (the option's or the file's), not a new one."""
    return args.submission_id is not None or sid in (body.get("submission_id"), body.get("id"))


async def cmd_submit(ctx: Ctx) -> int:
    args = ctx.args
    body, sid, priority = build_job(args)
    s = ctx.settings
    await ctx.connect()
    with ctx.broker():
        # Bound before publishing, so no event can be missed.
        events = await ctx.client.subscribe(["job.*.*"]) if args.wait else None
        try:
            try:
                # An id the caller chose may be taken already: said at once, as Ray does (best effort).
                await ctx.client.submit_as(sid, body, priority, check_duplicate=_named(args, body, sid))
            except NotRouted:
                key = submit_key(body.get("queue") if "entrypoint" in body else None, s.intake_routing_key)
                raise CliError(UNREACHABLE, f"no queue is bound to exchange {s.intake_exchange!r} with key "
                                            f"{key!r}: run `rmcs declare` (with the queue in its settings); "
                                            "the job was not queued") from None
            except NotConfirmed as exc:
                raise CliError(UNREACHABLE, f"the broker did not confirm the job ({exc.reason}); "
                                            "it may or may not be queued") from None
            except ValueError as exc:  # too large, or not JSON
                raise CliError(USAGE, str(exc)) from None
            except DuplicateJob as exc:
                raise CliError(USAGE, f"{exc}; the job was not queued") from None
            ctx.io.out(sid)
            if events is None:
                return OK
            return await _follow_job(ctx, events, sid, args.timeout, args.json)
        finally:
            if events is not None:
                await events.close()


async def _follow_job(ctx: Ctx, events: EventStream, sid: str, timeout: float | None, as_json: bool) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[tuple[Any, Any]] = set()
    while True:
        try:
            event = await events.get(None if deadline is None else deadline - time.monotonic())
        except TimeoutError:
            ctx.io.err(f"rmcs: gave up waiting for job {sid} after {timeout:g}s; it goes on")
            return TIMED_OUT
        if event.get("submission_id") != sid:
            continue
        key = (event.get("state"), event.get("attempt"))
        if key in seen:  # at-least-once delivery
            continue
        seen.add(key)
        ctx.io.out(dumps(event) if as_json else transition_line(event))
        if event.get("final"):
            state = str(event.get("state"))
            if state == JobState.SUCCEEDED:
                return OK
            ctx.io.err(f"rmcs: job {sid} ended {state}" + (f": {event['message']}" if event.get("message") else ""))
            return JOB_FAILED
