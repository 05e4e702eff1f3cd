"""PostgreSQL for the shared state (`state_url: postgresql://...`): the pool, the migrations,
group commit, and the fence every write that matters goes through.

Migrations are numbered steps per component (`journal`, `status`), recorded in
`rmcs_migrations`; a daemon applies the ones missing under an advisory lock, so two daemons
starting together apply each step once.

Writes queued while a transaction is in flight go together into the next one (as `dbthread`
does for SQLite): a burst costs one commit. If one fails, each runs again on its own, so the
failure is its caller's alone. A fenced write (`epoch` given) first reads the leader row with
FOR SHARE: a takeover (which updates that row) waits for the transaction, and a write from a
leader whose epoch has passed raises `Fenced` and changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Sequence

import asyncpg

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS rmcs_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)"""
_LOCK_KEY = 0x726D6373  # "rmcs"

LEADER_TABLE = """
CREATE TABLE IF NOT EXISTS rmcs_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
INSERT INTO rmcs_leader VALUES (1, 0, '', now()) ON CONFLICT (id) DO NOTHING"""


class Fenced(Exception):
    """A write from a leader whose epoch has passed: another daemon leads now."""

    def __init__(self, epoch: int, current: int) -> None:
        super().__init__(f"epoch {epoch} is fenced off: the leader's epoch is now {current}")
        self.epoch = epoch
        self.current = current


async def connect(dsn: str, *, max_size: int = 8, idle_in_transaction_s: float = 5.0,
                  synchronous_commit: str = "on", init: Any = None) -> asyncpg.Pool:
    """A pool whose sessions the server ends when one sits in a transaction for
    `idle_in_transaction_s`: a daemon frozen (SIGSTOP) in the middle of a fenced write then
    releases the leader row, and the takeover does not wait for it to thaw. `synchronous_commit`
    "off": its sessions' commits do not wait for the server's disk. `init(conn)`: run on each new
    session (the pool opens new ones after the server restarts)."""
    settings = {"idle_in_transaction_session_timeout": str(max(100, int(idle_in_transaction_s * 1000))),
                "synchronous_commit": synchronous_commit}
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, command_timeout=30, init=init,
                                     server_settings=settings)
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, timeout_s: float = 3.0) -> None:
    """Close `pool`, waiting at most `timeout_s` for its sessions to be given back, then
    terminate what is left: a session wedged by the server going away under it (asyncpg's
    "another operation is in progress") is never given back, and a plain close waits for it for
    ever (seen when a test ended the journal's sessions with pg_terminate_backend). 3 s: within
    the daemon's shutdown step for the journal (5 s), which closes its two pools together."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        pool.terminate()


async def migrate(pool: asyncpg.Pool, component: str, steps: Sequence[str]) -> int:
    """Apply the steps of `component` not applied yet, in order; returns how many ran."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(MIGRATIONS_TABLE)
        done = {r["version"] for r in await conn.fetch(
            "SELECT version FROM rmcs_migrations WHERE component = $1", component)}
        ran = 0
        for version, sql in enumerate(steps, start=1):
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO rmcs_migrations (component, version) VALUES ($1, $2)",
                               component, version)
            ran += 1
        return ran


@dataclass(frozen=True)
class Stmt:
    sql: str
    args: tuple[Any, ...] = ()
    many: bool = False  # args is a list of argument tuples


async def check_epoch(conn: asyncpg.Connection, epoch: int | None) -> None:
    if epoch is None:
        return
    current = await conn.fetchval("SELECT epoch FROM rmcs_leader WHERE id = 1 FOR SHARE")
    if current != epoch:
        raise Fenced(epoch, int(current or 0))


class GroupCommit:
    """Writes in order, with group commit. `epoch()`: the epoch each write is fenced with
    (None: not fenced). `lazy`: a pool whose sessions commit with synchronous_commit off, where a
    lone statement that need not be durable goes in one round trip (else it needs a transaction
    and a SET LOCAL: four)."""

    def __init__(self, pool: asyncpg.Pool, epoch: Any = lambda: None, lazy: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.lazy = lazy
        self._epoch = epoch
        self._queued: list[tuple[list[Stmt], asyncio.Future[Any], bool]] = []
        self._busy = False
        self._drainer: asyncio.Future[None] | None = None
        self.batches = 0

    def run(self, stmts: list[Stmt], *, durable: bool = True) -> "asyncio.Future[Any]":
        """Queue `stmts` (one unit); the future gives the last statement's status once committed.
        `durable=False`: a batch of such units alone does not wait for the WAL to reach the disk
        (synchronous_commit off: lost only with the server's power, never half-applied)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((stmts, future, durable))
        if not self._busy:
            self._busy = True
            self._drainer = asyncio.ensure_future(self._drain())  # errors go to the futures
        return future

    async def flush(self) -> None:
        """Wait for everything queued so far."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                self.batches += 1
                try:
                    results = await self._commit([s for s, _, _ in batch], any(d for _, _, d in batch))
                    for (_, future, _), value in zip(batch, results):
                        if not future.done():
                            future.set_result(value)
                except Exception as exc:
                    if len(batch) == 1:
                        if not batch[0][1].done():
                            batch[0][1].set_exception(exc)
                        continue
                    for stmts, future, durable in batch:  # each alone: a failure stays its own
                        try:
                            value = (await self._commit([stmts], durable))[0]
                            if not future.done():
                                future.set_result(value)
                        except Exception as one:
                            if not future.done():
                                future.set_exception(one)
        finally:
            self._busy = False

    async def _commit(self, units: list[list[Stmt]], durable: bool) -> list[Any]:
        epoch = self._epoch()
        if epoch is None and len(units) == 1 and len(units[0]) == 1 and not units[0][0].many:
            # One statement, not fenced: its own transaction, one round trip (a dispatch's intent).
            lone = units[0][0]
            if durable:
                return [await self.pool.execute(lone.sql, *lone.args)]
            if self.lazy is not None:
                return [await self.lazy.execute(lone.sql, *lone.args)]
        unfenced_lazy = epoch is None and not durable and self.lazy is not None
        groups = _grouped(units) if unfenced_lazy or len(units) > 1 else {}  # not for one record
        if unfenced_lazy and len(groups) == 1 and self.lazy is not None:
            # One statement text, not fenced (a burst of intents): one atomic executemany
            # (asyncpg >= 0.22), one round trip, not four.
            ((sql, args),) = groups.items()
            await self.lazy.executemany(sql, args)
            return [None] * len(units)
        async with self.pool.acquire() as conn, conn.transaction():
            await check_epoch(conn, epoch)
            if not durable:
                await conn.execute("SET LOCAL synchronous_commit TO off")
            if len(units) == 1:
                value = None
                for s in units[0]:
                    if s.many:
                        await conn.executemany(s.sql, s.args)
                    else:
                        value = await conn.execute(s.sql, *s.args)
                return [value]
            # Many units: each statement text once, with every unit's arguments in one pipelined
            # executemany, in the order the texts first came (a job's intent before the delete
            # of it that its record carries; one job's records in the order they were written).
            for sql, args in groups.items():
                await conn.executemany(sql, args)
            return [None] * len(units)


def _grouped(units: list[list[Stmt]]) -> dict[str, list[tuple[Any, ...]]]:
    """Each statement text once, with every unit's arguments, in the order the texts first came."""
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for stmts in units:
        for s in stmts:
            groups.setdefault(s.sql, []).extend(s.args if s.many else [s.args])
    return groups
