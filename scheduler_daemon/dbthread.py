"""One SQLite database on a thread of its own, with group commit.

The event loop never waits on SQLite: every operation runs on the database's one thread.
Operations queued while that thread is busy run together in the next transaction, so a
burst costs one commit instead of one each. If one of them fails, the transaction is rolled
back and each runs again in a transaction of its own, so the failure stays its own: it
raises to its caller and the others commit. An operation's future resolves only after its
transaction has committed. A read alone runs without a transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]


class DbThread:
    def __init__(self, path: str | Path, thread_name: str, setup: Callable[[sqlite3.Connection], None],
                 *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._setup = setup
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._db: sqlite3.Connection | None = None
        self._queued: list[tuple[Op, bool, asyncio.Future[Any], bool]] = []
        self._sync_now = ""  # the connection's synchronous setting, as last set (on the thread)
        self._busy = False
        self.batches = 0  # trips to the thread (what group commit saves)

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self) -> None:
        def _open() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL (the journal): a commit, and so an acknowledged dispatch, survives a power loss,
            # not only a killed process; group commit keeps that to one sync per batch. NORMAL
            # (the status cache, rebuilt from events): durable across a killed process.
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            self._sync_now = self._synchronous
            self._setup(db)
            return db

        self._db = await asyncio.get_running_loop().run_in_executor(self._pool, _open)

    async def close(self) -> None:
        if self._db is not None:
            await self.run(lambda db: None)  # after everything queued before it
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._pool, db.close)
        self._pool.shutdown(wait=True)

    def run(self, op: Callable[[sqlite3.Connection], T], *, read: bool = False,
            durable: bool = True) -> "asyncio.Future[T]":
        """Queue `op(db)`; the future gives its result once its transaction has committed.
        `read`: the op only reads (alone, it needs no transaction). `durable=False`: its commit
        need only survive a killed process (what the daemon can learn again after a power loss,
        e.g. from Ray), so a batch of such ops alone commits without waiting for the disk."""
        assert self._db is not None, "database not open"
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((op, read, future, durable))
        self._next_batch()
        return future

    def _next_batch(self) -> None:
        if self._busy or not self._queued or self._db is None:
            return
        batch, self._queued = self._queued, []
        self._busy = True
        self.batches += 1
        ops = [op for op, _, _, _ in batch]
        work = _read_alone if len(batch) == 1 and batch[0][1] else _transaction
        sync = self._synchronous if any(d for _, read, _, d in batch if not read) else "NORMAL"
        done = asyncio.get_running_loop().run_in_executor(self._pool, self._with_sync, work, sync, ops)

        def resolve(done: "asyncio.Future[list[tuple[bool, Any]]]") -> None:
            self._busy = False
            error = None if done.cancelled() else done.exception()
            for i, (_, _, future, _) in enumerate(batch):
                if future.done():
                    continue
                if done.cancelled():
                    future.cancel()
                elif error is not None:
                    future.set_exception(error)
                else:
                    ok, value = done.result()[i]
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            self._next_batch()

        done.add_done_callback(resolve)


    def _with_sync(self, work: Callable[[sqlite3.Connection, list[Op]], list[tuple[bool, Any]]], sync: str,
                   ops: list[Op]) -> list[tuple[bool, Any]]:
        """On the thread: set the batch's synchronous level (between transactions), then run it."""
        assert self._db is not None
        if sync != self._sync_now:
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._sync_now = sync
        return work(self._db, ops)


def _read_alone(db: sqlite3.Connection, ops: list[Op]) -> list[tuple[bool, Any]]:
    try:
        return [(True, ops[0](db))]
    except Exception as exc:
        return [(False, exc)]


def _transaction(db: sqlite3.Connection, ops: list[Op]) -> list[tuple[bool, Any]]:
    """Run `ops` in one transaction: each one's (ok, result or exception). If one fails, all
    are undone and run again one transaction each."""
    try:
        return [(True, value) for value in _commit(db, ops)]
    except Exception as exc:
        if len(ops) == 1:
            return [(False, exc)]
    results: list[tuple[bool, Any]] = []
    for op in ops:
        try:
            results.append((True, _commit(db, [op])[0]))
        except Exception as exc:
            results.append((False, exc))
    return results


def _commit(db: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    db.execute("BEGIN")
    try:
        values = [op(db) for op in ops]
        db.execute("COMMIT")
        return values
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
