"""The broker edge: consume the intake queue, decode messages, acknowledge by policy.

Backpressure: the channel's prefetch is the window size, and the consumer is only
registered while the daemon has room and some cluster has spare capacity; otherwise it
is cancelled and the backlog, with its priority order, stays in RabbitMQ.

Ack policy: a message is acknowledged only when its job has a final intake outcome
(dispatched and journaled, rejected, cancelled or expired). A rejected message is
republished to the dead-letter exchange with the reason in `x-rmcs-reason`, confirmed,
then acknowledged, so it is never lost between the two.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from typing import Awaitable, Callable

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from producers.config import broker_user

from .broker import Topology, declare_topology
from .events import publish_confirmed
from .jobs import (ATTEMPT_HEADER, OWNER_HEADER, PREEMPTIONS_HEADER, REASON_HEADER, RELEASED_HEADER, Job,
                   MessageMeta)
from .queueconf import DEFAULT, queue_of_key, routing_key_of
from .settings import Settings

log = structlog.get_logger("rmcs.intake")

MessageHandler = Callable[[AbstractIncomingMessage, str], Awaitable[None]]  # (message, rmcs queue)


def message_meta(message: AbstractIncomingMessage, daemon_user: str | None = None,
                 default_owner: str | None = None, queue: str = DEFAULT) -> MessageMeta:
    """The properties that matter. The owner is the broker-checked `user_id` (else `default_owner`).
    The attempt and owner headers of a retry count only on a message from the daemon's own
    broker user: anyone else's copy of a job id is a new submission, not a later attempt of it."""
    headers = message.headers or {}
    from_daemon = daemon_user is not None and message.user_id == daemon_user
    attempt = headers.get(ATTEMPT_HEADER, 1) if from_daemon else 1
    owner = headers.get(OWNER_HEADER) if from_daemon else None
    preemptions = headers.get(PREEMPTIONS_HEADER, 0) if from_daemon else 0
    if isinstance(owner, bytes):
        owner = owner.decode("utf-8", "replace")
    if not isinstance(owner, str) or not owner:
        owner = message.user_id or default_owner
    return MessageMeta(
        message_id=message.message_id,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        attempt=attempt if isinstance(attempt, int) and attempt >= 1 else 1,
        owner=owner,
        queue=queue,
        preemptions=preemptions if isinstance(preemptions, int) and preemptions >= 0 else 0,
    )


