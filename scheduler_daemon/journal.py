"""The daemon's durable record of every job it has dispatched, in SQLite.

A message is acknowledged only after its job is written here, so after a crash the
daemon knows every job that left the queue: it resumes tracking them, re-publishes any
event the broker had not confirmed, and recognises a redelivered message as a job it
already dispatched. SQLite runs on one worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import orjson

from .jobs import Job, JobState

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracked (
    submission_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    node_id TEXT NOT NULL,
    state TEXT NOT NULL,
    published INTEGER NOT NULL,
    final INTEGER NOT NULL,
    seen_running INTEGER NOT NULL,
    job TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tracked_open ON tracked (final, published);
CREATE TABLE IF NOT EXISTS ended (
    submission_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cancellations (
    submission_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    ts REAL NOT NULL,
    requester TEXT
);
"""


@dataclass(frozen=True)
class Tracked:
    """A dispatched job: where it went and the last state the daemon gave it."""

    job: Job
    cluster: str
    node_id: str
    state: JobState
    published: bool = False
    final: bool = False
    seen_running: bool = False

    def moved(self, state: JobState, *, final: bool = False) -> "Tracked":
        return replace(self, state=state, published=False, final=final,
                       seen_running=self.seen_running or state == JobState.RUNNING)


@dataclass(frozen=True)
class Lookup:
    """All the journal knows of one submission id: its dispatch record, its end before
    dispatch (state, reason), and a stop recorded before it arrived."""

    tracked: Tracked | None
    ended: tuple[str, str] | None
    cancellation: tuple[str, str | None] | None  # (reason, requester)


def _job_to_json(job: Job) -> str:
    data = asdict(job)
    data["body"] = job.body.decode("utf-8", errors="replace")
    data["cluster_tags"] = sorted(job.cluster_tags)
    return orjson.dumps(data).decode()


