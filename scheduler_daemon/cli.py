"""`rmcs`: the command line for users of the scheduler.

Submitting goes through the broker (the wire contract), so it works while the daemon is down;
looking at jobs and clusters goes through the daemon's HTTP API. Exit codes: 0 done, 1 the job
ended badly (or the request could not be carried out), 2 bad arguments, 3 broker or API
unreachable, 4 unknown job, 5 gave up waiting (`--timeout`), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable, Sequence
from urllib.parse import quote, urlsplit

import aio_pika
import aiohttp
import yaml

from producers.config import broker_user
from producers.schema import PRIORITY_NAMES, SUBMISSION_ID
from producers.tls import amqp_connect_kwargs

from .settings import ConfigError, Settings, load_settings

OK, JOB_FAILED, USAGE, UNREACHABLE, NOT_FOUND, TIMED_OUT, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
BAD_ENDS = ("FAILED", "STOPPED", "LOST", "EXPIRED", "CANCELLED", "REJECTED")
STATES = ("ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "LOST", "RETRYING",
          "REJECTED", "CANCELLED", "EXPIRED")
CONTRACT_FIELDS = {"entrypoint", "submission_id", "job_id", "runtime_env", "metadata", "preferred_cluster",
                   "resource_requirements", "tags", "cluster_tags", "priority", "max_retries", "queue_timeout_s"}
HTTP_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
GIB = 1024 ** 3

EPILOG = """exit codes: 0 ok, 1 the job ended badly or the request was refused, 2 bad arguments,
3 broker or API unreachable, 4 unknown job, 5 timed out waiting, 130 interrupted.
environment: RMCS_AMQP_URL, RMCS_HTTP_ADDR and every other RMCS_<SETTING> of the daemon;
RMCS_API_TOKEN, the bearer token for a daemon with api_tokens_file."""


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Io:
    """Where a command writes: stdout for results, stderr for diagnostics. Each line is flushed."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out_stream, self.err_stream = out, err

    def out(self, text: str = "", end: str = "\n") -> None:
        self.out_stream.write(text + end)
        self.out_stream.flush()

    def err(self, text: str) -> None:
        self.err_stream.write(text + "\n")
        self.err_stream.flush()


# ---- arguments ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that writes to the streams given to `main` (so commands can run in-process)."""

    out_stream: IO[str] | None = None
    err_stream: IO[str] | None = None

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        if not message:
            return
        if file is None or file is sys.stdout:
            file = self.out_stream or sys.stdout
        elif file is sys.stderr:
            file = self.err_stream or sys.stderr
        file.write(message)
        file.flush()


def _priority(raw: str) -> int:
    if raw.upper() in PRIORITY_NAMES:
        return PRIORITY_NAMES[raw.upper()]
    if raw.isdigit() and 0 <= int(raw) <= 9:
        return int(raw)
    raise argparse.ArgumentTypeError(f"{raw!r} is not 0..9, HIGH, NORMAL or LOW")


def _submission_id(raw: str) -> str:
    if not SUBMISSION_ID.fullmatch(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} must match [A-Za-z0-9._-]{{1,128}}")
    return raw