class Intake:
    def __init__(self, settings: Settings, handler: MessageHandler, closed: asyncio.Event) -> None:
        self.settings = settings
        self._closed = closed
        self._handler = handler
        self.connection: AbstractRobustConnection | None = None
        self.consume_channel: AbstractRobustChannel | None = None
        self.publish_channel: AbstractRobustChannel | None = None
        self.topology: Topology | None = None
        self._publish_topology: Topology | None = None
        self._consumer_tags: dict[str, str] = {}  # rmcs queue -> consumer tag, while consuming
        self._unrouted_tag: str | None = None
        self._depth_channel: AbstractRobustChannel | None = None
        self._gate = asyncio.Lock()
        self.consumed = 0
        # The broker user of amqp_url: set as user_id on retries, so that they can be told apart.
        self.user = broker_user(settings.amqp_url)

    async def connect(self) -> None:
        self.connection = await aio_pika.connect_robust(self.settings.amqp_url, client_properties={
            "connection_name": f"rmcs-scheduler-daemon {socket.gethostname()}:{os.getpid()}"},
            **self.settings.amqp_connect_kwargs())
        self.consume_channel = await self.connection.channel()
        await self.consume_channel.set_qos(prefetch_count=self.settings.window_size)
        self.topology = await declare_topology(self.consume_channel, self.settings)
        self.publish_channel = await self.connection.channel(publisher_confirms=True)
        self._publish_topology = await declare_topology(self.publish_channel, self.settings)

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed and \
            self.consume_channel is not None and not self.consume_channel.is_closed

    @property
    def events_exchange(self) -> aio_pika.abc.AbstractExchange:
        assert self._publish_topology is not None
        return self._publish_topology.events

    @property
    def active(self) -> bool:
        return bool(self._consumer_tags)

    def is_active(self, queue: str) -> bool:
        return queue in self._consumer_tags

    async def set_active(self, want: bool, queue: str = DEFAULT) -> None:
        """Register or cancel the consumer of one queue; a no-op when already as wanted."""
        async with self._gate:
            if self.topology is None or want == (queue in self._consumer_tags):
                return
            source = self.topology.queues[queue]
            try:
                if want:
                    self._consumer_tags[queue] = await source.consume(
                        self._on_message if queue == DEFAULT else functools.partial(self._on_message, queue=queue),
                        no_ack=False)
                else:
                    await source.cancel(self._consumer_tags.pop(queue))
            except Exception as exc:  # channel closed: the robust connection restores it
                log.warning("consumer gate change failed", want=want, queue=queue, error=str(exc))
                if not want:
                    self._consumer_tags.pop(queue, None)

    async def consume_unrouted(self, handler: Callable[[AbstractIncomingMessage], Awaitable[None]]) -> None:
        """Hand `handler` every message that reached the intake exchange's alternate exchange
        (routed to no queue: a queue that does not exist, or was removed); it rejects them."""
        assert self.topology is not None
        self._unrouted_tag = await self.topology.unrouted.consume(handler, no_ack=False)

    async def _on_message(self, message: AbstractIncomingMessage, queue: str = DEFAULT) -> None:
        self.consumed += 1
        try:
            await self._handler(message, queue)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The handler decides every outcome; an exception here is a bug. Put the
            # message back rather than lose it, and keep consuming.
            log.exception("intake handler failed; message requeued")
            await self.requeue(message)

    async def ack(self, message: AbstractIncomingMessage) -> bool:
        try:
            await message.ack()
            return True
        except Exception as exc:  # stale channel after a reconnect: the broker redelivers
            log.warning("ack failed; the message will be redelivered", error=str(exc))
            return False

    async def requeue(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.nack(requeue=True)
        except Exception as exc:
            log.warning("requeue failed; the broker requeues on channel close", error=str(exc))

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> bool:
        """Copy the message to the dead-letter exchange with its reason, then ack it."""
        assert self._publish_topology is not None
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            priority=message.priority if isinstance(message.priority, int) and 0 <= message.priority <= 255 else None,
        )
        await self._publish_topology.dlx.publish(copy, routing_key="")
        return await self.ack(message)

    async def publish_retry(self, job: Job, next_attempt: int, preempted: bool = False, *,
                            released: bool = False) -> None:
        """Put a job back in its queue for another attempt (confirmed); after a preemption the
        attempt is counted as one, so that it does not use up max_retries; `released`: a
        waiting job whose dependencies are met (the same attempt)."""
        preemptions = job.preemptions + (1 if preempted else 0)
        data = orjson.loads(job.body) if job.body else {}
        data["submission_id"] = job.submission_id
        if "entrypoint" in data:  # native format; the seed formats carry their own job name
            data["job_id"] = job.job_id
        await publish_confirmed(
            lambda: self._topology().intake,
            aio_pika.Message(
                orjson.dumps(data),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=job.priority,
                message_id=job.submission_id,
                correlation_id=job.correlation_id,
                reply_to=job.reply_to,
                user_id=self.user,
                headers={ATTEMPT_HEADER: next_attempt, **({OWNER_HEADER: job.owner} if job.owner else {}),
                         **({RELEASED_HEADER: 1} if released else {}),
                         **({PREEMPTIONS_HEADER: preemptions} if preemptions else {})},
            ),
            routing_key_of(self.settings.intake_routing_key, job.queue),
            self._closed,
        )

    def _topology(self) -> Topology:
        assert self._publish_topology is not None
        return self._publish_topology

    @staticmethod
    def is_live(message: AbstractIncomingMessage) -> bool:
        """Whether the channel that delivered `message` is still open (it can still be acked)."""
        try:  # aio-pika raises when the delivering channel is closed
            return not message.channel.is_closed
        except Exception:
            return False

    async def queue_depth(self, queue: str = DEFAULT) -> int | None:
        """Messages waiting in the RabbitMQ queue of an rmcs queue, as the broker reports them
        (None: not connected, or no such queue)."""
        if self.connection is None or self.connection.is_closed:
            return None
        if self._depth_channel is None or self._depth_channel.is_closed:
            self._depth_channel = await self.connection.channel()
        try:
            result = await self._depth_channel.declare_queue(queue_of_key(self.settings.intake_queue, queue),
                                                             passive=True)
        except aio_pika.exceptions.ChannelClosed:  # no such queue: the broker closes the channel
            return None
        return int(result.declaration_result.message_count or 0)

    async def stop_consuming(self) -> None:
        for queue in list(self._consumer_tags):
            await self.set_active(False, queue)
        if self._unrouted_tag is not None and self.topology is not None:
            tag, self._unrouted_tag = self._unrouted_tag, None
            try:
                await self.topology.unrouted.cancel(tag)
            except Exception as exc:
                log.warning("unrouted consumer cancel failed", error=str(exc))

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