def _job_from_json(text: str) -> Job:
    data: dict[str, Any] = orjson.loads(text)
    data["body"] = data["body"].encode()
    data["cluster_tags"] = frozenset(data["cluster_tags"])
    data["tags"] = tuple(data["tags"])
    return Job(**data)


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmcs-journal")
        self._db: sqlite3.Connection | None = None
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._busy = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _do(self, op: Callable[[sqlite3.Connection], T]) -> "asyncio.Future[T]":
        """Queue one operation on the database; it resolves once its transaction has committed.
        Operations queued while the thread is busy go together in the next transaction (group
        commit): a burst costs one commit instead of one each, and nothing is acknowledged to
        the caller before it is durable."""
        assert self._db is not None
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((op, future))
        self._next_batch()
        return future

    def _next_batch(self) -> None:
        if self._busy or not self._queued:
            return
        batch, self._queued = self._queued, []
        self._busy = True
        done = asyncio.get_running_loop().run_in_executor(self._pool, _transaction, self._db, [op for op, _ in batch])

        def resolve(done: "asyncio.Future[list[tuple[bool, Any]]]") -> None:
            self._busy = False
            error = done.exception()
            for i, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    ok, value = done.result()[i]
                    future.set_result(value) if ok else future.set_exception(value)
            self._next_batch()

        done.add_done_callback(resolve)

    async def open(self) -> None:
        def _open() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process
            db.executescript(_SCHEMA)
            if "requester" not in {row[1] for row in db.execute("PRAGMA table_info(cancellations)")}:
                db.execute("ALTER TABLE cancellations ADD COLUMN requester TEXT")  # a journal from before owners
            return db

        self._db = await self._run(_open)

    async def close(self) -> None:
        if self._db is not None:
            await self._do(lambda db: None)  # after everything queued before it
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)

    async def record(self, t: Tracked) -> None:
        def _write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO tracked VALUES (?,?,?,?,?,?,?,?,?,?)",
                (t.job.submission_id, t.job.attempt, t.cluster, t.node_id, t.state.value,
                 int(t.published), int(t.final), int(t.seen_running), _job_to_json(t.job), time.time()),
            )

        assert self._db is not None
        await self._do(_write)

    async def get(self, submission_id: str) -> Tracked | None:
        def _read(db: sqlite3.Connection) -> Tracked | None:
            row = db.execute("SELECT * FROM tracked WHERE submission_id = ?", (submission_id,)).fetchone()
            return _row(row) if row else None

        assert self._db is not None
        return await self._do(_read)

    async def lookup(self, submission_id: str) -> Lookup:
        """All the journal knows of one id (dispatch record, end before dispatch, recorded stop) in one
        trip to the journal's thread."""
        def _read(db: sqlite3.Connection) -> Lookup:
            row = db.execute("SELECT * FROM tracked WHERE submission_id = ?", (submission_id,)).fetchone()
            ended = db.execute("SELECT state, reason FROM ended WHERE submission_id = ?", (submission_id,)).fetchone()
            cancel = db.execute("SELECT reason, requester FROM cancellations WHERE submission_id = ?",
                                (submission_id,)).fetchone()
            return Lookup(_row(row) if row else None, (ended[0], ended[1]) if ended else None,
                          (cancel[0], cancel[1]) if cancel else None)

        assert self._db is not None
        return await self._do(_read)

    async def open_jobs(self) -> list[Tracked]:
        """Jobs still to follow, or whose last event was not confirmed."""
        def _read(db: sqlite3.Connection) -> list[Tracked]:
            rows = db.execute("SELECT * FROM tracked WHERE final = 0 OR published = 0").fetchall()
            return [_row(r) for r in rows]

        assert self._db is not None
        return await self._do(_read)

    async def cancel(self, submission_id: str, reason: str, requester: str | None = None) -> None:
        """Record a stop for a job the daemon has not received yet (durable). `requester`: the
        user who asked, whose jobs only it cancels; None for an admin's, which cancels any."""
        assert self._db is not None
        await self._do(lambda db: db.execute(
            "INSERT OR REPLACE INTO cancellations (submission_id, reason, ts, requester) VALUES (?,?,?,?)",
            (submission_id, reason, time.time(), requester)))

    async def end(self, submission_id: str, state: str, reason: str) -> None:
        """Record that a job ended before dispatch (REJECTED, CANCELLED, EXPIRED), before its
        message is acknowledged: a redelivered copy then ends the same way, never runs."""
        assert self._db is not None
        await self._do(lambda db: db.execute("INSERT OR REPLACE INTO ended VALUES (?,?,?,?)",
                                              (submission_id, state, reason, time.time())))

    async def prune(self, before: float) -> int:
        """Forget jobs that ended, and whose end was published, before `before` (unix time),
        and cancellations recorded before it."""
        def _delete(db: sqlite3.Connection) -> int:
            cur = db.execute("DELETE FROM tracked WHERE final = 1 AND published = 1 AND updated < ?", (before,))
            db.execute("DELETE FROM cancellations WHERE ts < ?", (before,))
            db.execute("DELETE FROM ended WHERE ts < ?", (before,))
            return cur.rowcount

        assert self._db is not None
        return await self._do(_delete)


def _transaction(db: sqlite3.Connection, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
    """Run `ops` in one transaction; each op's (ok, result or exception). An op that fails
    leaves the others' work in place (SQLite undoes only its failing statement)."""
    results: list[tuple[bool, Any]] = []
    db.execute("BEGIN")
    try:
        for op in ops:
            try:
                results.append((True, op(db)))
            except Exception as exc:
                results.append((False, exc))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


def _row(row: tuple[Any, ...]) -> Tracked:
    sid, attempt, cluster, node_id, state, published, final, seen_running, job, _ = row
    return Tracked(_job_from_json(job), cluster, node_id, JobState(state), bool(published),
                   bool(final), bool(seen_running))
