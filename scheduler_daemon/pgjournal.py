"""The journal in PostgreSQL (`state_url: postgresql://...`), shared by the daemons of a
failover group on several hosts. Same records and rules as the SQLite journal (`journal`);
every write goes through group commit and, once this daemon leads, carries its epoch
(`pgbase.Fenced` for a stale one)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .jobs import Job, JobState
from .journal import IdFilter
from .journal_base import EMPTY, JournalStore, Lookup, job_from_json, job_to_json
from .pgbase import LEADER_TABLE, Fenced, GroupCommit, Stmt, close_pool, connect, migrate
from .tracking import Tracked

MIGRATIONS = (
    """
    CREATE TABLE rmcs_tracked (
        submission_id TEXT PRIMARY KEY,
        attempt INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        node_id TEXT NOT NULL,
        state TEXT NOT NULL,
        published BOOLEAN NOT NULL,
        final BOOLEAN NOT NULL,
        seen_running BOOLEAN NOT NULL,
        job TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        epoch BIGINT
    );
    CREATE INDEX rmcs_tracked_open ON rmcs_tracked (submission_id) WHERE NOT final OR NOT published;
    CREATE TABLE rmcs_ended (
        submission_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE rmcs_cancellations (
        submission_id TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        requester TEXT
    );
    """,
    """
    CREATE TABLE rmcs_intents (
        submission_id TEXT PRIMARY KEY,
        attempt INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        epoch BIGINT
    );
    CREATE TABLE rmcs_lost_attempts (
        ray_id TEXT PRIMARY KEY,
        cluster TEXT NOT NULL,
        submission_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL
    );
    """,
    """
    ALTER TABLE rmcs_tracked ADD COLUMN running_since DOUBLE PRECISION;
    """,
    """
    CREATE TABLE rmcs_server (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        first_start TIMESTAMPTZ NOT NULL
    );
    """,
)

_UPSERT = (
    "INSERT INTO rmcs_tracked (submission_id, attempt, cluster, node_id, state, published, final, seen_running,"
    " job, updated, epoch, running_since) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)"
    " ON CONFLICT (submission_id) DO UPDATE SET"
    " attempt = excluded.attempt, cluster = excluded.cluster, node_id = excluded.node_id,"
    " state = excluded.state, published = excluded.published, final = excluded.final,"
    " seen_running = excluded.seen_running, job = excluded.job, updated = excluded.updated,"
    " epoch = excluded.epoch, running_since = excluded.running_since"
    " WHERE excluded.attempt >= rmcs_tracked.attempt")
_COLUMNS = "submission_id, attempt, cluster, node_id, state, published, final, seen_running, job, running_since"


class PgJournal(JournalStore):
    def __init__(self, dsn: str, *, pool: asyncpg.Pool | None = None, idle_in_transaction_s: float = 5.0,
                 exclusive: bool = False) -> None:
        """`exclusive`: this daemon is the database's only writer (no failover group), so it may
        keep a filter of the ids in it and spare a new id its trip to the database."""
        self.dsn = dsn
        self._idle_s = idle_in_transaction_s
        self._exclusive = exclusive
        self._ids: IdFilter | None = None
        self.pool = pool
        self._own_pool = pool is None
        self._writes: GroupCommit | None = None
        self._intents: GroupCommit | None = None
        self._lazy: asyncpg.Pool | None = None
        self._recording: dict[str, asyncio.Future[Any]] = {}  # a job's record being written
        self._job_json: dict[str, tuple[Any, str]] = {}
        self.epoch: int | None = None

    async def open(self) -> None:
        if self.pool is None:
            self.pool = await connect(self.dsn, idle_in_transaction_s=self._idle_s, init=self._new_session)
        await migrate(self.pool, "leader", (LEADER_TABLE,))  # what fenced writes check
        await migrate(self.pool, "journal", MIGRATIONS)
        # Intents are written without waiting for the server's disk (see `intend`): they are
        # trusted only while the server has not restarted since the journal's first open.
        same_server = await self.pool.fetchval(
            "INSERT INTO rmcs_server VALUES (1, pg_postmaster_start_time()) ON CONFLICT (id) DO UPDATE"
            " SET first_start = rmcs_server.first_start RETURNING first_start = pg_postmaster_start_time()")
        self.intents_trusted = bool(same_server)
        self._lazy = await connect(self.dsn, max_size=1, synchronous_commit="off", init=self._new_session)
        self._writes = GroupCommit(self.pool, lambda: self.epoch, self._lazy)
        self._intents = GroupCommit(self.pool, lambda: self.epoch, self._lazy)  # never behind a record's fsync
        if self._exclusive:
            ids = [r[0] for r in await self.pool.fetch(
                "SELECT submission_id FROM rmcs_tracked UNION SELECT submission_id FROM rmcs_ended"
                " UNION SELECT submission_id FROM rmcs_cancellations UNION SELECT submission_id FROM rmcs_intents")]
            self._ids = IdFilter(2 * len(ids) + 100_000)
            for sid in ids:
                self._ids.add(sid)

    async def _new_session(self, conn: asyncpg.Connection) -> None:
        """A session of this journal's pools opens (the pool opens new ones when the server went
        down under them): if the server has restarted since the journal's first open, the last
        intents may be lost."""
        try:
            same_server = await conn.fetchval("SELECT first_start = pg_postmaster_start_time() FROM rmcs_server")
        except asyncpg.UndefinedTableError:
            return  # a new database, before its first migration
        if same_server is False:
            self.intents_trusted = False

    async def close(self) -> None:
        for writes in (self._intents, self._writes):
            if writes is not None:
                await writes.flush()
        pools = [pool for pool in (self._lazy, self.pool if self._own_pool else None) if pool is not None]
        self._lazy = None
        if self._own_pool:
            self.pool = None
        await asyncio.gather(*(close_pool(pool) for pool in pools))  # together: within the shutdown's step

    async def _write(self, *stmts: Stmt, durable: bool = True) -> Any:
        assert self._writes is not None, "journal not open"
        return await self._fenced(self._writes.run(list(stmts), durable=durable))

    async def _fenced(self, written: "asyncio.Future[Any]") -> Any:
        try:
            return await written
        except Fenced as exc:
            self.on_fenced(exc)
            raise

    async def record(self, t: Tracked) -> None:
        sid = t.job.submission_id
        self._saw(sid)
        cached = self._job_json.get(sid)
        job_json = cached[1] if cached is not None and cached[0] is t.job else job_to_json(t.job)
        if t.final and t.published:
            self._job_json.pop(sid, None)
        else:
            self._job_json[sid] = (t.job, job_json)
        assert self._writes is not None, "journal not open"
        written = self._writes.run([
            Stmt(_UPSERT, (sid, t.job.attempt, t.cluster, t.node_id, t.state.value, t.published, t.final,
                           t.seen_running, job_json, time.time(), self.epoch, t.running_since)),
            Stmt("DELETE FROM rmcs_intents WHERE submission_id = $1 AND attempt <= $2", (sid, t.job.attempt))],
            durable=t.state == JobState.DISPATCHED and not t.published)  # as in journal.py
        self._recording[sid] = written
        try:
            await self._fenced(written)
        finally:
            if self._recording.get(sid) is written:
                del self._recording[sid]

    async def get(self, submission_id: str) -> Tracked | None:
        assert self.pool is not None
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM rmcs_tracked WHERE submission_id = $1",
                                       submission_id)
        return _row(row) if row is not None else None

    def _saw(self, submission_id: str) -> None:
        if self._ids is not None:
            self._ids.add(submission_id)

    async def lookup(self, submission_id: str) -> Lookup:
        assert self.pool is not None
        if self._ids is not None and submission_id not in self._ids:
            return EMPTY
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT (SELECT row({_COLUMNS}) FROM rmcs_tracked WHERE submission_id = $1) AS t,"
                " (SELECT row(state, reason) FROM rmcs_ended WHERE submission_id = $1) AS e,"
                " (SELECT row(reason, requester) FROM rmcs_cancellations WHERE submission_id = $1) AS c,"
                " (SELECT row(cluster, attempt) FROM rmcs_intents WHERE submission_id = $1) AS i",
                submission_id)
        t, e, c, i = row["t"], row["e"], row["c"], row["i"]
        return Lookup(_row(t) if t is not None else None, (e[0], e[1]) if e is not None else None,
                      (c[0], c[1]) if c is not None else None, (i[0], i[1]) if i is not None else None)

    async def open_jobs(self) -> list[Tracked]:
        assert self.pool is not None
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM rmcs_tracked WHERE NOT final OR NOT published")
        return [_row(r) for r in rows]

    async def cancel(self, submission_id: str, reason: str, requester: str | None = None) -> None:
        self._saw(submission_id)
        await self._write(Stmt(
            "INSERT INTO rmcs_cancellations VALUES ($1,$2,$3,$4) ON CONFLICT (submission_id) DO UPDATE SET"
            " reason = excluded.reason, ts = excluded.ts, requester = excluded.requester",
            (submission_id, reason, time.time(), requester)))

    async def end(self, submission_id: str, state: str, reason: str) -> None:
        self._saw(submission_id)
        await self._write(Stmt(
            "INSERT INTO rmcs_ended VALUES ($1,$2,$3,$4) ON CONFLICT (submission_id) DO UPDATE SET"
            " state = excluded.state, reason = excluded.reason, ts = excluded.ts",
            (submission_id, state, reason, time.time())))

    async def fence(self) -> None:
        if self.epoch is not None:
            await self._write()  # an empty transaction, with the epoch checked

    async def intend(self, job: Job, cluster: str) -> None:
        """Committed without waiting for the server's disk (`synchronous_commit` off): visible to
        every daemon at once and kept when this daemon dies, lost only if the server itself goes
        down before its WAL writer catches up (a fraction of a second). Then `intents_trusted`
        is False in every daemon that opens the journal afterwards, and in this one once it sees
        the server go. Waiting for the disk cost publish -> POST about 0.6 ms at p50
        (bench/README.md, "Ninth round"). Intents have a group commit of their own, so one does
        not wait behind a batch of records and their fsync (publish -> POST p99 about a third
        lower, p50 about 5%: "Tenth round"); only a record of the same job still being written
        goes first, since it deletes intents."""
        self._saw(job.submission_id)
        earlier = self._recording.get(job.submission_id)
        if earlier is not None:  # its intent delete (attempt <= this one) must not come after this intent
            await asyncio.wait([earlier])
        assert self._intents is not None, "journal not open"
        await self._fenced(self._intents.run([Stmt(
            "INSERT INTO rmcs_intents VALUES ($1,$2,$3,$4,$5) ON CONFLICT (submission_id) DO UPDATE SET"
            " attempt = excluded.attempt, cluster = excluded.cluster, ts = excluded.ts, epoch = excluded.epoch",
            (job.submission_id, job.attempt, cluster, time.time(), self.epoch))], durable=False))

    async def remember_lost(self, ray_id: str, cluster: str, submission_id: str) -> None:
        await self._write(Stmt("INSERT INTO rmcs_lost_attempts VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
                               (ray_id, cluster, submission_id, time.time())))

    async def lost_attempts(self) -> list[tuple[str, str]]:
        assert self.pool is not None
        return [(r[0], r[1]) for r in await self.pool.fetch("SELECT ray_id, cluster FROM rmcs_lost_attempts ORDER BY ts")]

    async def forget_lost(self, ray_id: str) -> None:
        await self._write(Stmt("DELETE FROM rmcs_lost_attempts WHERE ray_id = $1", (ray_id,)), durable=False)

    async def prune(self, before: float) -> int:
        status = await self._write(
            Stmt("DELETE FROM rmcs_cancellations WHERE ts < $1", (before,)),
            Stmt("DELETE FROM rmcs_ended WHERE ts < $1", (before,)),
            Stmt("DELETE FROM rmcs_intents WHERE ts < $1", (before,)),
            Stmt("DELETE FROM rmcs_lost_attempts WHERE ts < $1", (before,)),
            Stmt("DELETE FROM rmcs_tracked WHERE final AND published AND updated < $1", (before,)), durable=False)
        count = str(status).rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0  # (not told when batched with other writes)


def _row(row: Any) -> Tracked:
    sid, attempt, cluster, node_id, state, published, final, seen_running, job, running_since = tuple(row)
    return Tracked(job_from_json(job), cluster, node_id, JobState(state), bool(published), bool(final),
                   bool(seen_running), running_since)
