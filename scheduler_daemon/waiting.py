"""The store of waiting jobs (`depends_on`): durable, on disk, outside the window.

A job waiting for its dependencies costs no memory: it is a row in SQLite (its own file in
`state_dir`, on a thread of its own with group commit, `dbthread`), with a row per dependency
so that the end of a job finds its waiters by index. Its intake message is acknowledged once
the row is committed, so a restart (or the other daemon of a failover pair, which shares the
file) finds every waiting job here. A Bloom filter of the ids held spares the intake path a
trip to the thread for the usual id, which is not waiting.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import orjson

from .dbthread import DbThread
from .jobs import Job
from .journal import IdFilter, job_from_json, job_to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS waiting (
    submission_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    accepted REAL NOT NULL,
    expires REAL
);
CREATE INDEX IF NOT EXISTS waiting_expires ON waiting (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS waiting_deps (
    dep TEXT NOT NULL,
    waiter TEXT NOT NULL,
    PRIMARY KEY (dep, waiter)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Waiter:
    """A waiting job as a look at its dependencies needs it: a sweep over thousands reads these,
    and the whole job only for the few it releases or ends."""
    submission_id: str
    depends_on: tuple[str, ...]


# The columns of a Waiter; SQLite takes the list out of the stored JSON, in the job's order.
_WAITER = "submission_id, json_extract(job, '$.depends_on')"


def _waiters(rows: Iterable[tuple[str, str | None]]) -> list[Waiter]:
    return [Waiter(sid, tuple(orjson.loads(deps)) if deps else ()) for sid, deps in rows]


class WaitingStore:
    """`exclusive`: this process is the file's only writer, so the id filter stays true."""

    def __init__(self, path: str | Path, *, exclusive: bool = True) -> None:
        self._db = DbThread(path, "rmcs-waiting", _setup)
        self._exclusive = exclusive
        self._ids: IdFilter | None = None
        self.count = 0

    async def open(self) -> None:
        await self._db.open()
        ids = [sid for (sid,) in await self._db.run(
            lambda db: db.execute("SELECT submission_id FROM waiting").fetchall(), read=True)]
        self.count = len(ids)
        if self._exclusive:
            self._ids = IdFilter(2 * len(ids) + 100_000)
            for sid in ids:
                self._ids.add(sid)

    async def close(self) -> None:
        if self._db.is_open:
            await self._db.close()

    async def add(self, job: Job, accepted: float, expires: float | None) -> bool:
        """Store a waiting job; False if it is already here."""
        text = job_to_json(job)

        def _add(db: sqlite3.Connection) -> bool:
            cur = db.execute("INSERT OR IGNORE INTO waiting VALUES (?,?,?,?)",
                             (job.submission_id, text, accepted, expires))
            if cur.rowcount == 0:
                return False
            db.executemany("INSERT OR IGNORE INTO waiting_deps VALUES (?,?)",
                           [(dep, job.submission_id) for dep in job.depends_on])
            return True

        added = await self._db.run(_add)
        if added:
            self.count += 1
            if self._ids is not None:
                self._ids.add(job.submission_id)
        return added

    async def remove(self, submission_id: str) -> bool:
        def _remove(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM waiting WHERE submission_id = ?", (submission_id,))
            db.execute("DELETE FROM waiting_deps WHERE waiter = ?", (submission_id,))
            return cur.rowcount > 0

        removed = await self._db.run(_remove)
        if removed:
            self.count = max(0, self.count - 1)
        return removed

    async def contains(self, submission_id: str) -> bool:
        if self._ids is not None and submission_id not in self._ids:
            return False
        return await self.get(submission_id) is not None

    async def get(self, submission_id: str) -> Job | None:
        row = await self._db.run(lambda db: db.execute(
            "SELECT job FROM waiting WHERE submission_id = ?", (submission_id,)).fetchone(), read=True)
        return job_from_json(row[0]) if row else None

    async def waiters_of(self, deps: Iterable[str]) -> list[Waiter]:
        """The jobs waiting for any of `deps`."""
        deps = list(deps)

        def _read(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
            out: list[tuple[str, str | None]] = []
            for i in range(0, len(deps), 500):
                some = deps[i:i + 500]
                out += db.execute(
                    f"SELECT {_WAITER} FROM waiting WHERE submission_id IN"
                    f" (SELECT waiter FROM waiting_deps WHERE dep IN ({','.join('?' * len(some))}))",
                    some).fetchall()
            return out

        return _waiters(await self._db.run(_read, read=True))

    async def page(self, after: str, limit: int) -> list[Waiter]:
        """Waiting jobs in id order after `after` (a sweep goes over them a page at a time)."""
        return _waiters(await self._db.run(lambda db: db.execute(
            f"SELECT {_WAITER} FROM waiting WHERE submission_id > ? ORDER BY submission_id LIMIT ?",
            (after, limit)).fetchall(), read=True))

    async def expired(self, now: float | None = None, limit: int = 50) -> list[Job]:
        """Waiting jobs whose queue_timeout_s has passed (unix time)."""
        at = time.time() if now is None else now
        rows = await self._db.run(lambda db: db.execute(
            "SELECT job FROM waiting WHERE expires IS NOT NULL AND expires <= ? LIMIT ?",
            (at, limit)).fetchall(), read=True)
        return [job_from_json(r[0]) for r in rows]


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    db.execute("PRAGMA cache_size=-64")  # KiB: the rows are read a page at a time, rarely twice
