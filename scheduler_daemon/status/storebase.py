"""What the status cache needs of a database: the interface every store implements (the
embedded SQLite one in store.py; a server database's beside it)."""

from __future__ import annotations

import abc
from typing import Any, Mapping

from .records import JobStatus, ListQuery, LogTail, Page


class StatusStore(abc.ABC):
    """What the status cache needs of a database."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def apply(self, event: Mapping[str, Any]) -> bool:
        """Record one job event; True if it changed the job's current state."""

    @abc.abstractmethod
    async def get(self, submission_id: str, *, history: bool = True) -> JobStatus | None: ...

    @abc.abstractmethod
    async def list(self, query: ListQuery) -> Page: ...

    @abc.abstractmethod
    async def counts_by_state(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def open_jobs(self) -> list[JobStatus]:
        """Jobs whose current state is not final: what a reconcile looks at."""

    @abc.abstractmethod
    async def due_for_deletion(self, before: str, limit: int = 100) -> list[JobStatus]:
        """Final jobs last updated before `before`, still on their cluster."""

    @abc.abstractmethod
    async def mark_deleted(self, submission_id: str) -> None: ...

    @abc.abstractmethod
    async def postpone_deletion(self, submission_id: str, until: str) -> None:
        """A deletion failed: `due_for_deletion` passes over the job until `until`, so jobs
        that cannot be deleted never hold back the others."""

    @abc.abstractmethod
    async def prune(self, before: str, keep: int, limit: int = 1000) -> int:
        """Forget at most `limit` final jobs that are off their cluster (deleted there, or never
        dispatched): those last updated before `before`, then the oldest beyond the newest
        `keep` jobs. Returns how many were forgotten."""

    @abc.abstractmethod
    async def forget(self, submission_id: str) -> bool:
        """Forget a final job now (`DELETE /api/v1/jobs/<id>`): its record, history and kept
        log tail. False if there was no final job of that id."""

    @abc.abstractmethod
    async def set_cluster_health(self, cluster: str, health: str, ts: str, message: str | None) -> None: ...

    @abc.abstractmethod
    async def cluster_history(self, per_cluster: int = 20) -> dict[str, list[dict[str, Any]]]:
        """Each cluster's latest health changes, newest first."""

    @abc.abstractmethod
    async def activity(self, since: str) -> dict[str, int]:
        """Since an RFC 3339 time: jobs dispatched (`dispatched`) and jobs that ended (`finished`)."""

    @abc.abstractmethod
    async def put_report(self, name: str, body: bytes) -> None:
        """The scheduler's latest report `name` (its clusters, its metrics), replacing the last."""

    async def put_reports(self, reports: Mapping[str, bytes]) -> None:
        """Several reports at once (one write where the store can: the status process writes too)."""
        for name, body in reports.items():
            await self.put_report(name, body)

    @abc.abstractmethod
    async def report(self, name: str) -> tuple[bytes, float] | None:
        """The latest report `name` and when it was written (Unix time), or None."""

    @abc.abstractmethod
    async def put_log_tail(self, submission_id: str, attempt: int, cluster: str, tail: str, cut: bool) -> None:
        """The end of a job's logs, kept when it ended (scheduler_daemon/status/tails.py)."""

    @abc.abstractmethod
    async def log_tail(self, submission_id: str) -> LogTail | None: ...

    @abc.abstractmethod
    async def prune_log_tails(self, before: float) -> int:
        """Forget the tails kept before `before` (Unix time); how many."""

    @abc.abstractmethod
    async def put_package(self, name: str, data: bytes) -> bool:
        """Keep a job's code package (producers/packages.py) under its name; False if it was
        kept already. Every use (`package`) keeps it another `journal_retention_s`."""

    @abc.abstractmethod
    async def package(self, name: str) -> bytes | None: ...

    @abc.abstractmethod
    async def package_size(self, name: str) -> int | None: ...

    @abc.abstractmethod
    async def prune_packages(self, before: float) -> int:
        """Forget the packages not used since `before` (Unix time); how many."""

    async def leader(self) -> str | None:
        """The daemon that leads now (`host:pid`), where leadership is kept with the state; None
        where it is not (SQLite: the status service runs beside the leader only)."""
        return None
