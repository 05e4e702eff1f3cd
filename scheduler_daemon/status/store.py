"""Where every job's current state and history are kept.

`StatusStore` is the interface; `SqliteStatusStore` the embedded default (one worker
thread, WAL). A server database can implement the same interface later.

Applying events is idempotent and monotonic: a duplicate event changes nothing, and an
event older than what is known (out of order) is recorded in the history but never moves
the job's current state backwards.
"""

from __future__ import annotations

import abc
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import orjson

from ..dbthread import DbThread
from .records import (RANK, STATES, BadQuery, JobStatus, ListQuery, Page, Transition,  # noqa: F401
                      decode_cursor, encode_cursor, now_minus, _norm)

T = TypeVar("T")

# The reports the scheduler writes for the status service: its clusters (JSON) and its metrics.
CLUSTERS_REPORT = "clusters"
QUEUES_REPORT = "queues"  # the scheduler's queues (docs/queues.md), for GET /api/v1/queues
METRICS_REPORT = "metrics"


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
    async def set_cluster_health(self, cluster: str, health: str, ts: str, message: str | None) -> None: ...

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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_id TEXT NOT NULL UNIQUE,
    job_id TEXT,
    state TEXT NOT NULL,
    rank INTEGER NOT NULL,
    cluster TEXT,
    attempt INTEGER NOT NULL,
    final INTEGER NOT NULL,
    message TEXT,
    priority INTEGER,
    tags TEXT NOT NULL,
    metadata TEXT NOT NULL,
    resources TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_cluster ON jobs (cluster, seq);
