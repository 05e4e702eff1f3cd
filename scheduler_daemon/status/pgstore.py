"""The status history in PostgreSQL (`state_url: postgresql://...`): what every daemon's status
service answers from, the standby's too. Same rules as `SqliteStatusStore`: applying an event
is idempotent and never moves a job's state backwards, whichever service applies it first."""

from __future__ import annotations

import time
from typing import Any, Mapping

import asyncpg
import orjson

from ..pgbase import connect, migrate
from .records import RANK, JobStatus, ListQuery, Page, Transition, decode_cursor, encode_cursor, _norm
from .store import _COLUMNS, StatusStore, _now, _opt_text, _status

MIGRATIONS = (
    """
    CREATE TABLE status_jobs (
        seq BIGSERIAL PRIMARY KEY,
        submission_id TEXT NOT NULL UNIQUE,
        job_id TEXT,
        state TEXT NOT NULL,
        rank INTEGER NOT NULL,
        cluster TEXT,
        attempt INTEGER NOT NULL,
        final BOOLEAN NOT NULL,
        message TEXT,
        priority INTEGER,
        tags TEXT NOT NULL,
        metadata TEXT NOT NULL,
        resources TEXT NOT NULL,
        created TEXT NOT NULL,
        updated TEXT NOT NULL,
        deleted BOOLEAN NOT NULL DEFAULT false,
        owner TEXT
    );
    CREATE INDEX status_jobs_state ON status_jobs (state, seq);
    CREATE INDEX status_jobs_cluster ON status_jobs (cluster, seq);
    CREATE INDEX status_jobs_owner ON status_jobs (owner, seq);
    CREATE INDEX status_jobs_final ON status_jobs (final, deleted, updated);
    CREATE TABLE status_job_tags (
        submission_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (tag, submission_id)
    );
    CREATE TABLE status_transitions (
        submission_id TEXT NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        cluster TEXT,
        ts TEXT NOT NULL,
        message TEXT,
        PRIMARY KEY (submission_id, attempt, state)
    );
    CREATE TABLE status_clusters (
        name TEXT PRIMARY KEY,
        health TEXT NOT NULL,
        ts TEXT NOT NULL,
        message TEXT
    );
    CREATE TABLE status_reports (
        name TEXT PRIMARY KEY,
        body BYTEA NOT NULL,
        written DOUBLE PRECISION NOT NULL
    );
    """,
)
_PG_COLUMNS = _COLUMNS.replace("submission_id,", "j.submission_id,", 1)


