"""What the status cache holds and answers, as typed records: a job's status and history, a
page of jobs, a list query (validated) and its cursor. Pure."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

# Order of states within one attempt; a later attempt always wins over an earlier one.
RANK = {"ACCEPTED": 1, "WAITING": 1.5, "DISPATCHED": 2, "RUNNING": 3, "SUCCEEDED": 4, "FAILED": 4, "STOPPED": 4,
        "LOST": 4, "REJECTED": 4, "CANCELLED": 4, "EXPIRED": 4, "RETRYING": 5, "PREEMPTED": 5}
STATES = frozenset(RANK)


HEALTH_KEPT = 100  # health changes kept per cluster

# A job's columns as both stores read them, in `status_of_row`'s order.
JOB_COLUMNS = ("submission_id, job_id, state, cluster, attempt, final, message, priority, tags, metadata,"
               " resources, created, updated, deleted, owner, depends_on, COALESCE(queue, 'default')")


class ForeignOwner(Exception):
    """An event whose owner is not the owner recorded for its job: not applied."""


class BadQuery(ValueError):
    """A list query that cannot be answered; the message says which parameter is wrong."""


@dataclass(frozen=True)
class Transition:
    state: str
    attempt: int
    cluster: str | None
    ts: str
    message: str | None


@dataclass(frozen=True)
class JobStatus:
    submission_id: str
    job_id: str | None
    state: str
    cluster: str | None
    attempt: int
    final: bool
    message: str | None
    priority: int | None
    tags: tuple[str, ...]
    metadata: Mapping[str, str]
    resource_requirements: Mapping[str, float]
    created: str
    updated: str
    deleted_from_cluster: bool = False
    transitions: tuple[Transition, ...] = field(default_factory=tuple)
    owner: str | None = None  # the broker user that submitted it (docs/security.md)
    depends_on: tuple[str, ...] = ()  # run only after each of these SUCCEEDED
    queue: str = "default"    # its queue (docs/queues.md)

    def to_json(self) -> dict[str, Any]:
        return {
            "submission_id": self.submission_id,
            "job_id": self.job_id,
            "owner": self.owner,
            "queue": self.queue,
            "depends_on": list(self.depends_on),
            "state": self.state,
            "cluster": self.cluster,
            "attempt": self.attempt,
            "final": self.final,
            "message": self.message,
            "priority": self.priority,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "resource_requirements": dict(self.resource_requirements),
            "created": self.created,
            "updated": self.updated,
            "deleted_from_cluster": self.deleted_from_cluster,
            "transitions": [t.__dict__ for t in self.transitions],
        }


@dataclass(frozen=True)
class LogTail:
    """The end of a job's logs as kept when its attempt `attempt` ended on `cluster`."""

    attempt: int
    cluster: str
    text: str
    cut: bool  # only the end of longer logs


@dataclass(frozen=True)
class Page:
    jobs: list[JobStatus]
    next_cursor: str | None


@dataclass(frozen=True)
class ListQuery:
    state: str | None = None
    cluster: str | None = None
    tag: str | None = None
    owner: str | None = None
    queue: str | None = None
    since: str | None = None      # RFC 3339, on the job's creation time
    until: str | None = None
    limit: int = 100
    cursor: str | None = None
    newest_first: bool = False    # the dashboard's order; the API pages oldest first

    def validate(self) -> "ListQuery":
        if self.state is not None and self.state.upper() not in STATES:
            raise BadQuery(f"state must be one of {', '.join(sorted(STATES))}")
        if not 1 <= self.limit <= 1000:
            raise BadQuery("limit must be between 1 and 1000")
        if self.cursor is not None:
            decode_cursor(self.cursor)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                _check_time(value, name)
        return self


def _check_time(value: str, name: str) -> None:
    try:
        normal_ts(value)
    except (ValueError, OverflowError):
        raise BadQuery(f"{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z") from None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, seq = raw.partition(":")
        if version != "v1" or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
            raise ValueError
        return int(seq)
    except (ValueError, UnicodeDecodeError):
        raise BadQuery("cursor is not one this API gave out") from None


def normal_ts(ts: str) -> str:
    """Times are stored as RFC 3339 UTC with milliseconds and Z, so they sort as text."""
    from datetime import datetime, timezone

    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_minus(seconds: float) -> str:
    from datetime import datetime, timezone

    return normal_ts(datetime.fromtimestamp(time.time() - seconds, timezone.utc).isoformat())


@dataclass(frozen=True)
class StatusEvent:
    """A job event as a status store takes it: parsed once, the same for both stores."""
    submission_id: str
    state: str
    rank: float
    attempt: int
    cluster: str | None
    ts: str
    message: str | None
    final: bool
    priority: int | None
    job_id: str | None
    owner: str | None
    depends_on: str | None  # a JSON list, when the event names its dependencies
    queue: str | None
    tags: tuple[str, ...]


def parse_event(event: Mapping[str, Any]) -> StatusEvent | None:
    """None for what is not a job event; ValueError for a foreign shape (the caller drops it)."""
    sid = event.get("submission_id")
    state = str(event.get("state", "")).upper()
    if not isinstance(sid, str) or state not in RANK:
        return None
    deps = event.get("depends_on")
    priority = event.get("priority")
    return StatusEvent(
        submission_id=sid, state=state, rank=RANK[state], attempt=int(event.get("attempt") or 1),
        cluster=_opt_text(event.get("cluster")), ts=str(event.get("ts") or now_text()),
        message=_opt_text(event.get("message")), final=bool(event.get("final")),
        priority=priority if isinstance(priority, int) else None, job_id=_opt_text(event.get("job_id")),
        owner=_opt_text(event.get("owner")),
        depends_on=orjson.dumps([d for d in deps if isinstance(d, str)]).decode() if isinstance(deps, list) else None,
        queue=_opt_text(event.get("queue")), tags=tuple(t for t in event.get("tags") or [] if isinstance(t, str)))


def status_of_row(row: tuple[Any, ...], steps: tuple[Transition, ...]) -> JobStatus:
    """A job's status from its `JOB_COLUMNS` and its transitions."""
    (sid, job_id, state, cluster, attempt, final, message, priority, tags, metadata, resources,
     created, updated, deleted, owner, depends_on, queue) = row
    return JobStatus(sid, job_id, state, cluster, attempt, bool(final), message, priority,
                     tuple(orjson.loads(tags)), orjson.loads(metadata), orjson.loads(resources),
                     created, updated, bool(deleted), steps, owner, tuple(orjson.loads(depends_on or "[]")), queue)


def now_text() -> str:
    """Now, as the events write their `ts` (RFC 3339, milliseconds, Z)."""
    return now_minus(0.0)


def _opt_text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)
