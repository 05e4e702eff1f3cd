"""The `rmcs` arguments: one parser with a subcommand each, and the argument types that turn
bad input into exit 2 before anything is sent."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Callable

from producers.schema import PRIORITY_NAMES, SUBMISSION_ID
from producers.wire import JobState

STATES = tuple(s.value for s in JobState)
EPILOG = """exit codes: 0 ok, 1 the job ended badly or the request was refused, 2 bad arguments,
3 broker or API unreachable, 4 unknown job, 5 timed out waiting, 130 interrupted.
environment: RMCS_AMQP_URL, RMCS_HTTP_ADDR and every other RMCS_<SETTING> of the daemon;
RMCS_API_TOKEN, the bearer token for a daemon with api_tokens_file."""


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
                   help="the job's identity (1 to 128 of [A-Za-z0-9._-], not only dots); default sub_<uuid>")
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
    p.add_argument("--queue", metavar="NAME", help="the queue to submit to (docs/queues.md; default: default)")
    p.add_argument("--queue-timeout", type=_positive_float, metavar="SECONDS",
                   help="expire the job if it is not dispatched within this time")
    p.add_argument("--after", action="append", default=[], metavar="ID",
                   help="run only after the job ID has SUCCEEDED (repeatable; depends_on)")
    p.add_argument("--run-timeout", type=_positive_float, metavar="SECONDS",
                   help="stop the job once it has been RUNNING this long (run_timeout_s)")
    p.add_argument("--runtime-env", metavar="JSON",
                   help="Ray runtime environment as JSON, or @FILE (JSON or YAML)")
    p.add_argument("--working-dir", metavar="DIR",
                   help="run in a copy of this local directory (or .zip), uploaded through rmcs to the job's "
                        "cluster; relative paths in the entrypoint name its files")
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
                "  rmcs list --owner svc-train --queue research\n"
                "  rmcs list --tag training --since 2h --all --json")
    p.add_argument("--state", type=_state, help="only jobs in this state")
    p.add_argument("--cluster", help="only jobs on this cluster")
    p.add_argument("--tag", help="only jobs with this tag")
    p.add_argument("--owner", help="only jobs submitted by this broker user")
    p.add_argument("--queue", help="only jobs of this queue")
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

    p = command("delete", "delete a job that ended, from its cluster and from rmcs (HTTP API)",
                "Delete a job that has ended: each attempt's Ray job from its cluster, then its record,\n"
                "history and kept log tail. Only its owner or an admin; a job still running is refused\n"
                "(stop it first).",
                "  rmcs delete train-42")
    p.add_argument("submission_id", type=_submission_id, metavar="ID")

    p = command("queues", "show the queues: settings, what each holds, who waits (HTTP API)",
                "Show each queue as the scheduler last reported it: weight, guaranteed, limit, max_running, "
                "resources held, jobs running and waiting (in the daemon and in RabbitMQ), dominant share.",
                "  rmcs queues\n  rmcs queues --json")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
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

    p = command("declare", "declare the broker topology",
                "Declare the exchanges and queues of the wire contract (idempotent), so producers can\n"
                "publish before the daemon first runs. With --policies, the RabbitMQ policies that bound\n"
                "unread event queues and the dead-letter queue (docs/security.md): printed as definitions\n"
                "for an admin, or applied here with rabbitmqctl.",
                "  rmcs declare\n  rmcs declare --config rmcs.yaml\n  rmcs declare --policies print --vhost rmcs")
    p.add_argument("--policies", choices=("print", "apply"), default=None,
                   help="print the queue-bounding policies as RabbitMQ definitions, or apply them with rabbitmqctl")
    p.add_argument("--vhost", default="/", help="the vhost of the policies (default: /)")
    p = command("recover", "rebuild a lost journal from the clusters",
                "Read every cluster's job list and journal each rmcs job that has not ended (its latest\n"
                "attempt, with its owner and max_retries from Ray's job metadata), so the daemon follows it\n"
                "to its end. Run it on the daemon's host with its settings, before the daemon starts.",
                "  rmcs recover --clusters clusters.yaml --config rmcs.yaml")
    p.add_argument("--clusters", default="clusters.yaml", metavar="YAML", help="the daemon's clusters file")
    return parser