class PgStatusStore(StatusStore):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self.pool = await connect(self.dsn, max_size=4)
        await migrate(self.pool, "status", MIGRATIONS)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    @property
    def _pool(self) -> asyncpg.Pool:
        assert self.pool is not None, "store not open"
        return self.pool

    async def apply(self, event: Mapping[str, Any]) -> bool:
        sid = event.get("submission_id")
        state = str(event.get("state", "")).upper()
        if not isinstance(sid, str) or state not in RANK:
            return False
        attempt = int(event.get("attempt") or 1)
        cluster = _opt_text(event.get("cluster"))
        ts = str(event.get("ts") or _now())
        message = _opt_text(event.get("message"))
        final = bool(event.get("final"))
        priority = event.get("priority") if isinstance(event.get("priority"), int) else None
        job_id = _opt_text(event.get("job_id"))
        owner = _opt_text(event.get("owner"))
        rank = RANK[state]
        tags = [t for t in event.get("tags") or [] if isinstance(t, str)]
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("INSERT INTO status_transitions VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
                             sid, state, attempt, cluster, ts, message)
            inserted = await db.fetchval(
                "INSERT INTO status_jobs (submission_id, job_id, state, rank, cluster, attempt, final, message,"
                " priority, tags, metadata, resources, created, updated, owner)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$13,$14)"
                " ON CONFLICT (submission_id) DO NOTHING RETURNING seq",
                sid, job_id, state, rank, cluster, attempt, final, message, priority,
                orjson.dumps(tags).decode(), orjson.dumps(event.get("metadata") or {}).decode(),
                orjson.dumps(event.get("resource_requirements") or {}).decode(), ts, owner)
            if inserted is not None:
                if tags:
                    await db.executemany("INSERT INTO status_job_tags VALUES ($1,$2) ON CONFLICT DO NOTHING",
                                         [(sid, t) for t in tags])
                return True
            row = await db.fetchrow("SELECT rank, attempt, final FROM status_jobs WHERE submission_id = $1"
                                    " FOR UPDATE", sid)
            if (attempt, rank) <= (row["attempt"], row["rank"]) or row["final"]:
                return False
            await db.execute(
                "UPDATE status_jobs SET state=$1, rank=$2, cluster=COALESCE($3, cluster), attempt=$4, final=$5,"
                " message=$6, updated=$7, job_id=COALESCE(job_id, $8), owner=COALESCE(owner, $9)"
                " WHERE submission_id=$10", state, rank, cluster, attempt, final, message, ts, job_id, owner, sid)
            return True

    async def get(self, submission_id: str, *, history: bool = True) -> JobStatus | None:
        async with self._pool.acquire() as db:
            row = await db.fetchrow(f"SELECT {_COLUMNS} FROM status_jobs WHERE submission_id = $1", submission_id)
            if row is None:
                return None
            steps: tuple[Transition, ...] = ()
            if history:
                rows = await db.fetch("SELECT state, attempt, cluster, ts, message FROM status_transitions"
                                      " WHERE submission_id = $1", submission_id)
                steps = tuple(sorted((Transition(*r) for r in rows), key=lambda t: (t.attempt, RANK[t.state], t.ts)))
        return _status(tuple(row), steps)

    async def list(self, query: ListQuery) -> Page:
        query = query.validate()
        where: list[str] = ["true"]
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.cursor is not None:
            where.append(f"j.seq > {arg(decode_cursor(query.cursor))}")
        if query.state:
            where.append(f"j.state = {arg(query.state.upper())}")
        if query.cluster:
            where.append(f"j.cluster = {arg(query.cluster)}")
        if query.owner:
            where.append(f"j.owner = {arg(query.owner)}")
        if query.tag:
            where.append(f"EXISTS (SELECT 1 FROM status_job_tags t WHERE t.tag = {arg(query.tag)}"
                         " AND t.submission_id = j.submission_id)")
        if query.since:
            where.append(f"j.created >= {arg(_norm(query.since))}")
        if query.until:
            where.append(f"j.created < {arg(_norm(query.until))}")
        rows = await self._pool.fetch(
            f"SELECT {_PG_COLUMNS}, j.seq FROM status_jobs j WHERE {' AND '.join(where)}"
            f" ORDER BY j.seq LIMIT {arg(query.limit + 1)}", *args)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return Page([_status(tuple(r)[:-1], ()) for r in rows], encode_cursor(rows[-1]["seq"]) if more and rows else None)

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT state, COUNT(*) FROM status_jobs GROUP BY state")
        return {r[0]: int(r[1]) for r in rows}

    async def open_jobs(self) -> list[JobStatus]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM status_jobs WHERE NOT final")
        return [_status(tuple(r), ()) for r in rows]

    async def due_for_deletion(self, before: str, limit: int = 100) -> list[JobStatus]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM status_jobs WHERE final AND NOT deleted AND cluster IS NOT NULL"
            " AND updated < $1 LIMIT $2", _norm(before), limit)
        return [_status(tuple(r), ()) for r in rows]

    async def mark_deleted(self, submission_id: str) -> None:
        await self._pool.execute("UPDATE status_jobs SET deleted = true WHERE submission_id = $1", submission_id)

    async def set_cluster_health(self, cluster: str, health: str, ts: str, message: str | None) -> None:
        await self._pool.execute(
            "INSERT INTO status_clusters VALUES ($1,$2,$3,$4) ON CONFLICT (name) DO UPDATE SET"
            " health = excluded.health, ts = excluded.ts, message = excluded.message", cluster, health, ts, message)

    async def put_report(self, name: str, body: bytes) -> None:
        await self._pool.execute(
            "INSERT INTO status_reports VALUES ($1,$2,$3) ON CONFLICT (name) DO UPDATE SET"
            " body = excluded.body, written = excluded.written", name, body, time.time())

    async def report(self, name: str) -> tuple[bytes, float] | None:
        row = await self._pool.fetchrow("SELECT body, written FROM status_reports WHERE name = $1", name)
        return None if row is None else (bytes(row[0]), float(row[1]))

    async def leader(self) -> str | None:
        try:
            return await self._pool.fetchval("SELECT holder FROM rmcs_leader WHERE id = 1 AND expires > now()")
        except asyncpg.UndefinedTableError:  # no failover group: no lease
            return None
