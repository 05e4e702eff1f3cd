"""What the job book needs of a journal, whatever keeps it: `journal.Journal` (SQLite, one
host) or `pgjournal.PgJournal` (PostgreSQL, shared by daemons on several hosts)."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import Any, Callable

import orjson

from .jobs import Job
from .tracking import Tracked


@dataclass(frozen=True)
class Lookup:
    """All the journal knows of one submission id: its dispatch record, its end before
    dispatch (state, reason), and a stop recorded before it arrived."""

    tracked: Tracked | None
    ended: tuple[str, str] | None
    cancellation: tuple[str, str | None] | None  # (reason, requester)
    intent: tuple[str, int] | None = None  # (cluster, attempt): sent there, or about to be, not journaled


EMPTY = Lookup(None, None, None)


def job_to_json(job: Job) -> str:
    data = asdict(job)
    data["body"] = job.body.decode("utf-8", errors="replace")
    data["cluster_tags"] = sorted(job.cluster_tags)
    return orjson.dumps(data).decode()


def job_from_json(text: str) -> Job:
    data: dict[str, Any] = orjson.loads(text)
    data["body"] = data["body"].encode()
    data["cluster_tags"] = frozenset(data["cluster_tags"])
    data["tags"] = tuple(data["tags"])
    data["depends_on"] = tuple(data.get("depends_on", ()))
    return Job(**data)


class JournalStore(abc.ABC):
    """The durable record of every dispatched job (see `journal`). With fencing (`epoch` set by
    the leadership), every write carries the leader's epoch and a stale one is refused."""

    epoch: int | None = None
    # Whether a redelivered job without an intent was surely never sent (write-ahead dispatch); if
    # not, it is looked for on every cluster first (intents from before a crash may be lost).
    intents_trusted: bool = True
    on_fenced: Callable[[Exception], None] = staticmethod(lambda exc: None)  # type: ignore[assignment]

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def record(self, t: Tracked) -> None:
        """Write a job's record; never over a later attempt's."""

    @abc.abstractmethod
    async def get(self, submission_id: str) -> Tracked | None: ...

    @abc.abstractmethod
    async def lookup(self, submission_id: str) -> Lookup: ...

    @abc.abstractmethod
    async def open_jobs(self) -> list[Tracked]:
        """Jobs still to follow, or whose last event was not confirmed."""

    @abc.abstractmethod
    async def cancel(self, submission_id: str, reason: str, requester: str | None = None) -> None: ...

    @abc.abstractmethod
    async def end(self, submission_id: str, state: str, reason: str) -> None: ...

    @abc.abstractmethod
    async def prune(self, before: float) -> int: ...

    async def fence(self) -> None:
        """Raise (`pgbase.Fenced`) unless this daemon's epoch is still the leader's: checked before
        a write outside the store that matters (a stop sent to Ray). Nothing to check by default."""

    # ---- write-ahead dispatch (scheduling.py) and LOST attempts (zombies.py) ----------------

    @abc.abstractmethod
    async def intend(self, job: Job, cluster: str) -> None:
        """Before the POST: this attempt goes to `cluster`. The job's next record clears it; until
        then a redelivered copy is looked for on that cluster (and only there) before anywhere else."""

    @abc.abstractmethod
    async def remember_lost(self, ray_id: str, cluster: str, submission_id: str) -> None:
        """An attempt declared LOST: stopped on its cluster when the cluster comes back."""

    @abc.abstractmethod
    async def lost_attempts(self) -> list[tuple[str, str]]:
        """(Ray submission id, cluster) of each LOST attempt not yet stopped."""

    @abc.abstractmethod
    async def forget_lost(self, ray_id: str) -> None: ...
