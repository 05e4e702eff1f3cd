"""The status history in PostgreSQL (`state_url: postgresql://...`): what every daemon's status
service answers from, the standby's too. Same rules as `SqliteStatusStore`: applying an event
is idempotent and never moves a job's state backwards, whichever service applies it first."""

from __future__ import annotations

import time
from typing import Any, Mapping

import asyncpg
import orjson

from ..pgbase import close_pool, connect, migrate
from .records import (HEALTH_KEPT, JOB_COLUMNS, RANK, ForeignOwner, JobStatus, ListQuery, LogTail, Page, Transition,
                      decode_cursor, encode_cursor, normal_ts, now_text, parse_event, status_of_row)
from .storebase import StatusStore

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
    # WAITING ranks 1.5; postponed deletions; dependencies; health history; kept log tails.
    # Times compare as text (RFC 3339 UTC, one shape), so byte order whatever the database's collation.
    """
    ALTER TABLE status_jobs ALTER COLUMN rank TYPE DOUBLE PRECISION;
    ALTER TABLE status_jobs ADD COLUMN retry_delete_at TEXT COLLATE "C";
    ALTER TABLE status_jobs ADD COLUMN depends_on TEXT;
    CREATE INDEX status_jobs_updated ON status_jobs (final, updated);
    CREATE INDEX status_transitions_state ON status_transitions (state, ts);
    CREATE TABLE status_cluster_health (
        cluster TEXT NOT NULL,
        health TEXT NOT NULL,
        ts TEXT COLLATE "C" NOT NULL,
        message TEXT,
        PRIMARY KEY (cluster, ts, health)
    );
    CREATE TABLE status_log_tails (
        submission_id TEXT PRIMARY KEY,
        attempt INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        tail TEXT NOT NULL,
        cut BOOLEAN NOT NULL,
        kept DOUBLE PRECISION NOT NULL
    );
    """,
    # Queues (docs/queues.md): each job's queue; NULL on a row from before queues (`default`).
    """
    ALTER TABLE status_jobs ADD COLUMN queue TEXT;
    CREATE INDEX status_jobs_queue ON status_jobs (queue, seq);
    """,
    # Jobs' code packages (producers/packages.py), for every daemon of the group to ship.
    """
    CREATE TABLE status_packages (
        name TEXT PRIMARY KEY,
        data BYTEA NOT NULL,
        used DOUBLE PRECISION NOT NULL
    );
    """,
)
_PG_COLUMNS = JOB_COLUMNS.replace("submission_id,", "j.submission_id,", 1)
_GONE = "final AND (deleted OR cluster IS NULL)"  # final jobs off their cluster: what prune forgets


