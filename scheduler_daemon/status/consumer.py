"""The status cache's consumers: lifecycle events into the store, stop requests into the daemon.

Both have durable queues of their own on the event exchange, so nothing is missed while
the daemon is down: `rmcs.status` (bound to `job.#` and `cluster.#`) and
`rmcs.control.stop` (bound to `control.stop`). A message is acknowledged once the store
has it (or the stop was handled). A stop request speaks for the broker user in its `user_id`
(checked by RabbitMQ), which the daemon holds against the job's owner.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from ..settings import Settings
from .hub import EventHub
from .store import StatusStore

log = structlog.get_logger("rmcs.status")

StopCallback = Callable[[str, str, "str | None"], Awaitable[Mapping[str, Any]]]


class StatusConsumer:
    def __init__(self, settings: Settings, store: StatusStore, hub: EventHub, on_stop: StopCallback) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self._on_stop = on_stop
        self.applied = 0

    async def start(self, connection: AbstractRobustConnection) -> None:
        s = self.settings
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=64)
        events = await channel.declare_exchange(s.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        self._events = events
        self._channel = channel
        status = await channel.declare_queue(s.status_queue, durable=True)
        for key in ("job.#", "cluster.#"):
            await status.bind(events, key)
        control = await channel.declare_queue(s.control_queue, durable=True)
        await control.bind(events, "control.stop")
        await status.consume(self._on_event)
        await control.consume(self._on_control)

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
            elif key.startswith("cluster."):
                await self.store.set_cluster_health(str(event.get("cluster")), str(event.get("health")),
                                                    str(event.get("ts")), event.get("message"))
        except (TypeError, ValueError, OverflowError) as exc:  # a foreign event of the wrong shape
            log.warning("malformed event dropped", error=str(exc), routing_key=key)
            await message.ack()
            return
        self.hub.publish(event)
        await message.ack()

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        try:
            request = orjson.loads(message.body)
            sid = request["submission_id"]
            reason = request.get("reason") or "stop requested"
            if not isinstance(sid, str) or not isinstance(reason, str):
                raise TypeError("submission_id and reason must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            answer: Mapping[str, Any] = {"submission_id": None, "outcome": "invalid",
                                         "message": f"stop request not understood: {exc}"}
        else:
            answer = await self._on_stop(sid, reason, message.user_id)
        await self._answer(message, answer)
        await message.ack()

    async def _answer(self, request: AbstractIncomingMessage, answer: Mapping[str, Any]) -> None:
        """Publish the outcome as `control.stop.answer`, and to `reply_to` when the request set it."""
        body = orjson.dumps({"event": "control.stop.answer", **answer})
        msg = aio_pika.Message(body, content_type="application/json", correlation_id=request.correlation_id)
        await self._events.publish(msg, routing_key="control.stop.answer")
        if request.reply_to:
            await self._channel.default_exchange.publish(msg, routing_key=request.reply_to)
