"""Where every job's current state and history are kept.

`StatusStore` is the interface; `SqliteStatusStore` the embedded default (one worker
thread, WAL). A server database can implement the same interface later.

Applying events is idempotent and monotonic: a duplicate event changes nothing, and an
event older than what is known (out of order) is recorded in the history but never moves
the job's current state backwards.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import orjson

from ..dbthread import DbThread
from .storebase import StatusStore  # noqa: F401 (the interface, re-exported)
from .records import (HEALTH_KEPT, JOB_COLUMNS, RANK, STATES, BadQuery, ForeignOwner, JobStatus,  # noqa: F401
                      ListQuery, LogTail, Page, Transition, decode_cursor, encode_cursor, normal_ts, now_minus,
                      now_text, parse_event, status_of_row)

T = TypeVar("T")

# The reports the scheduler writes for the status service: its clusters (JSON), its metrics, and
# its window and queues (JSON: the jobs waiting in order, with why; messages waiting in RabbitMQ).
CLUSTERS_REPORT = "clusters"
QUEUES_REPORT = "queues"  # the scheduler's queues (docs/queues.md), for GET /api/v1/queues
METRICS_REPORT = "metrics"
SCHEDULER_REPORT = "scheduler"

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
CREATE TABLE IF NOT EXISTS cluster_health (
    cluster TEXT NOT NULL,
    health TEXT NOT NULL,
    ts TEXT NOT NULL,
    message TEXT,
    PRIMARY KEY (cluster, ts, health)
);
CREATE TABLE IF NOT EXISTS log_tails (
    submission_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    tail TEXT NOT NULL,
    cut INTEGER NOT NULL,
    kept REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    name TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    written REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS packages (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    used REAL NOT NULL
);
"""