def _non_negative(kind: type) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if value != value or value < 0 or value in (float("inf"),):
            raise argparse.ArgumentTypeError(f"{raw!r} must be a finite number >= 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _positive_float(raw: str) -> float:
    value = _non_negative(float)(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be > 0")
    return float(value)


def _positive_int(raw: str) -> int:
    value = _non_negative(int)(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be > 0")
    return int(value)


def _key_value(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{raw!r} is not KEY=VALUE")
    return key, value


def _resource(raw: str) -> tuple[str, float]:
    name, value = _key_value(raw)
    return name, float(_non_negative(float)(value))


def _state(raw: str) -> str:
    if raw.upper() not in STATES:
        raise argparse.ArgumentTypeError(f"{raw!r} is not one of {', '.join(STATES)}")
    return raw.upper()


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _time(raw: str) -> str:
    """RFC 3339 time, or a duration ago: 30s, 10m, 2h, 7d."""
    m = _DURATION.fullmatch(raw.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        when = datetime.now(timezone.utc) - timedelta(seconds=seconds)
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration ago (30s, 10m, 2h, 7d)"
        ) from None
    return raw


def _pattern(raw: str) -> str:
    if not raw or any(not word for word in raw.split(".")):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a topic pattern (words separated by dots, * and #)")
    return raw


def build_parser(out: IO[str] | None = None, err: IO[str] | None = None) -> argparse.ArgumentParser:
    parser_class = type("Parser", (_Parser,), {"out_stream": out, "err_stream": err})
    fmt = argparse.RawDescriptionHelpFormatter

    common = parser_class(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument("--amqp-url", default=argparse.SUPPRESS, metavar="URL",
                   help="broker URL (default: $RMCS_AMQP_URL, the --config file, or amqp://guest:guest@127.0.0.1:5672/)")
    g.add_argument("--api", default=argparse.SUPPRESS, metavar="URL",
                   help="the daemon's HTTP API (default: http://$RMCS_HTTP_ADDR, or http://127.0.0.1:8600)")
    g.add_argument("--config", default=argparse.SUPPRESS, metavar="YAML",
                   help="daemon settings file, for the broker URL, HTTP address and exchange names")

    parser = parser_class(prog="rmcs", parents=[common], formatter_class=fmt, epilog=EPILOG,
                          description="Submit, follow and manage Ray jobs scheduled by rmcs across clusters.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    sub.required = True

    def command(name: str, help: str, description: str, examples: str = "") -> argparse.ArgumentParser:
        epilog = (f"examples:\n{examples}\n\n" if examples else "") + EPILOG
        return sub.add_parser(name, parents=[common], help=help, description=description, epilog=epilog,
                              formatter_class=fmt)

    p = command("submit", "submit a job through the broker",
                "Publish a job to the intake queue (persistent, with publisher confirms) and print its\n"
                "submission id. The entrypoint comes after `--`: one argument is taken as a shell command\n"
                "line as it is; several are quoted word by word. Or give the job as JSON with --file; the\n"
                "options then override the file's fields.",
                "  rmcs submit -- /usr/bin/python3 /srv/jobs/train.py --epochs 3\n"
                "  rmcs submit --cpus 2 --gpus 1 --memory 8 --tag training --priority HIGH --wait -- /srv/run.sh\n"
                "  rmcs submit --file job.json --preferred-cluster gpu_cluster")
    p.add_argument("entrypoint", nargs="*", metavar="ENTRYPOINT", help="the command to run on the cluster")
    p.add_argument("-f", "--file", metavar="PATH", help="job JSON (or YAML) file, '-' for stdin")
    p.add_argument("--submission-id", type=_submission_id, metavar="ID",
                   help="the job's identity ([A-Za-z0-9._-]{1,128}); default sub_<uuid>")
    p.add_argument("--job-id", metavar="NAME", help="your name for the job (default job_<uuid>)")
    p.add_argument("--cpus", type=_non_negative(float), metavar="N", help="CPUs the job needs")
    p.add_argument("--gpus", type=_non_negative(float), metavar="N", help="GPUs the job needs")
    p.add_argument("--memory", type=_non_negative(float), metavar="GIB", help="memory the job needs, in GiB")
    p.add_argument("--resource", type=_resource, action="append", default=[], metavar="NAME=N",
                   help="a custom Ray resource the job needs (repeatable)")
    p.add_argument("--preferred-cluster", metavar="NAME", help="try this cluster first when it fits")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="job label (repeatable)")
    p.add_argument("--cluster-tag", action="append", default=[], metavar="TAG",
                   help="the chosen cluster must carry this tag (repeatable)")
    p.add_argument("--priority", type=_priority, metavar="P", help="0..9 (9 first), or HIGH, NORMAL, LOW")
    p.add_argument("--max-retries", type=_non_negative(int), metavar="N",
                   help="further attempts after a failure or a lost cluster (default 0)")
    p.add_argument("--queue-timeout", type=_positive_float, metavar="SECONDS",
                   help="expire the job if it is not dispatched within this time")
    p.add_argument("--runtime-env", metavar="JSON",
                   help="Ray runtime environment as JSON, or @FILE (JSON or YAML)")
    p.add_argument("--metadata", type=_key_value, action="append", default=[], metavar="K=V",
                   help="Ray job metadata (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job's events until it ends; exit 0 if it SUCCEEDED, 1 otherwise")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                   help="with --wait: give up after this long (exit 5)")
    p.add_argument("--json", action="store_true", help="with --wait: print each event as a JSON line")

    p = command("list", "list jobs (HTTP API)",
                "List jobs known to the daemon, in the order they arrived, one page at a time (--all for every page).",
                "  rmcs list --state RUNNING --cluster gpu_cluster\n"
                "  rmcs list --owner svc-train\n"
                "  rmcs list --tag training --since 2h --all --json")
    p.add_argument("--state", type=_state, help="only jobs in this state")
    p.add_argument("--cluster", help="only jobs on this cluster")
    p.add_argument("--tag", help="only jobs with this tag")
    p.add_argument("--owner", help="only jobs submitted by this broker user")
    p.add_argument("--since", type=_time, metavar="TIME", help="created at or after: RFC 3339, or 30s/10m/2h/7d ago")
    p.add_argument("--until", type=_time, metavar="TIME", help="created before: RFC 3339, or a duration ago")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="jobs per page (API default 100, at most 1000)")
    p.add_argument("--cursor", metavar="CURSOR", help="the page after this cursor (printed by a previous list)")
    p.add_argument("--all", action="store_true", help="follow next_cursor to the last page")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = command("show", "show one job and its transitions (HTTP API)",
                "Show a job's current state and every transition it went through.",
                "  rmcs show train-42\n  rmcs show train-42 --json")
    p.add_argument("submission_id", type=_submission_id, metavar="ID")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = command("logs", "print a job's logs from its cluster (HTTP API)",
                "Print the job's logs (of its latest attempt) as its cluster has them.",
                "  rmcs logs train-42\n  rmcs logs --follow train-42")
    p.add_argument("submission_id", type=_submission_id, metavar="ID")
    p.add_argument("-f", "--follow", action="store_true",
                   help="poll every --interval seconds, printing new text, until the job ends")
    p.add_argument("--interval", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="poll interval with --follow (default 1)")

    p = command("stop", "stop or cancel a job",
                "Stop a job: a job not yet dispatched is cancelled (CANCELLED), a dispatched one is\n"
                "stopped on its cluster (STOPPED). Through the HTTP API, or with --via-broker by\n"
                "publishing control.stop on the event exchange (works while the daemon is down).",
                "  rmcs stop train-42 --reason 'wrong data'\n  rmcs stop train-42 --via-broker")
    p.add_argument("submission_id", type=_submission_id, metavar="ID")
    p.add_argument("--reason", default="stopped with rmcs stop", help="recorded on the job's last event")
    p.add_argument("--via-broker", action="store_true", help="publish control.stop instead of calling the API")
    p.add_argument("--timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                   help="with --via-broker: how long to wait for the daemon's answer (default 10)")

    p = command("clusters", "show the clusters' health and resources (HTTP API)",
                "Show each cluster as the daemon's last probe saw it.",
                "  rmcs clusters\n  rmcs clusters --json")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = command("events", "tail the event exchange",
                "Print events from the event exchange as they happen, on a queue of its own bound with a\n"
                "topic pattern: job.# every job event, job.failed.# failures, job.*.NAME one cluster,\n"
                "cluster.# health changes, control.# stop requests and answers.",
                "  rmcs events\n  rmcs events 'job.*.gpu_cluster' --json\n  rmcs events job.failed.# --count 1")
    p.add_argument("pattern", nargs="?", default="#", type=_pattern, metavar="PATTERN",
                   help="routing key pattern (default: #, everything)")
    p.add_argument("--count", type=_positive_int, metavar="N", help="exit after N events")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                   help="exit after this long (exit 5 if --count events have not all arrived)")
    p.add_argument("--json", action="store_true", help="print each event as a JSON line")

    command("declare", "declare the broker topology",
            "Declare the exchanges and queues of the wire contract (idempotent), so producers can\n"
            "publish before the daemon first runs.", "  rmcs declare\n  rmcs declare --config rmcs.yaml")
    return parser


# ---- helpers --------------------------------------------------------------------------------


class Ctx:
    def __init__(self, args: argparse.Namespace, io: Io) -> None:
        self.args = args
        self.io = io
        try:
            self.settings: Settings = load_settings(getattr(args, "config", None))
        except ConfigError as exc:
            raise CliError(USAGE, f"configuration error: {exc}") from None
        self.amqp_url: str = getattr(args, "amqp_url", None) or self.settings.amqp_url
        if urlsplit(self.amqp_url).scheme not in ("amqp", "amqps"):
            raise CliError(USAGE, f"--amqp-url must be an amqp:// or amqps:// URL, got {self.amqp_url!r}")
        api = getattr(args, "api", None)
        if api is None:
            host, _, port = self.settings.http_addr.rpartition(":")
            host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
            api = f"http://{host}:{port}"
        elif "://" not in api:
            api = f"http://{api}"
        if urlsplit(api).scheme not in ("http", "https") or not urlsplit(api).netloc:
            raise CliError(USAGE, f"--api must be an http:// or https:// URL, got {api!r}")
        self.api = api.rstrip("/")
        # The daemon's API token, when it has api_tokens_file; from the environment only, never an argument.
        self.api_token = os.environ.get("RMCS_API_TOKEN", "")

    @property
    def user(self) -> str | None:
        """The broker user of the URL, stamped as user_id on what this command publishes (the
        broker checks it): the owner of a submitted job, the requester of a stop."""
        return broker_user(self.amqp_url)

    @property
    def broker_name(self) -> str:
        parts = urlsplit(self.amqp_url)
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        vhost = parts.path if parts.path not in ("", "/") else ""
        return f"{host}:{port}{vhost}"

    # ---- broker ----

    async def connect(self) -> aio_pika.abc.AbstractConnection:
        try:
            tls_kwargs = amqp_connect_kwargs(self.amqp_url, self.settings.amqp_ca_file,
                                             self.settings.amqp_cert_file, self.settings.amqp_key_file)
        except ValueError as exc:
            raise CliError(USAGE, f"configuration error: {exc}") from None
        try:
            return await asyncio.wait_for(aio_pika.connect(self.amqp_url, **tls_kwargs), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise CliError(UNREACHABLE, f"cannot reach the broker at {self.broker_name}: timed out") from None
        except Exception as exc:  # refused, unknown host, bad credentials, TLS...
            raise CliError(UNREACHABLE, f"cannot reach the broker at {self.broker_name}: {_describe(exc)}") from None

    async def exchange(self, channel: aio_pika.abc.AbstractChannel, name: str) -> aio_pika.abc.AbstractExchange:
        try:
            return await channel.get_exchange(name, ensure=True)
        except aio_pika.exceptions.ChannelClosed:
            raise CliError(UNREACHABLE, f"exchange {name!r} does not exist on {self.broker_name}: "
                                        "run `rmcs declare` or start the daemon") from None

    # ---- HTTP API ----

    async def http(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                   body: Any = None, answers: tuple[int, ...] = ()) -> tuple[int, Any]:
        """One request; returns (status, JSON). Unreachable, 5xx (unless in `answers`) and
        answers that are not the rmcs API's are CliErrors; so is a 400 (bad arguments)."""
        url = self.api + path
        try:
            headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token else None
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as session:
                async with session.request(method, url, params=params, json=body, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
        except asyncio.TimeoutError:
            raise CliError(UNREACHABLE, f"the daemon's API at {self.api} did not answer within {HTTP_TIMEOUT_S:.0f}s") from None
        except aiohttp.ClientError as exc:
            raise CliError(UNREACHABLE, f"cannot reach the daemon's API at {self.api}: {_describe(exc)}") from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 500 and not (status in answers and isinstance(data, dict)):
            raise CliError(UNREACHABLE, f"the daemon's API failed: {method} {path}: HTTP {status}: {_error_text(data, raw)}")
        if (data is None or (status >= 400 and not isinstance(data, dict))
                or (status in (404, 405) and str(data.get("error", "")).startswith(("no such endpoint", "method ")))):
            raise CliError(UNREACHABLE, f"{self.api} does not serve {method} {path} as an rmcs API "
                                        f"(HTTP {status}: {_error_text(data, raw)}); is it an rmcs daemon of this version?")
        if status == 400:
            raise CliError(USAGE, f"the API refused the request: {_error_text(data, raw)}")
        return status, data

    async def job(self, sid: str) -> dict[str, Any]:
        status, data = await self.http("GET", f"/api/v1/jobs/{quote(sid, safe='')}")
        if status == 404:
            raise CliError(NOT_FOUND, f"unknown job {sid!r}: {data.get('error') or 'not found'}")
        if status != 200:
            raise CliError(JOB_FAILED, f"job {sid!r}: HTTP {status}: {data.get('error', data)}")
        return dict(data)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # aiormq wraps the reason in a tuple of causes; show the innermost plain message.
    while exc.__cause__ is not None and not str(exc.__cause__).strip() == "":
        exc = exc.__cause__
        text = str(exc).strip() or text
    return text.splitlines()[0][:300]


def _error_text(data: Any, raw: bytes) -> str:
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return raw[:200].decode("utf-8", "replace").strip() or "empty answer"


def _dumps(data: Any, pretty: bool = False) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2 if pretty else None, sort_keys=False)


def _short_ts(ts: Any) -> str:
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, (int, float)):
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = str(ts)
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if m:
        return m.group(1) + ("Z" if m.group(2) in (None, "Z", "+00:00") else m.group(2))
    return text


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _clip(text: Any, width: int = 60) -> str:
    if text is None or text == "":
        return "-"
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _num(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def _transition_line(e: dict[str, Any]) -> str:
    parts = [_short_ts(e.get("ts")), f"{e.get('state', '?'):<10}", f"attempt {e.get('attempt', '-')}",
             f"cluster {e.get('cluster') or '-'}"]
    if e.get("message"):
        parts.append(_clip(e["message"], 200))
    return "  ".join(parts)


# ---- submit ---------------------------------------------------------------------------------


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


def build_job(args: argparse.Namespace) -> tuple[dict[str, Any], str, int | None]:
    """The message body, its submission id and its AMQP priority, from the submit arguments."""
    if args.file and args.entrypoint:
        raise CliError(USAGE, "give the entrypoint after `--` or in --file, not both")
    if not args.file and not args.entrypoint:
        raise CliError(USAGE, "nothing to run: give the entrypoint after `--` (rmcs submit -- CMD ...) or --file")
    if args.timeout is not None and not args.wait:
        raise CliError(USAGE, "--timeout goes with --wait")
    body: dict[str, Any] = _read_job_file(args.file) if args.file else {}
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
    if args.runtime_env is not None:
        fields["runtime_env"] = _runtime_env(args.runtime_env)
    if args.metadata:
        fields["metadata"] = {**(body.get("metadata") or {}), **dict(args.metadata)}
    contract = not body or "entrypoint" in body or not (set(body) - CONTRACT_FIELDS)
    if not contract and fields:
        raise CliError(USAGE, f"{args.file} is not in the contract's format (no 'entrypoint'); options like "
                              f"--{sorted(fields)[0].replace('_', '-')} apply only to contract-format files")
    sid = args.submission_id or body.get("submission_id")
    if sid is not None and (not isinstance(sid, str) or not SUBMISSION_ID.fullmatch(sid)):
        raise CliError(USAGE, f"submission_id {sid!r} must match [A-Za-z0-9._-]{{1,128}}")
    sid = sid or f"sub_{uuid.uuid4().hex}"
    if contract:
        body.update(fields)
        body["submission_id"] = sid
    priority = args.priority
    if priority is not None:
        if contract:
            body["priority"] = priority
    elif contract and body.get("priority") is not None:
        raw = body["priority"]
        priority = PRIORITY_NAMES.get(raw.upper()) if isinstance(raw, str) else raw
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            raise CliError(USAGE, f"priority {raw!r} in {args.file} is not 0..9, HIGH, NORMAL or LOW")
    return body, sid, priority


async def cmd_submit(ctx: Ctx) -> int:
    args = ctx.args
    body, sid, priority = build_job(args)
    s = ctx.settings
    connection = await ctx.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        intake = await ctx.exchange(channel, s.intake_exchange)
        events: asyncio.Queue[Any] | None = None
        if args.wait:  # bound before publishing, so no event can be missed
            events = await _event_queue(ctx, connection, ["job.*.*"])
        message = aio_pika.Message(
            json.dumps(body, ensure_ascii=False).encode(), content_type="application/json",
            content_encoding="utf-8", delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=sid,
            priority=priority, user_id=ctx.user)
        try:
            await intake.publish(message, routing_key=s.intake_routing_key, timeout=CONNECT_TIMEOUT_S)
        except aio_pika.exceptions.PublishError:
            raise CliError(UNREACHABLE, f"no queue is bound to exchange {s.intake_exchange!r} with key "
                                        f"{s.intake_routing_key!r}: run `rmcs declare`; the job was not queued") from None
        except (aio_pika.exceptions.DeliveryError, asyncio.TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise CliError(UNREACHABLE, f"the broker did not confirm the job ({_describe(exc)}); "
                                        "it may or may not be queued") from None
        ctx.io.out(sid)
        if events is None:
            return OK
        return await _follow_job(ctx, events, sid, args.timeout, args.json)


async def _event_queue(ctx: Ctx, connection: aio_pika.abc.AbstractConnection,
                       keys: list[str]) -> "asyncio.Queue[Any]":
    """An exclusive queue bound to the event exchange; its messages (decoded) land in an asyncio
    queue, and a lost connection lands there as a CliError."""
    channel = await connection.channel()
    exchange = await ctx.exchange(channel, ctx.settings.events_exchange)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for key in keys:
        await queue.bind(exchange, key)
    out: asyncio.Queue[Any] = asyncio.Queue()
    closing = False

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            event = json.loads(message.body)
        except ValueError:
            event = {"event": message.routing_key, "unreadable": message.body[:200].decode("utf-8", "replace")}
        if isinstance(event, dict):
            event.setdefault("event", message.routing_key)
            out.put_nowait(event)

    def on_close(_: Any, exc: BaseException | None = None) -> None:
        if not closing:
            out.put_nowait(CliError(UNREACHABLE, f"lost the broker at {ctx.broker_name}"
                                                 + (f": {_describe(exc)}" if exc else "")))

    connection.close_callbacks.add(on_close)
    channel.close_callbacks.add(on_close)
    await queue.consume(on_message, no_ack=True)

    def stop_watching() -> None:
        nonlocal closing
        closing = True

    out.stop_watching = stop_watching  # type: ignore[attr-defined]
    return out


async def _next(events: "asyncio.Queue[Any]", deadline: float | None) -> Any:
    if deadline is None:
        item = await events.get()
    else:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        item = await asyncio.wait_for(events.get(), left)
    if isinstance(item, CliError):
        raise item
    return item


async def _follow_job(ctx: Ctx, events: "asyncio.Queue[Any]", sid: str, timeout: float | None,
                      as_json: bool) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[tuple[Any, Any]] = set()
    try:
        while True:
            try:
                event = await _next(events, deadline)
            except (TimeoutError, asyncio.TimeoutError):
                ctx.io.err(f"rmcs: gave up waiting for job {sid} after {timeout:g}s; it goes on")
                return TIMED_OUT
            if event.get("submission_id") != sid:
                continue
            key = (event.get("state"), event.get("attempt"))
            if key in seen:  # at-least-once delivery
                continue
            seen.add(key)
            ctx.io.out(_dumps(event) if as_json else _transition_line(event))
            if event.get("final"):
                state = str(event.get("state"))
                if state == "SUCCEEDED":
                    return OK
                ctx.io.err(f"rmcs: job {sid} ended {state}" + (f": {event['message']}" if event.get("message") else ""))
                return JOB_FAILED
    finally:
        events.stop_watching()  # type: ignore[attr-defined]


# ---- HTTP commands --------------------------------------------------------------------------


def _job_row(j: dict[str, Any]) -> list[str]:
    return [str(j.get("submission_id")), str(j.get("state")), j.get("cluster") or "-", str(j.get("attempt", "-")),
            _short_ts(j.get("created")), _short_ts(j.get("updated")), ",".join(j.get("tags") or []) or "-",
            _clip(j.get("message"), 50)]


JOB_HEADER = ["SUBMISSION ID", "STATE", "CLUSTER", "ATTEMPT", "CREATED", "UPDATED", "TAGS", "MESSAGE"]


async def cmd_list(ctx: Ctx) -> int:
    a = ctx.args
    params = {k: v for k, v in (("state", a.state), ("cluster", a.cluster), ("tag", a.tag), ("owner", a.owner),
                                ("since", a.since),
                                ("until", a.until), ("limit", a.limit), ("cursor", a.cursor)) if v is not None}
    jobs: list[dict[str, Any]] = []
    while True:
        status, data = await ctx.http("GET", "/api/v1/jobs", params={k: str(v) for k, v in params.items()})
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise CliError(JOB_FAILED, f"unexpected answer to the job list: HTTP {status}")
        jobs.extend(data["jobs"])
        cursor = data.get("next_cursor")
        if not a.all or not cursor:
            break
        params["cursor"] = cursor
    if a.json:
        ctx.io.out(_dumps({"jobs": jobs, "next_cursor": cursor}, pretty=True))
        return OK
    if jobs:
        ctx.io.out(_table([_job_row(j) for j in jobs], JOB_HEADER))
    else:
        ctx.io.err("no jobs")
    if cursor:
        ctx.io.err(f"more jobs: repeat with --cursor {cursor} (or use --all)")
    return OK


async def cmd_show(ctx: Ctx) -> int:
    job = await ctx.job(ctx.args.submission_id)
    if ctx.args.json:
        ctx.io.out(_dumps(job, pretty=True))
        return OK
    res = job.get("resource_requirements") or {}
    rows = [
        ("submission id", job.get("submission_id")),
        ("job id", job.get("job_id")),
        ("owner", job.get("owner") or "-"),
        ("state", f"{job.get('state')}" + (" (final)" if job.get("final") else "")),
        ("cluster", job.get("cluster") or "-"),
        ("attempt", job.get("attempt")),
        ("priority", "-" if job.get("priority") is None else job["priority"]),
        ("resources", ", ".join(f"{k}={_num(v)}" for k, v in res.items()) or "-"),
        ("tags", ", ".join(job.get("tags") or []) or "-"),
        ("metadata", ", ".join(f"{k}={v}" for k, v in (job.get("metadata") or {}).items()) or "-"),
        ("created", _short_ts(job.get("created"))),
        ("updated", _short_ts(job.get("updated"))),
        ("message", job.get("message") or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        ctx.io.out(f"{key:<{width}}  " + str(value).rstrip("\n").replace("\n", "\n" + " " * (width + 2)))
    transitions = job.get("transitions") or []
    if transitions:
        ctx.io.out("")
        ctx.io.out(_table([[_short_ts(t.get("ts")), str(t.get("state")), str(t.get("attempt", "-")),
                            t.get("cluster") or "-", _clip(t.get("message"), 80)] for t in transitions],
                          ["TIME", "STATE", "ATTEMPT", "CLUSTER", "MESSAGE"]))
    return OK


async def _logs(ctx: Ctx, sid: str, answers: tuple[int, ...] = ()) -> tuple[int, dict[str, Any]]:
    status, data = await ctx.http("GET", f"/api/v1/jobs/{quote(sid, safe='')}/logs", answers=answers)
    if status == 404:
        raise CliError(NOT_FOUND, f"unknown job {sid!r}: {data.get('error') or 'not found'}")
    if status not in (200, 409, *answers):
        raise CliError(JOB_FAILED, f"logs of {sid!r}: HTTP {status}: {data.get('error', data)}")
    return status, data


async def cmd_logs(ctx: Ctx) -> int:
    sid, io = ctx.args.submission_id, ctx.io
    if not ctx.args.follow:
        status, data = await _logs(ctx, sid)
        if status == 409:
            raise CliError(JOB_FAILED, f"no logs for {sid}: {data.get('error')}")
        io.out(str(data.get("logs") or ""), end="")
        return OK
    printed, source, warned = "", None, False
    grace = time.monotonic() + 5.0  # a job just submitted may not be known to the daemon yet
    while True:
        try:
            job = await ctx.job(sid)
        except CliError as exc:
            if exc.code != NOT_FOUND or time.monotonic() > grace:
                raise
            await asyncio.sleep(ctx.args.interval)
            continue
        status, data = await _logs(ctx, sid, answers=(502,))
        if status == 502:  # the cluster did not answer this time; it may next time
            if not warned:
                io.err(f"rmcs logs: {data.get('error')}; retrying")
                warned = True
        elif status == 200:
            warned = False
            text = str(data.get("logs") or "")
            now = (data.get("cluster"), job.get("attempt"))
            if source is not None and now != source:
                io.err(f"--- attempt {now[1]} on {now[0]} ---")
                printed = ""
            source = now
            if text.startswith(printed):
                io.out(text[len(printed):], end="")
            else:  # the cluster's copy changed under us: show it whole
                io.err("--- logs rewritten on the cluster; printing them again ---")
                io.out(text, end="")
            printed = text
        if job.get("final"):
            if source is None and status != 200:
                raise CliError(JOB_FAILED, f"job {sid} ended {job.get('state')} with no logs: {data.get('error')}")
            if printed and not printed.endswith("\n"):
                io.out("")
            return OK
        await asyncio.sleep(ctx.args.interval)


async def cmd_stop(ctx: Ctx) -> int:
    a = ctx.args
    if a.via_broker:
        return await _stop_via_broker(ctx)
    status, data = await ctx.http("POST", f"/api/v1/jobs/{quote(a.submission_id, safe='')}/stop",
                                  body={"reason": a.reason}, answers=(502,))
    if status == 404:
        raise CliError(NOT_FOUND, f"unknown job {a.submission_id!r}: {data.get('error') or 'not found'}")
    return _stop_outcome(ctx, data)


def _stop_outcome(ctx: Ctx, answer: dict[str, Any]) -> int:
    """Print what a stop did. cancelled, stopping, recorded (not received yet, for instance
    still in the intake queue: cancelled when it arrives): 0; already final, not followed or
    refused by the cluster: 1."""
    a = ctx.args
    sid = answer.get("submission_id") or a.submission_id
    outcome = str(answer.get("outcome") or "error")
    message = answer.get("message") or answer.get("error") or ""
    if outcome in ("cancelled", "stopping", "recorded"):
        ctx.io.out(f"{sid}: {outcome}: {message}".rstrip(": "))
        return OK
    if outcome == "invalid":
        raise CliError(USAGE, message)
    raise CliError(JOB_FAILED, f"{sid}: {outcome}: {message}".rstrip(": "))


async def _stop_via_broker(ctx: Ctx) -> int:
    a, io, s = ctx.args, ctx.io, ctx.settings
    connection = await ctx.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        events = await ctx.exchange(channel, s.events_exchange)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        correlation = uuid.uuid4().hex

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.correlation_id == correlation:
                with contextlib.suppress(ValueError):
                    answers.put_nowait(json.loads(message.body))

        await replies.consume(on_reply, no_ack=True)
        body = json.dumps({"submission_id": a.submission_id, "reason": a.reason}).encode()
        try:
            await events.publish(aio_pika.Message(body, content_type="application/json",
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                                  message_id=uuid.uuid4().hex, correlation_id=correlation,
                                                  reply_to=replies.name, user_id=ctx.user),
                                 routing_key="control.stop", timeout=CONNECT_TIMEOUT_S)
        except aio_pika.exceptions.PublishError:
            raise CliError(UNREACHABLE, f"nothing listens for control.stop on {s.events_exchange!r}: the daemon "
                                        "has never run with these names; the request was dropped") from None
        except (aio_pika.exceptions.DeliveryError, asyncio.TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise CliError(UNREACHABLE, f"the broker did not confirm the stop request: {_describe(exc)}") from None
        try:
            answer = await asyncio.wait_for(answers.get(), a.timeout)
        except asyncio.TimeoutError:
            io.out(f"{a.submission_id}: published: no answer from the daemon within {a.timeout:g}s; "
                   "it acts on the request when it runs")
            return OK
    return _stop_outcome(ctx, answer)


def _resource_cell(cluster: dict[str, Any], name: str) -> str:
    total = (cluster.get("total") or {}).get(name)
    if total is None:
        return "-"
    free = (cluster.get("available") or {}).get(name, 0.0)
    if name in ("memory", "object_store_memory"):
        return f"{free / GIB:.1f}/{total / GIB:.1f}G"
    return f"{_num(free)}/{_num(total)}"


async def cmd_clusters(ctx: Ctx) -> int:
    status, data = await ctx.http("GET", "/api/v1/clusters")
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("clusters"), list):
        raise CliError(JOB_FAILED, f"unexpected answer to the cluster list: HTTP {status}")
    if ctx.args.json:
        ctx.io.out(_dumps(data, pretty=True))
        return OK
    now = time.time()
    rows = []
    for c in data["clusters"]:
        probe = c.get("last_probe")
        age = f"{max(0.0, now - probe):.1f}s ago" if isinstance(probe, (int, float)) else _short_ts(probe)
        latency = c.get("latency_s")
        rows.append([str(c.get("name")), str(c.get("health")), _resource_cell(c, "CPU"), _resource_cell(c, "GPU"),
                     _resource_cell(c, "memory"), str(len(c.get("nodes") or [])),
                     f"{latency * 1000:.0f}ms" if isinstance(latency, (int, float)) else "-", age,
                     ",".join(c.get("tags") or []) or "-", _clip(c.get("error"), 50)])
    if rows:
        ctx.io.out(_table(rows, ["NAME", "HEALTH", "CPU FREE", "GPU FREE", "MEMORY FREE", "NODES", "LATENCY",
                                 "LAST PROBE", "TAGS", "ERROR"]))
    else:
        ctx.io.err("no clusters")
    return OK


# ---- broker commands ------------------------------------------------------------------------


def _event_line(e: dict[str, Any]) -> str:
    key = str(e.get("event", ""))
    if key.startswith("job."):
        parts = [_short_ts(e.get("ts")), key, str(e.get("submission_id")), f"attempt {e.get('attempt', '-')}"]
        if e.get("final"):
            parts.append("final")
        if e.get("message"):
            parts.append(_clip(e["message"], 200))
        return "  ".join(parts)
    if key.startswith("cluster."):
        return "  ".join([_short_ts(e.get("ts")), key, *([_clip(e["message"], 200)] if e.get("message") else [])])
    extra = {k: v for k, v in e.items() if k != "event"}
    return f"{_short_ts(e.get('ts')) if e.get('ts') else '-'}  {key}  {_dumps(extra)}"


async def cmd_events(ctx: Ctx) -> int:
    a = ctx.args
    connection = await ctx.connect()
    async with connection:
        events = await _event_queue(ctx, connection, [a.pattern])
        deadline = None if a.timeout is None else time.monotonic() + a.timeout
        try:
            n = 0
            while a.count is None or n < a.count:
                try:
                    event = await _next(events, deadline)
                except (TimeoutError, asyncio.TimeoutError):
                    if a.count is None:
                        return OK
                    ctx.io.err(f"rmcs events: {n} of {a.count} events within {a.timeout:g}s")
                    return TIMED_OUT
                ctx.io.out(_dumps(event) if a.json else _event_line(event))
                n += 1
        finally:
            events.stop_watching()  # type: ignore[attr-defined]
    return OK


async def cmd_declare(ctx: Ctx) -> int:
    from dataclasses import replace

    from .broker import declare_topology

    s = replace(ctx.settings, amqp_url=ctx.amqp_url)
    connection = await ctx.connect()
    async with connection:
        try:
            await declare_topology(await connection.channel(), s)
        except aio_pika.exceptions.ChannelClosed as exc:
            raise CliError(JOB_FAILED, f"the broker refused the topology (an object exists with other "
                                       f"arguments?): {_describe(exc)}") from None
    ctx.io.out(f"declared on {ctx.broker_name}: exchange {s.intake_exchange} (direct), queue {s.intake_queue} "
               f"(key {s.intake_routing_key}, x-max-priority {s.max_priority}), exchange {s.dead_letter_exchange} "
               f"(fanout), queue {s.dead_letter_queue}, exchange {s.events_exchange} (topic)")
    return OK


COMMANDS = {"submit": cmd_submit, "list": cmd_list, "show": cmd_show, "logs": cmd_logs, "stop": cmd_stop,
            "clusters": cmd_clusters, "events": cmd_events, "declare": cmd_declare}


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    io = Io(stdout or sys.stdout, stderr or sys.stderr)
    if not logging.getLogger().handlers:  # a plain command line: no library log lines, only our messages
        for name in ("aio_pika", "aiormq", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad arguments (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE)
    try:
        ctx = Ctx(args, io)
        return asyncio.run(COMMANDS[args.command](ctx))
    except CliError as exc:
        io.err(f"rmcs {args.command}: {'error: ' if exc.code != JOB_FAILED else ''}{exc.message}")
        return exc.code
    except KeyboardInterrupt:
        io.err("rmcs: interrupted")
        return INTERRUPTED
    except BrokenPipeError:  # `rmcs events | head`
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return OK
    except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:  # the broker went away mid-command
        io.err(f"rmcs {args.command}: error: lost the broker: {_describe(exc)}")
        return UNREACHABLE
    except Exception as exc:  # a bug: say what, without a traceback
        io.err(f"rmcs {args.command}: internal error: {type(exc).__name__}: {exc}")
        return JOB_FAILED


if __name__ == "__main__":
    sys.exit(main())