class PgStatusStore(StatusStore):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self.pool = await connect(self.dsn, max_size=4)
        await migrate(self.pool, "status", MIGRATIONS)

    async def close(self) -> None:
        if self.pool is not None:
            await close_pool(self.pool)
            self.pool = None

    @property
    def _pool(self) -> asyncpg.Pool:
        assert self.pool is not None, "store not open"
        return self.pool

    async def apply(self, event: Mapping[str, Any]) -> bool:
        e = parse_event(event)
        if e is None:
            return False
        sid, state, rank, attempt = e.submission_id, e.state, e.rank, e.attempt
        cluster, ts, message, final, priority = e.cluster, e.ts, e.message, e.final, e.priority
        job_id, owner, depends_on, queue = e.job_id, e.owner, e.depends_on, e.queue
        tags = list(e.tags)
        step = (sid, state, attempt, cluster, ts, message)
        async with self._pool.acquire() as db, db.transaction():  # undone if refused (ForeignOwner)
            await db.execute("INSERT INTO status_transitions VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING", *step)
            row = None
            for _ in range(3):  # again only when another service inserted the job meanwhile
                row = await db.fetchrow("SELECT rank, attempt, final, owner, state, cluster FROM status_jobs"
                                        " WHERE submission_id = $1 FOR UPDATE", sid)
                if row is not None and row["owner"] is not None and owner is not None and row["owner"] != owner:
                    if row["state"] != "REJECTED" or row["cluster"] is not None:
                        raise ForeignOwner(f"event of {owner!r} for {sid!r}, a job of {row['owner']!r}")
                    # A message refused at intake holds no id: the job that really has it replaces it.
                    for table in ("status_jobs", "status_transitions", "status_job_tags"):
                        await db.execute(f"DELETE FROM {table} WHERE submission_id = $1", sid)
                    await db.execute("INSERT INTO status_transitions VALUES ($1,$2,$3,$4,$5,$6)", *step)
                    row = None
                if row is not None:
                    break
                inserted = await db.fetchval(
                    "INSERT INTO status_jobs (submission_id, job_id, state, rank, cluster, attempt, final, message,"
                    " priority, tags, metadata, resources, created, updated, owner, depends_on, queue)"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$13,$14,$15,$16)"
                    " ON CONFLICT (submission_id) DO NOTHING RETURNING seq",
                    sid, job_id, state, rank, cluster, attempt, final, message, priority,
                    orjson.dumps(tags).decode(), orjson.dumps(event.get("metadata") or {}).decode(),
                    orjson.dumps(event.get("resource_requirements") or {}).decode(), ts, owner, depends_on, queue)
                if inserted is not None:
                    if tags:
                        await db.executemany("INSERT INTO status_job_tags VALUES ($1,$2) ON CONFLICT DO NOTHING",
                                             [(sid, t) for t in tags])
                    return True
            if row is None or (attempt, rank) <= (row["attempt"], row["rank"]) or row["final"]:
                return False
            await db.execute(
                "UPDATE status_jobs SET state=$1, rank=$2, cluster=COALESCE($3, cluster), attempt=$4, final=$5,"
                " message=$6, updated=$7, job_id=COALESCE(job_id, $8), owner=COALESCE(owner, $9),"
                " queue=COALESCE(queue, $10) WHERE submission_id=$11",
                state, rank, cluster, attempt, final, message, ts, job_id, owner, queue, sid)
            return True

    async def get(self, submission_id: str, *, history: bool = True) -> JobStatus | None:
        async with self._pool.acquire() as db:
            row = await db.fetchrow(f"SELECT {JOB_COLUMNS} FROM status_jobs WHERE submission_id = $1", submission_id)
            if row is None:
                return None
            steps: tuple[Transition, ...] = ()
            if history:
                rows = await db.fetch("SELECT state, attempt, cluster, ts, message FROM status_transitions"
                                      " WHERE submission_id = $1", submission_id)
                steps = tuple(sorted((Transition(*r) for r in rows), key=lambda t: (t.attempt, RANK[t.state], t.ts)))
        return status_of_row(tuple(row), steps)

    async def list(self, query: ListQuery) -> Page:
        query = query.validate()
        where: list[str] = ["true"]
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.cursor is not None:
            where.append(f"j.seq {'<' if query.newest_first else '>'} {arg(decode_cursor(query.cursor))}")
        if query.state:
            where.append(f"j.state = {arg(query.state.upper())}")
        if query.cluster:
            where.append(f"j.cluster = {arg(query.cluster)}")
        if query.owner:
            where.append(f"j.owner = {arg(query.owner)}")
        if query.queue:  # a row from before queues has none: it was in `default`
            q = arg(query.queue)
            where.append(f"(j.queue = {q} OR (j.queue IS NULL AND {q} = 'default'))")
        if query.tag:
            where.append(f"EXISTS (SELECT 1 FROM status_job_tags t WHERE t.tag = {arg(query.tag)}"
                         " AND t.submission_id = j.submission_id)")
        if query.since:
            where.append(f"j.created >= {arg(normal_ts(query.since))}")
        if query.until:
            where.append(f"j.created < {arg(normal_ts(query.until))}")
        rows = await self._pool.fetch(
            f"SELECT {_PG_COLUMNS}, j.seq FROM status_jobs j WHERE {' AND '.join(where)}"
            f" ORDER BY j.seq {'DESC' if query.newest_first else 'ASC'} LIMIT {arg(query.limit + 1)}", *args)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return Page([status_of_row(tuple(r)[:-1], ()) for r in rows],
                    encode_cursor(rows[-1]["seq"]) if more and rows else None)

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT state, COUNT(*) FROM status_jobs GROUP BY state")
        return {r[0]: int(r[1]) for r in rows}

    async def open_jobs(self) -> list[JobStatus]:
        rows = await self._pool.fetch(f"SELECT {JOB_COLUMNS} FROM status_jobs WHERE NOT final")
        return [status_of_row(tuple(r), ()) for r in rows]

    async def due_for_deletion(self, before: str, limit: int = 100) -> list[JobStatus]:
        rows = await self._pool.fetch(
            f"SELECT {JOB_COLUMNS} FROM status_jobs WHERE final AND NOT deleted AND cluster IS NOT NULL"
            " AND updated < $1 AND (retry_delete_at IS NULL OR retry_delete_at < $2) ORDER BY updated LIMIT $3",
            normal_ts(before), now_text(), limit)
        return [status_of_row(tuple(r), ()) for r in rows]

    async def postpone_deletion(self, submission_id: str, until: str) -> None:
        await self._pool.execute("UPDATE status_jobs SET retry_delete_at = $1 WHERE submission_id = $2",
                                 normal_ts(until), submission_id)

    async def prune(self, before: str, keep: int, limit: int = 1000) -> int:
        before = normal_ts(before)
        async with self._pool.acquire() as db, db.transaction():
            # Locked, so a job that another service replaces meanwhile (see apply) is not forgotten
            # in its new shape; skipped if locked: the next prune takes it.
            sids = [r[0] for r in await db.fetch(
                f"SELECT submission_id FROM status_jobs WHERE {_GONE} AND updated < $1 ORDER BY seq LIMIT $2"
                " FOR UPDATE SKIP LOCKED", before, limit)]
            excess = int(await db.fetchval("SELECT COUNT(*) FROM status_jobs")) - len(sids) - keep
            if excess > 0 and len(sids) < limit:
                sids += [r[0] for r in await db.fetch(
                    f"SELECT submission_id FROM status_jobs WHERE {_GONE} AND updated >= $1 ORDER BY seq LIMIT $2"
                    " FOR UPDATE SKIP LOCKED", before, min(excess, limit - len(sids)))]
            for table in ("status_jobs", "status_transitions", "status_job_tags"):
                await db.execute(f"DELETE FROM {table} WHERE submission_id = ANY($1::text[])", sids)
        return len(sids)

    async def mark_deleted(self, submission_id: str) -> None:
        await self._pool.execute("UPDATE status_jobs SET deleted = true WHERE submission_id = $1", submission_id)

    async def forget(self, submission_id: str) -> bool:
        async with self._pool.acquire() as db, db.transaction():
            status = await db.execute("DELETE FROM status_jobs WHERE submission_id = $1 AND final", submission_id)
            if status.split()[-1] == "0":
                return False
            for table in ("status_transitions", "status_job_tags", "status_log_tails"):
                await db.execute(f"DELETE FROM {table} WHERE submission_id = $1", submission_id)
        return True

    async def set_cluster_health(self, cluster: str, health: str, ts: str, message: str | None) -> None:
        async with self._pool.acquire() as db, db.transaction():
            await db.execute(
                "INSERT INTO status_clusters VALUES ($1,$2,$3,$4) ON CONFLICT (name) DO UPDATE SET"
                " health = excluded.health, ts = excluded.ts, message = excluded.message", cluster, health, ts, message)
            await db.execute("INSERT INTO status_cluster_health VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
                             cluster, health, ts, message)
            await db.execute(
                "DELETE FROM status_cluster_health WHERE cluster = $1 AND ts < (SELECT ts FROM status_cluster_health"
                " WHERE cluster = $1 ORDER BY ts DESC LIMIT 1 OFFSET $2)", cluster, HEALTH_KEPT - 1)

    async def cluster_history(self, per_cluster: int = 20) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for cluster, health, ts, message in await self._pool.fetch(
                "SELECT cluster, health, ts, message FROM status_cluster_health ORDER BY cluster, ts DESC"):
            seen = out.setdefault(cluster, [])
            if len(seen) < per_cluster:
                seen.append({"health": health, "ts": ts, "message": message})
        return out

    async def activity(self, since: str) -> dict[str, int]:
        since = normal_ts(since)
        async with self._pool.acquire() as db:
            dispatched = await db.fetchval(
                "SELECT COUNT(*) FROM status_transitions WHERE state = 'DISPATCHED' AND ts >= $1", since)
            finished = await db.fetchval("SELECT COUNT(*) FROM status_jobs WHERE final AND updated >= $1", since)
        return {"dispatched": int(dispatched), "finished": int(finished)}

    async def put_report(self, name: str, body: bytes) -> None:
        await self._pool.execute(
            "INSERT INTO status_reports VALUES ($1,$2,$3) ON CONFLICT (name) DO UPDATE SET"
            " body = excluded.body, written = excluded.written", name, body, time.time())

    async def put_reports(self, reports: Mapping[str, bytes]) -> None:
        written = time.time()
        await self._pool.executemany(
            "INSERT INTO status_reports VALUES ($1,$2,$3) ON CONFLICT (name) DO UPDATE SET"
            " body = excluded.body, written = excluded.written", [(n, b, written) for n, b in reports.items()])

    async def report(self, name: str) -> tuple[bytes, float] | None:
        row = await self._pool.fetchrow("SELECT body, written FROM status_reports WHERE name = $1", name)
        return None if row is None else (bytes(row[0]), float(row[1]))

    async def put_log_tail(self, submission_id: str, attempt: int, cluster: str, tail: str, cut: bool) -> None:
        await self._pool.execute(
            "INSERT INTO status_log_tails VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (submission_id) DO UPDATE SET"
            " attempt = excluded.attempt, cluster = excluded.cluster, tail = excluded.tail, cut = excluded.cut,"
            " kept = excluded.kept WHERE excluded.attempt >= status_log_tails.attempt",
            submission_id, attempt, cluster, tail, bool(cut), time.time())

    async def log_tail(self, submission_id: str) -> LogTail | None:
        row = await self._pool.fetchrow(
            "SELECT attempt, cluster, tail, cut FROM status_log_tails WHERE submission_id = $1", submission_id)
        return LogTail(row[0], row[1], row[2], bool(row[3])) if row else None

    async def prune_log_tails(self, before: float) -> int:
        status = await self._pool.execute("DELETE FROM status_log_tails WHERE kept < $1", before)
        return int(status.split()[-1])

    async def put_package(self, name: str, data: bytes) -> bool:
        status = await self._pool.execute("INSERT INTO status_packages VALUES ($1,$2,$3) ON CONFLICT DO NOTHING",
                                          name, data, time.time())
        return status.split()[-1] == "1"

    async def package(self, name: str) -> bytes | None:
        data = await self._pool.fetchval("UPDATE status_packages SET used = $2 WHERE name = $1 RETURNING data",
                                         name, time.time())
        return None if data is None else bytes(data)

    async def package_size(self, name: str) -> int | None:
        size = await self._pool.fetchval("SELECT octet_length(data) FROM status_packages WHERE name = $1", name)
        return None if size is None else int(size)

    async def prune_packages(self, before: float) -> int:
        status = await self._pool.execute("DELETE FROM status_packages WHERE used < $1", before)
        return int(status.split()[-1])

    async def leader(self) -> str | None:
        try:
            return await self._pool.fetchval("SELECT holder FROM rmcs_leader WHERE id = 1 AND expires > now()")
        except asyncpg.UndefinedTableError:  # no failover group: no lease
            return None