class SqliteStatusStore(StatusStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = DbThread(path, "rmcs-status", _setup, synchronous="NORMAL")

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, read: bool = False) -> T:
        assert self._db.is_open, "store not open"
        return await self._db.run(fn, read=read)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def apply(self, event: Mapping[str, Any]) -> bool:
        e = parse_event(event)
        if e is None:
            return False
        sid, state, rank, attempt = e.submission_id, e.state, e.rank, e.attempt
        cluster, ts, message, final, priority = e.cluster, e.ts, e.message, e.final, e.priority
        job_id, owner, depends_on, queue = e.job_id, e.owner, e.depends_on, e.queue

        def _apply(db: sqlite3.Connection) -> bool:
            # A write first: it takes the write lock, waiting for it (a read first would make the
            # write fail at once when the other process wrote meanwhile). Undone if refused.
            db.execute("INSERT OR IGNORE INTO transitions VALUES (?,?,?,?,?,?)",
                       (sid, state, attempt, cluster, ts, message))
            row = db.execute("SELECT rank, attempt, final, owner, state, cluster FROM jobs WHERE submission_id = ?",
                             (sid,)).fetchone()
            if row is not None and row[3] is not None and owner is not None and row[3] != owner:
                if row[4] != "REJECTED" or row[5] is not None:
                    raise ForeignOwner(f"event of {owner!r} for {sid!r}, a job of {row[3]!r}")
                # A message refused at intake holds no id: the job that really has it replaces it.
                for table in ("jobs", "transitions", "job_tags"):
                    db.execute(f"DELETE FROM {table} WHERE submission_id = ?", (sid,))
                db.execute("INSERT INTO transitions VALUES (?,?,?,?,?,?)", (sid, state, attempt, cluster, ts, message))
                row = None
            if row is None:
                tags = list(e.tags)
                db.execute(
                    "INSERT INTO jobs (submission_id, job_id, state, rank, cluster, attempt, final, message,"
                    " priority, tags, metadata, resources, created, updated, owner, depends_on, queue)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (sid, job_id, state, rank, cluster, attempt, int(final), message,
                     priority, orjson.dumps(tags).decode(),
                     orjson.dumps(event.get("metadata") or {}).decode(),
                     orjson.dumps(event.get("resource_requirements") or {}).decode(), ts, ts, owner, depends_on,
                     queue))
                db.executemany("INSERT OR IGNORE INTO job_tags VALUES (?,?)", [(sid, t) for t in tags])
                changed = True
            else:
                cur_rank, cur_attempt, cur_final = row[:3]
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
            row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE submission_id = ?", (submission_id,)).fetchone()
            if row is None:
                return None
            steps: tuple[Transition, ...] = ()
            if history:
                rows = db.execute("SELECT state, attempt, cluster, ts, message FROM transitions"
                                  " WHERE submission_id = ?", (submission_id,)).fetchall()
                steps = tuple(sorted((Transition(*r) for r in rows), key=lambda t: (t.attempt, RANK[t.state], t.ts)))
            return status_of_row(row, steps)

        return await self._run(_get, read=True)

    async def list(self, query: ListQuery) -> Page:
        query = query.validate()

        def _list(db: sqlite3.Connection) -> Page:
            where, args = ["1=1"], []
            if query.cursor is not None:
                where.append("j.seq < ?" if query.newest_first else "j.seq > ?")
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
                args.append(normal_ts(query.since))
            if query.until:
                where.append("j.created < ?")
                args.append(normal_ts(query.until))
            rows = db.execute(
                f"SELECT {JOB_COLUMNS}, j.seq FROM jobs j WHERE {' AND '.join(where)}"
                f" ORDER BY j.seq {'DESC' if query.newest_first else 'ASC'} LIMIT ?",
                (*args, query.limit + 1)).fetchall()
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            jobs = [status_of_row(r[:-1], ()) for r in rows]
            return Page(jobs, encode_cursor(rows[-1][-1]) if more and rows else None)

        return await self._run(_list, read=True)

    async def counts_by_state(self) -> dict[str, int]:
        return await self._run(lambda db: dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")),
                               read=True)

    async def open_jobs(self) -> list[JobStatus]:
        return await self._run(lambda db: [
            status_of_row(r, ()) for r in db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE final = 0")])

    async def due_for_deletion(self, before: str, limit: int = 100) -> list[JobStatus]:
        now = now_text()
        return await self._run(lambda db: [
            status_of_row(r, ()) for r in db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE final = 1 AND deleted = 0 AND cluster IS NOT NULL"
                " AND updated < ? AND (retry_delete_at IS NULL OR retry_delete_at < ?) ORDER BY updated LIMIT ?",
                (normal_ts(before), now, limit))])

    async def postpone_deletion(self, submission_id: str, until: str) -> None:
        await self._run(lambda db: db.execute("UPDATE jobs SET retry_delete_at = ? WHERE submission_id = ?",
                                              (normal_ts(until), submission_id)))

    async def prune(self, before: str, keep: int, limit: int = 1000) -> int:
        gone = "final = 1 AND (deleted = 1 OR cluster IS NULL)"

        def _prune(db: sqlite3.Connection) -> int:
            db.execute("UPDATE jobs SET seq = seq WHERE 0")  # the write lock first (see apply)
            sids = [r[0] for r in db.execute(
                f"SELECT submission_id FROM jobs WHERE {gone} AND updated < ? ORDER BY seq LIMIT ?",
                (normal_ts(before), limit))]
            excess = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] - len(sids) - keep
            if excess > 0 and len(sids) < limit:
                sids += [r[0] for r in db.execute(
                    f"SELECT submission_id FROM jobs WHERE {gone} AND updated >= ? ORDER BY seq LIMIT ?",
                    (normal_ts(before), min(excess, limit - len(sids))))]
            for table in ("jobs", "transitions", "job_tags"):
                db.executemany(f"DELETE FROM {table} WHERE submission_id = ?", [(sid,) for sid in sids])
            return len(sids)

        return await self._run(_prune)

    async def mark_deleted(self, submission_id: str) -> None:
        await self._run(lambda db: db.execute("UPDATE jobs SET deleted = 1 WHERE submission_id = ?",
                                              (submission_id,)))

    async def forget(self, submission_id: str) -> bool:
        def _forget(db: sqlite3.Connection) -> bool:
            if not db.execute("DELETE FROM jobs WHERE submission_id = ? AND final = 1", (submission_id,)).rowcount:
                return False
            for table in ("transitions", "job_tags", "log_tails"):
                db.execute(f"DELETE FROM {table} WHERE submission_id = ?", (submission_id,))
            return True

        return await self._run(_forget)

    async def set_cluster_health(self, cluster: str, health: str, ts: str, message: str | None) -> None:
        def _set(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO clusters VALUES (?,?,?,?)", (cluster, health, ts, message))
            db.execute("INSERT OR IGNORE INTO cluster_health VALUES (?,?,?,?)", (cluster, health, ts, message))
            db.execute("DELETE FROM cluster_health WHERE cluster = ? AND ts < (SELECT ts FROM cluster_health"
                       " WHERE cluster = ? ORDER BY ts DESC LIMIT 1 OFFSET ?)", (cluster, cluster, HEALTH_KEPT - 1))

        await self._run(_set)

    async def cluster_history(self, per_cluster: int = 20) -> dict[str, list[dict[str, Any]]]:
        def _read(db: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            for cluster, health, ts, message in db.execute(
                    "SELECT cluster, health, ts, message FROM cluster_health ORDER BY cluster, ts DESC"):
                seen = out.setdefault(cluster, [])
                if len(seen) < per_cluster:
                    seen.append({"health": health, "ts": ts, "message": message})
            return out

        return await self._run(_read, read=True)

    async def activity(self, since: str) -> dict[str, int]:
        since = normal_ts(since)

        def _count(db: sqlite3.Connection) -> dict[str, int]:
            dispatched = db.execute("SELECT COUNT(*) FROM transitions WHERE state = 'DISPATCHED' AND ts >= ?",
                                    (since,)).fetchone()[0]
            finished = db.execute("SELECT COUNT(*) FROM jobs WHERE final = 1 AND updated >= ?", (since,)).fetchone()[0]
            return {"dispatched": int(dispatched), "finished": int(finished)}

        return await self._run(_count, read=True)

    async def put_report(self, name: str, body: bytes) -> None:
        written = time.time()
        await self._run(lambda db: db.execute("INSERT OR REPLACE INTO reports VALUES (?,?,?)",
                                              (name, body, written)))

    async def put_log_tail(self, submission_id: str, attempt: int, cluster: str, tail: str, cut: bool) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO log_tails VALUES (?,?,?,?,?,?) ON CONFLICT (submission_id) DO UPDATE SET"
            " attempt = excluded.attempt, cluster = excluded.cluster, tail = excluded.tail, cut = excluded.cut,"
            " kept = excluded.kept WHERE excluded.attempt >= log_tails.attempt",
            (submission_id, attempt, cluster, tail, int(cut), time.time())))

    async def log_tail(self, submission_id: str) -> LogTail | None:
        row = await self._run(lambda db: db.execute(
            "SELECT attempt, cluster, tail, cut FROM log_tails WHERE submission_id = ?", (submission_id,)).fetchone(),
            read=True)
        return LogTail(row[0], row[1], row[2], bool(row[3])) if row else None

    async def prune_log_tails(self, before: float) -> int:
        return await self._run(lambda db: db.execute("DELETE FROM log_tails WHERE kept < ?", (before,)).rowcount)
    async def put_reports(self, reports: Mapping[str, bytes]) -> None:
        written = time.time()
        rows = [(name, body, written) for name, body in reports.items()]
        await self._run(lambda db: db.executemany("INSERT OR REPLACE INTO reports VALUES (?,?,?)", rows))

    async def put_package(self, name: str, data: bytes) -> bool:
        return bool(await self._run(lambda db: db.execute(
            "INSERT OR IGNORE INTO packages VALUES (?,?,?)", (name, data, time.time())).rowcount))

    async def package(self, name: str) -> bytes | None:
        def _read(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT data FROM packages WHERE name = ?", (name,)).fetchone()
            if row is not None:
                db.execute("UPDATE packages SET used = ? WHERE name = ?", (time.time(), name))
            return None if row is None else bytes(row[0])

        return await self._run(_read)

    async def package_size(self, name: str) -> int | None:
        row = await self._run(lambda db: db.execute(
            "SELECT length(data) FROM packages WHERE name = ?", (name,)).fetchone(), read=True)
        return None if row is None else int(row[0])

    async def prune_packages(self, before: float) -> int:
        return await self._run(lambda db: db.execute("DELETE FROM packages WHERE used < ?", (before,)).rowcount)

    async def report(self, name: str) -> tuple[bytes, float] | None:
        def _read(db: sqlite3.Connection) -> tuple[bytes, float] | None:
            row = db.execute("SELECT body, written FROM reports WHERE name = ?", (name,)).fetchone()
            return None if row is None else (bytes(row[0]), float(row[1]))

        return await self._run(_read, read=True)


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a store from before owners
    if "retry_delete_at" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN retry_delete_at TEXT")  # a store from before retention retries
    db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)")
    db.execute("CREATE INDEX IF NOT EXISTS transitions_state ON transitions (state, ts)")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (final, updated)")
    if "depends_on" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN depends_on TEXT")  # a store from before depends_on
    if "queue" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN queue TEXT")  # a store from before queues
    db.execute("CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (queue, seq)")
