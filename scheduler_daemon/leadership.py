"""Leadership for two daemons on one intake queue: one dispatches, the other stands by.

RabbitMQ's single-active-consumer delivers a queue's messages to one consumer at a time and
hands the queue to the next consumer when the active one's channel closes (its process died,
its connection dropped). The intake consumer cannot carry that role: the daemon cancels it
whenever the clusters are full (backpressure), which would hand the intake to the standby.

So every daemon also consumes `<intake_queue>.leader`, a small queue declared with
`x-single-active-consumer`, and publishes a tick to it every `leader_tick_s`. Only the active
consumer receives ticks: the daemon that receives one leads. A leader that has received no
tick for `LEASE_TICKS` ticks has lost its connection or its place, and steps down; the daemon
then stops and its supervisor starts it again as a standby.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Callable

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from .settings import Settings

log = structlog.get_logger("rmcs.leadership")

LEASE_TICKS = 3


def leader_queue(settings: Settings) -> str:
    return f"{settings.intake_queue}.leader"


class Leadership:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.leading = asyncio.Event()
        self.lost = False
        self.epoch: int | None = None  # no fencing on one host (the journal is a local file)
        self._last_tick = 0.0
        self._ticked = asyncio.Event()
        self._channel: AbstractRobustChannel | None = None

    @property
    def lease_s(self) -> float:
        return LEASE_TICKS * self.settings.leader_tick_s

    async def join(self, connection: AbstractRobustConnection) -> None:
        """Line up as a consumer of the leader queue (first in line leads)."""
        self._channel = await connection.channel()
        queue = await self._channel.declare_queue(leader_queue(self.settings), durable=False, arguments={
            "x-single-active-consumer": True,
            "x-message-ttl": int(self.lease_s * 1000),  # nobody consuming: ticks do not pile up
        })
        await queue.consume(self._on_tick, no_ack=True)
        log.info("standing by for leadership", instance=self.name, queue=leader_queue(self.settings))

    def step_down(self, why: str) -> None:
        log.error("leadership lost; stepping down", instance=self.name, why=why)
        self.lost = True

    async def close(self) -> None:
        pass

    async def _on_tick(self, message: AbstractIncomingMessage) -> None:
        self._last_tick = self.clock()
        self._ticked.set()
        if not self.leading.is_set() and not self.lost:
            log.info("leadership acquired", instance=self.name)
            self.leading.set()

    async def acquired(self, stopping: asyncio.Event) -> bool:
        """Wait until this daemon leads (True) or is told to stop first (False)."""
        lead = asyncio.ensure_future(self.leading.wait())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({lead, stop}, return_when=asyncio.FIRST_COMPLETED)
        lead.cancel()
        stop.cancel()
        return self.leading.is_set() and not stopping.is_set()

    async def run(self, stopping: asyncio.Event, on_lost: Callable[[], None]) -> None:
        """Publish a tick every `leader_tick_s`; once leading, step down when ticks stop coming."""
        tick = self.settings.leader_tick_s
        while not stopping.is_set():
            await self._publish_tick()
            if self.leading.is_set() and self.clock() - self._last_tick > self.lease_s \
                    and not await self._ticks_resume(tick):
                self.lost = True
                log.error("leadership lost: no tick for the lease; stepping down", instance=self.name,
                          lease_s=self.lease_s)
                on_lost()
                return
            try:
                await asyncio.wait_for(stopping.wait(), tick)
            except asyncio.TimeoutError:
                pass

    async def _ticks_resume(self, within: float) -> bool:
        """Whether a tick arrives within `within` s. When this loop was stalled (a long callback,
        a paused process) the ticks of the stall wait unread in the socket, and this task may run
        before the reader: the lease looks run out though the broker still counts this daemon
        as leader. A leader that still leads gets the tick just published; one that does not
        steps down a tick later than the lease."""
        self._ticked.clear()
        try:
            await asyncio.wait_for(self._ticked.wait(), within)
        except asyncio.TimeoutError:
            return False
        log.warning("leader ticks were late (this event loop stalled); still leading", instance=self.name)
        return True

    async def _publish_tick(self) -> None:
        if self._channel is None or self._channel.is_closed:
            return
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(self.name.encode(), delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                routing_key=leader_queue(self.settings))
        except Exception as exc:  # broker away: the lease runs out if it stays away
            log.warning("leader tick not published", error=str(exc))
