"""Leadership held in PostgreSQL, with fencing, for daemons that share state there.

One row (`rmcs_leader`) holds the leader's epoch, its name and when its lease ends, on the
database's clock. A standby takes the row once the lease has ended, raising the epoch; the
leader renews it every `leader_tick_s`. Every write that matters (journal rows, ends, stops)
carries the epoch, and the store refuses a stale one (`pgbase.Fenced`).

A leader that was only cut off, or frozen (SIGSTOP) past its lease, counts itself as no longer
leading as soon as its own clock says the lease has run out since its last renewal: it sends
nothing to Ray from then on, its writes are refused, and it steps down by itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Callable

import asyncpg
import structlog

from .pgbase import LEADER_TABLE, close_pool, connect, migrate
from .settings import Settings

log = structlog.get_logger("rmcs.leadership")

LEASE_TICKS = 3


class DbLeadership:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.leading = asyncio.Event()
        self.epoch: int | None = None
        self._lost = False
        self._renewed = 0.0
        self._pool: asyncpg.Pool | None = None

    @property
    def lease_s(self) -> float:
        return LEASE_TICKS * self.settings.leader_tick_s

    @property
    def lost(self) -> bool:
        """Once leading: lost when told so, or when the lease has run out by this daemon's own
        clock (it may have been frozen, or cut off from the database)."""
        if not self._lost and self.leading.is_set() and self.clock() - self._renewed > self.lease_s:
            self.step_down("the lease ran out by this daemon's own clock")
        return self._lost

    def step_down(self, why: str) -> None:
        if not self._lost:
            log.error("leadership lost; stepping down", instance=self.name, epoch=self.epoch, why=why)
        self._lost = True

    async def join(self, connection: object = None) -> None:
        self._pool = await connect(self.settings.state_url, max_size=1)
        await migrate(self._pool, "leader", (LEADER_TABLE,))
        log.info("standing by for leadership", instance=self.name, lease_s=self.lease_s)

    async def close(self) -> None:
        if self._pool is not None:
            await close_pool(self._pool)
            self._pool = None

    async def _try_acquire(self) -> None:
        assert self._pool is not None
        started = self.clock()
        epoch = await self._pool.fetchval(
            "UPDATE rmcs_leader SET epoch = epoch + 1, holder = $1,"
            " expires = clock_timestamp() + make_interval(secs => $2)"
            " WHERE id = 1 AND expires < clock_timestamp() RETURNING epoch", self.name, self.lease_s)
        if epoch is not None:
            self.epoch = int(epoch)
            self._renewed = started
            if self.clock() - started > self.lease_s / 2 and not await self._renew():
                # The statement waited long (on the row lock of a frozen leader's session, until
                # the server ended it), so the lease, counted from before it, is nearly spent: it
                # is renewed at once, or another daemon has it already.
                return
            log.info("leadership acquired", instance=self.name, epoch=self.epoch)
            self.leading.set()

    async def _renew(self) -> bool:
        assert self._pool is not None
        started = self.clock()
        held = await self._pool.fetchval(
            "UPDATE rmcs_leader SET expires = clock_timestamp() + make_interval(secs => $2) WHERE id = 1 AND epoch = $1"
            " RETURNING epoch", self.epoch, self.lease_s)
        if held is None:
            return False
        self._renewed = started  # from before the request: the lease may have started then
        return True

    async def acquired(self, stopping: asyncio.Event) -> bool:
        """Wait until this daemon leads (True) or is told to stop first (False)."""
        while not stopping.is_set() and not self.leading.is_set():
            try:
                await self._try_acquire()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("leadership: database not answering", error=str(exc))
            if not self.leading.is_set():
                try:
                    await asyncio.wait_for(stopping.wait(), self.settings.leader_tick_s)
                except asyncio.TimeoutError:
                    pass
        return self.leading.is_set() and not stopping.is_set()

    async def run(self, stopping: asyncio.Event, on_lost: Callable[[], None]) -> None:
        """Renew the lease every `leader_tick_s` while leading; step down when it cannot."""
        while not stopping.is_set():
            if self.leading.is_set():
                try:
                    if not self.lost and not await self._renew():
                        self.step_down("another daemon holds a later epoch")
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("leadership: lease not renewed", error=str(exc))
                if self.lost:
                    on_lost()
                    return
            try:
                await asyncio.wait_for(stopping.wait(), self.settings.leader_tick_s)
            except asyncio.TimeoutError:
                pass
