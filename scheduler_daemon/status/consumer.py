"""The status cache's consumer: lifecycle events into the store and out to the live hub.

Its queue is durable, on the event exchange, so nothing is missed while the status service is
down: `rmcs.status` (bound to `job.#` and `cluster.#`). A message is acknowledged once the store
has it; one the store fails on (its database session ended, say) goes back to the queue. (Stop
requests are the scheduler's own: `control.py`.)
"""

from __future__ import annotations

import asyncio
from typing import Callable

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from producers.wire import CLUSTER_EVENTS, JOB_EVENTS

from ..settings import Settings
from .hub import EventHub
from .store import ForeignOwner, StatusStore

log = structlog.get_logger("rmcs.status")

# A store that failed an event gets it again after this long (its pool opens a new session).
STORE_RETRY_S = 0.5


class StatusConsumer:
    def __init__(self, settings: Settings, store: StatusStore, hub: EventHub,
                 on_job_event: Callable[[dict[str, object]], None] = lambda event: None) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self._on_job_event = on_job_event  # after the store has it (the log tails look at it)
        self.applied = 0
        self._live_apart = False

    async def start(self, connection: AbstractRobustConnection) -> None:
        s = self.settings
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=64)
        events = await channel.declare_exchange(s.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        status = await channel.declare_queue(s.status_queue, durable=True)
        for key in (JOB_EVENTS, CLUSTER_EVENTS):
            await status.bind(events, key)
        await status.consume(self._on_event)
        if s.failover and s.shared_state:
            # The daemons of a group share the durable queue, so each event reaches the shared
            # store through one of their services. Each service's live stream hears every event
            # on a queue of its own (server-named, gone with its connection).
            live = await channel.declare_queue(exclusive=True, auto_delete=True)
            for key in (JOB_EVENTS, CLUSTER_EVENTS):
                await live.bind(events, key)
            await live.consume(self._on_live, no_ack=True)
            self._live_apart = True

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning("unreadable event dropped", error=str(exc), routing_key=message.routing_key)
            await message.ack()
            return
        key = str(event.get("event") or message.routing_key or "")
        try:
            if key.startswith("job."):
                await self.store.apply(event)
                self.applied += 1
                self._on_job_event(event)
            elif key.startswith("cluster."):
                await self.store.set_cluster_health(str(event.get("cluster")), str(event.get("health")),
                                                    str(event.get("ts")), event.get("message"))
        except ForeignOwner as exc:  # e.g. a REJECTED for someone else's job: neither stored nor streamed
            log.warning("event for another owner's job dropped", error=str(exc), routing_key=key)
            await message.ack()
            return
        except (TypeError, ValueError, OverflowError) as exc:  # a foreign event of the wrong shape
            log.warning("malformed event dropped", error=str(exc), routing_key=key)
            await message.ack()
            return
        except Exception as exc:  # the store could not take it now (its database session ended, say)
            log.error("event not stored; it goes back to the queue", error=repr(exc), routing_key=key)
            await asyncio.sleep(STORE_RETRY_S)
            await message.nack(requeue=True)
            return
        if not self._live_apart:
            self.hub.publish(event)
        await message.ack()

    async def _on_live(self, message: AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
        except ValueError:
            return
        if isinstance(event, dict):
            self.hub.publish(event)