CREATE INDEX IF NOT EXISTS jobs_final ON jobs (final, deleted, updated);
CREATE TABLE IF NOT EXISTS job_tags (
    submission_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (tag, submission_id)
);
CREATE TABLE IF NOT EXISTS transitions (
    submission_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    cluster TEXT,
    ts TEXT NOT NULL,
    message TEXT,
    PRIMARY KEY (submission_id, attempt, state)
);
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY,
    health TEXT NOT NULL,
    ts TEXT NOT NULL,
    message TEXT
);
CREATE TABLE IF NOT EXISTS reports (
    name TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    written REAL NOT NULL
);
"""


class SqliteStatusStore(StatusStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = DbThread(path, "rmcs-status", _setup)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, read: bool = False) -> T:
        assert self._db.is_open, "store not open"
        return await self._db.run(fn, read=read)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def apply(self, event: Mapping[str, Any]) -> bool:
        sid = event.get("submission_id")
        state = str(event.get("state", "")).upper()
        if not isinstance(sid, str) or state not in RANK:
            return False
        attempt = int(event.get("attempt") or 1)  # ValueError for a foreign shape: the caller drops it
        cluster = _opt_text(event.get("cluster"))
        ts = str(event.get("ts") or _now())
        message = _opt_text(event.get("message"))
        final = bool(event.get("final"))
        priority = event.get("priority") if isinstance(event.get("priority"), int) else None
        job_id = _opt_text(event.get("job_id"))
        owner = _opt_text(event.get("owner"))
        queue = _opt_text(event.get("queue"))

        def _apply(db: sqlite3.Connection) -> bool:
            db.execute("INSERT OR IGNORE INTO transitions VALUES (?,?,?,?,?,?)",
                       (sid, state, attempt, cluster, ts, message))
            row = db.execute("SELECT rank, attempt, final FROM jobs WHERE submission_id = ?", (sid,)).fetchone()
            rank = RANK[state]
            if row is None:
                tags = [t for t in event.get("tags") or [] if isinstance(t, str)]
                db.execute(
                    "INSERT INTO jobs (submission_id, job_id, state, rank, cluster, attempt, final, message,"
                    " priority, tags, metadata, resources, created, updated, owner, queue)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (sid, job_id, state, rank, cluster, attempt, int(final), message,
                     priority, orjson.dumps(tags).decode(),
                     orjson.dumps(event.get("metadata") or {}).decode(),
                     orjson.dumps(event.get("resource_requirements") or {}).decode(), ts, ts, owner, queue))
                db.executemany("INSERT OR IGNORE INTO job_tags VALUES (?,?)", [(sid, t) for t in tags])
                changed = True
            else:
                cur_rank, cur_attempt, cur_final = row
                newer = (attempt, rank) > (cur_attempt, cur_rank)
                if newer and not cur_final:
                    db.execute(
                        "UPDATE jobs SET state=?, rank=?, cluster=COALESCE(?, cluster), attempt=?, final=?,"
                        " message=?, updated=?, job_id=COALESCE(job_id, ?), owner=COALESCE(owner, ?),"
                        " queue=COALESCE(queue, ?) WHERE submission_id=?",
                        (state, rank, cluster, attempt, int(final), message, ts, job_id, owner, queue, sid))
                    changed = True
                else:
                    changed = False
            return changed

        return await self._run(_apply)

    async def get(self, submission_id: str, *, history: bool = True) -> JobStatus | None:
        def _get(db: sqlite3.Connection) -> JobStatus | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE submission_id = ?", (submission_id,)).fetchone()
            if row is None:
                return None
            steps: tuple[Transition, ...] = ()
            if history:
                rows = db.execute("SELECT state, attempt, cluster, ts, message FROM transitions"
                                  " WHERE submission_id = ?", (submission_id,)).fetchall()
                steps = tuple(sorted((Transition(*r) for r in rows), key=lambda t: (t.attempt, RANK[t.state], t.ts)))
            return _status(row, steps)

        return await self._run(_get, read=True)

    async def list(self, query: ListQuery) -> Page:
        query = query.validate()

        def _list(db: sqlite3.Connection) -> Page:
            where, args = ["1=1"], []
            if query.cursor is not None:
                where.append("j.seq > ?")
                args.append(decode_cursor(query.cursor))
            if query.state:
                where.append("j.state = ?")
                args.append(query.state.upper())
            if query.cluster:
                where.append("j.cluster = ?")
                args.append(query.cluster)
            if query.owner:
                where.append("j.owner = ?")
                args.append(query.owner)
            if query.queue:  # a row from before queues has none: it was in `default`
                where.append("(j.queue = ? OR (j.queue IS NULL AND ? = 'default'))")
                args.extend((query.queue, query.queue))
            if query.tag:
                where.append("EXISTS (SELECT 1 FROM job_tags t WHERE t.tag = ? AND t.submission_id = j.submission_id)")
                args.append(query.tag)
            if query.since:
                where.append("j.created >= ?")
                args.append(_norm(query.since))
            if query.until:
                where.append("j.created < ?")
                args.append(_norm(query.until))
            rows = db.execute(
                f"SELECT {_COLUMNS}, j.seq FROM jobs j WHERE {' AND '.join(where)} ORDER BY j.seq LIMIT ?",
                (*args, query.limit + 1)).fetchall()
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            jobs = [_status(r[:-1], ()) for r in rows]
            return Page(jobs, encode_cursor(rows[-1][-1]) if more and rows else None)

        return await self._run(_list, read=True)

    async def counts_by_state(self) -> dict[str, int]:
        return await self._run(lambda db: dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")),
                               read=True)

    async def open_jobs(self) -> list[JobStatus]:
        return await self._run(lambda db: [
            _status(r, ()) for r in db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE final = 0")])

    async def due_for_deletion(self, before: str, limit: int = 100) -> list[JobStatus]:
        return await self._run(lambda db: [
            _status(r, ()) for r in db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE final = 1 AND deleted = 0 AND cluster IS NOT NULL"
                " AND updated < ? LIMIT ?", (_norm(before), limit))])

    async def mark_deleted(self, submission_id: str) -> None:
        await self._run(lambda db: db.execute("UPDATE jobs SET deleted = 1 WHERE submission_id = ?",
                                              (submission_id,)))

    async def set_cluster_health(self, cluster: str, health: str, ts: str, message: str | None) -> None:
        await self._run(lambda db: db.execute("INSERT OR REPLACE INTO clusters VALUES (?,?,?,?)",
                                              (cluster, health, ts, message)))

    async def put_report(self, name: str, body: bytes) -> None:
        written = time.time()
        await self._run(lambda db: db.execute("INSERT OR REPLACE INTO reports VALUES (?,?,?)",
                                              (name, body, written)))

    async def put_reports(self, reports: Mapping[str, bytes]) -> None:
        written = time.time()
        rows = [(name, body, written) for name, body in reports.items()]
        await self._run(lambda db: db.executemany("INSERT OR REPLACE INTO reports VALUES (?,?,?)", rows))

    async def report(self, name: str) -> tuple[bytes, float] | None:
        def _read(db: sqlite3.Connection) -> tuple[bytes, float] | None:
            row = db.execute("SELECT body, written FROM reports WHERE name = ?", (name,)).fetchone()
            return None if row is None else (bytes(row[0]), float(row[1]))

        return await self._run(_read, read=True)


_COLUMNS = ("submission_id, job_id, state, cluster, attempt, final, message, priority, tags, metadata,"
            " resources, created, updated, deleted, owner, COALESCE(queue, 'default')")


def _status(row: tuple[Any, ...], steps: tuple[Transition, ...]) -> JobStatus:
    (sid, job_id, state, cluster, attempt, final, message, priority, tags, metadata, resources,
     created, updated, deleted, owner, queue) = row
    return JobStatus(sid, job_id, state, cluster, attempt, bool(final), message, priority,
                     tuple(orjson.loads(tags)), orjson.loads(metadata), orjson.loads(resources),
                     created, updated, bool(deleted), steps, owner, queue)


def _opt_text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


def _now() -> str:
    from .. import events

    return events.now_rfc3339()


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a store from before owners
    db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)")
    if "queue" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN queue TEXT")  # a store from before queues
    db.execute("CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (queue, seq)")
