"""The daemon's durable record of every job it has dispatched, in SQLite.

A message is acknowledged only after its job is written here, so after a crash the
daemon knows every job that left the queue: it resumes tracking them, re-publishes any
event the broker had not confirmed, and recognises a redelivered message as a job it
already dispatched. SQLite runs on a thread of its own, with group commit (`dbthread`).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from .dbthread import DbThread
from .intentfile import IntentFile
from .jobs import Job, JobState
from .journal_base import EMPTY as _EMPTY, JournalStore, Lookup, job_from_json, job_to_json
from .tracking import Tracked

__all__ = ["IdFilter", "Journal", "Lookup"]

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
CREATE TABLE IF NOT EXISTS intents  -- before intentfile.py; moved there at open
(
    submission_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lost_attempts (
    ray_id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cancellations (
    submission_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    ts REAL NOT NULL,
    requester TEXT
);
"""


_job_to_json, _job_from_json = job_to_json, job_from_json


class IdFilter:
    """The submission ids the journal holds, as a Bloom filter: "not here" is certain, "here"
    may be wrong now and then (about 1% at capacity). It spares the hot path a trip to the
    journal's thread for a new id, in about 1.2 bytes per id."""

    HASHES = 7

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1024)
        self._bits = bytearray(self.capacity * 10 // 8 + 1)
        self._m = len(self._bits) * 8
        self.count = 0

    def _positions(self, item: str) -> Iterator[int]:
        digest = hashlib.blake2b(item.encode(), digest_size=16).digest()
        a, b = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
        return ((a + i * b) % self._m for i in range(self.HASHES))

    def add(self, item: str) -> None:
        for pos in self._positions(item):
            self._bits[pos >> 3] |= 1 << (pos & 7)
        self.count += 1

    def __contains__(self, item: str) -> bool:
        return all(self._bits[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(item))


_ALL_IDS = ("SELECT submission_id FROM tracked UNION SELECT submission_id FROM ended"
            " UNION SELECT submission_id FROM cancellations")


class Journal(JournalStore):
    """`exclusive`: this process is the journal's only writer, so it may keep a filter of the
    ids in it (not with a failover pair, whose other daemon writes to the same file)."""

    def __init__(self, path: str | Path, *, exclusive: bool = True) -> None:
        self.path = Path(path)
        self._db = DbThread(path, "rmcs-journal", _setup)
        self._intents = IntentFile(self.path.with_suffix(".intents" + self.path.suffix))
        self._exclusive = exclusive
        self._ids: IdFilter | None = None
        self._seen_while_rebuilding: list[str] | None = None
        # The job's JSON as last written, per open record: a job is written once per change of
        # state (five or six times), and the job itself changes only with a new attempt.
        self._job_json: dict[str, tuple[Job, str]] = {}

    async def open(self) -> None:
        await self._db.open()
        self.intents_trusted = await self._db.run(_mark_open)
        self._intents.open()
        for sid, attempt, cluster in await self._db.run(_take_old_intents):
            self._intents.put(sid, attempt, cluster)
        for sid in list(self._intents.live):
            t = await self.get(sid)
            if t is not None:  # written after its record, before a crash could clear it
                self._intents.clear(sid, t.job.attempt)
        if self._exclusive:
            self._ids = await self._db.run(_id_filter, read=True)
            for sid in self._intents.live:
                self._ids.add(sid)

    async def close(self) -> None:
        if self._db.is_open:  # a clean stop: committed with FULL, after (and so with) every write before it
            await self._db.run(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')"))
        await self._db.close()
        self._intents.close()

    def _saw(self, submission_id: str) -> None:
        if self._ids is not None:
            self._ids.add(submission_id)
        if self._seen_while_rebuilding is not None:
            self._seen_while_rebuilding.append(submission_id)

    async def record(self, t: Tracked) -> None:
        """Write a job's record; never over a later attempt's (a retry may be dispatched while
        the attempt before it is still being closed)."""
        self._saw(t.job.submission_id)
        cached = self._job_json.get(t.job.submission_id)
        if cached is not None and cached[0] is t.job:
            job_json = cached[1]
        else:
            job_json = job_to_json(t.job)
        if t.final and t.published:
            self._job_json.pop(t.job.submission_id, None)
        else:
            self._job_json[t.job.submission_id] = (t.job, job_json)

        def _write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO tracked (submission_id, attempt, cluster, node_id, state, published, final,"
                " seen_running, job, updated, running_since) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (submission_id) DO UPDATE SET"
                " attempt = excluded.attempt, cluster = excluded.cluster, node_id = excluded.node_id,"
                " state = excluded.state, published = excluded.published, final = excluded.final,"
                " seen_running = excluded.seen_running, job = excluded.job, updated = excluded.updated,"
                " running_since = excluded.running_since"
                " WHERE excluded.attempt >= tracked.attempt",
                (t.job.submission_id, t.job.attempt, t.cluster, t.node_id, t.state.value,
                 int(t.published), int(t.final), int(t.seen_running), job_json, time.time(), t.running_since),
            )

        # Durable (synchronous=FULL) where a message is acknowledged on it: the dispatch's record.
        # Later records (states Ray tells again, confirms) need only survive a killed process.
        superseded = self._intents.get(t.job.submission_id)  # an intent written meanwhile stays
        await self._db.run(_write, durable=t.state == JobState.DISPATCHED and not t.published)
        if superseded is not None and self._intents.get(t.job.submission_id) is superseded:
            self._intents.clear(t.job.submission_id, t.job.attempt)

    async def get(self, submission_id: str) -> Tracked | None:
        def _read(db: sqlite3.Connection) -> Tracked | None:
            row = db.execute("SELECT * FROM tracked WHERE submission_id = ?", (submission_id,)).fetchone()
            return _row(row) if row else None

        return await self._db.run(_read, read=True)

    async def lookup(self, submission_id: str) -> Lookup:
        """All the journal knows of one id (dispatch record, end before dispatch, recorded stop) in one
        trip to the journal's thread, or none when the id filter says it has never been here."""
        if self._ids is not None and submission_id not in self._ids:
            return _EMPTY

        def _read(db: sqlite3.Connection) -> Lookup:
            row = db.execute("SELECT * FROM tracked WHERE submission_id = ?", (submission_id,)).fetchone()
            ended = db.execute("SELECT state, reason FROM ended WHERE submission_id = ?", (submission_id,)).fetchone()
            cancel = db.execute("SELECT reason, requester FROM cancellations WHERE submission_id = ?",
                                (submission_id,)).fetchone()
            return Lookup(_row(row) if row else None, (ended[0], ended[1]) if ended else None,
                          (cancel[0], cancel[1]) if cancel else None)

        found = await self._db.run(_read, read=True)
        intent = self._intents.get(submission_id)
        return found if intent is None else replace(found, intent=intent)

    async def open_jobs(self) -> list[Tracked]:
        """Jobs still to follow, or whose last event was not confirmed."""
        def _read(db: sqlite3.Connection) -> list[Tracked]:
            rows = db.execute("SELECT * FROM tracked WHERE final = 0 OR published = 0").fetchall()
            return [_row(r) for r in rows]

        return await self._db.run(_read, read=True)

    async def cancel(self, submission_id: str, reason: str, requester: str | None = None) -> None:
        """Record a stop for a job the daemon has not received yet (durable). `requester`: the
        user who asked, whose jobs only it cancels; None for an admin's, which cancels any."""
        self._saw(submission_id)
        await self._db.run(lambda db: db.execute(
            "INSERT OR REPLACE INTO cancellations (submission_id, reason, ts, requester) VALUES (?,?,?,?)",
            (submission_id, reason, time.time(), requester)))

    async def end(self, submission_id: str, state: str, reason: str) -> None:
        """Record that a job ended before dispatch (REJECTED, CANCELLED, EXPIRED), before its
        message is acknowledged: a redelivered copy then ends the same way, never runs."""
        self._saw(submission_id)
        await self._db.run(lambda db: db.execute("INSERT OR REPLACE INTO ended VALUES (?,?,?,?)",
                                              (submission_id, state, reason, time.time())))

    async def intend(self, job: Job, cluster: str) -> None:
        self._saw(job.submission_id)
        # On the loop, in a file of its own, not waiting for the disk (see `intentfile`).
        self._intents.put(job.submission_id, job.attempt, cluster)

    async def remember_lost(self, ray_id: str, cluster: str, submission_id: str) -> None:
        await self._db.run(lambda db: db.execute("INSERT OR REPLACE INTO lost_attempts VALUES (?,?,?,?)",
                                              (ray_id, cluster, submission_id, time.time())))

    async def lost_attempts(self) -> list[tuple[str, str]]:
        return await self._db.run(lambda db: [(r[0], r[1]) for r in db.execute(
            "SELECT ray_id, cluster FROM lost_attempts ORDER BY ts")], read=True)

    async def forget_lost(self, ray_id: str) -> None:
        await self._db.run(lambda db: db.execute("DELETE FROM lost_attempts WHERE ray_id = ?", (ray_id,)),
                           durable=False)

    async def prune(self, before: float) -> int:
        """Forget jobs that ended, and whose end was published, before `before` (unix time),
        and cancellations recorded before it."""
        def _delete(db: sqlite3.Connection) -> int:
            cur = db.execute("DELETE FROM tracked WHERE final = 1 AND published = 1 AND updated < ?", (before,))
            db.execute("DELETE FROM cancellations WHERE ts < ?", (before,))
            db.execute("DELETE FROM ended WHERE ts < ?", (before,))
            db.execute("DELETE FROM lost_attempts WHERE ts < ?", (before,))
            return cur.rowcount

        removed = await self._db.run(_delete, durable=False)
        self._intents.prune(before)
        if self._ids is not None and self._ids.count > self._ids.capacity:
            # Past its capacity the filter answers "maybe" more often: rebuilt for what is left,
            # with room to grow. (Pruned ids left in it cost nothing but a look-up if they come back.)
            self._seen_while_rebuilding = []
            try:
                fresh = await self._db.run(_id_filter, read=True)
                for sid in self._seen_while_rebuilding:
                    fresh.add(sid)
                self._ids = fresh
            finally:
                self._seen_while_rebuilding = None
        return removed


def _id_filter(db: sqlite3.Connection) -> IdFilter:
    (count,) = db.execute(f"SELECT COUNT(*) FROM ({_ALL_IDS})").fetchone()
    found = IdFilter(2 * count + 100_000)
    for (sid,) in db.execute(_ALL_IDS):
        found.add(sid)
    return found


def _take_old_intents(db: sqlite3.Connection) -> list[tuple[str, int, str]]:
    """Intents a journal from before `intentfile` holds, moved out (the caller writes them there)."""
    rows = [(r[0], r[1], r[2]) for r in db.execute("SELECT submission_id, attempt, cluster FROM intents")]
    db.execute("DELETE FROM intents")
    return rows


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""  # unknown: intents are trusted only after a clean stop


def _mark_open(db: sqlite3.Connection) -> bool:
    """Whether every intent written before this start is in the file: a new journal; the last run
    stopped cleanly; or it was killed but the machine has not restarted since (its writes were in
    the OS's cache). Not a journal from before intents, nor one whose machine went down under it."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    boot = _boot_id()
    new = not meta and db.execute("SELECT 1 FROM tracked LIMIT 1").fetchone() is None
    trusted = new or meta.get("clean") == "1" or (boot != "" and meta.get("boot") == boot)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?), ('clean', '0')", (boot,))
    return trusted


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    if "requester" not in {row[1] for row in db.execute("PRAGMA table_info(cancellations)")}:
        db.execute("ALTER TABLE cancellations ADD COLUMN requester TEXT")  # a journal from before owners
    if "running_since" not in {row[1] for row in db.execute("PRAGMA table_info(tracked)")}:
        db.execute("ALTER TABLE tracked ADD COLUMN running_since REAL")  # a journal from before run_timeout_s


def _row(row: tuple[Any, ...]) -> Tracked:
    sid, attempt, cluster, node_id, state, published, final, seen_running, job, _, running_since = row
    return Tracked(job_from_json(job), cluster, node_id, JobState(state), bool(published),
                   bool(final), bool(seen_running), running_since)
