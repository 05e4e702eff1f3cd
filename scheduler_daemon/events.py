"""Lifecycle and cluster-health events, published to the topic exchange with confirms.

Routing keys: `job.<state>.<cluster or _>` and `cluster.<up|degraded|down>.<cluster>`.
Events are at-least-once; consumers dedupe on (submission_id, state, attempt).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol, Sequence

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractExchange
from pamqp.commands import Basic

from producers.wire import job_event_key

from .amqp_wire import Outgoing
from .jobs import Job, JobState

log = structlog.get_logger("rmcs.events")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobEvent:
    state: JobState
    submission_id: str | None
    job_id: str | None
    cluster: str | None
    attempt: int = 1
    message: str | None = None
    final: bool = False
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    priority: int | None = None
    resource_requirements: Mapping[str, float] = field(default_factory=dict)
    correlation_id: str | None = None
    reply_to: str | None = None
    owner: str | None = None
    queue: str | None = None
    ts: str = field(default_factory=now_rfc3339)
    depends_on: tuple[str, ...] = ()

    @classmethod
    def of(cls, job: Job, state: JobState, cluster: str | None, message: str | None = None,
           final: bool = False) -> "JobEvent":
        return cls(state, job.submission_id, job.job_id, cluster, job.attempt, message, final,
                   job.tags, dict(job.metadata), job.priority, dict(job.resources),
                   job.correlation_id, job.reply_to, job.owner, job.queue, depends_on=job.depends_on)

    @property
    def routing_key(self) -> str:
        return job_event_key(self.state.value, self.cluster)

    def body(self) -> dict[str, Any]:
        return {
            "event": self.routing_key,
            "state": self.state.value,
            "submission_id": self.submission_id,
            "job_id": self.job_id,
            "cluster": self.cluster,
            "attempt": self.attempt,
            "ts": self.ts,
            "message": self.message,
            "final": self.final,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "priority": self.priority,
            "resource_requirements": dict(self.resource_requirements),
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "owner": self.owner,
            "queue": self.queue,
            **({"depends_on": list(self.depends_on)} if self.depends_on else {}),
        }


@dataclass(frozen=True)
class ClusterEvent:
    cluster: str
    health: str
    message: str | None = None
    ts: str = field(default_factory=now_rfc3339)

    @property
    def routing_key(self) -> str:
        return f"cluster.{self.health}.{self.cluster}"

    def body(self) -> dict[str, Any]:
        return {"event": self.routing_key, "cluster": self.cluster, "health": self.health,
                "ts": self.ts, "message": self.message}


async def publish_confirmed(exchange: Callable[[], AbstractExchange], message: aio_pika.Message,
                            routing_key: str, closed: asyncio.Event, retry_s: float = 0.5) -> None:
    """Publish and wait for the broker's confirm, retrying through broker outages until it
    succeeds, or until `closed` is set (then `PublishAborted`)."""
    while True:
        try:
            await exchange().publish(message, routing_key=routing_key)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # broker away: keep the message, try again
            if closed.is_set():
                raise PublishAborted(str(exc)) from exc
            log.warning("publish failed, retrying", routing_key=routing_key, error=str(exc))
            try:
                await asyncio.wait_for(closed.wait(), retry_s)
            except asyncio.TimeoutError:
                pass


class Wire(Protocol):
    async def publish_batch(self, items: Sequence[Outgoing]) -> "list[asyncio.Future[Any]]":
        """Put every item on the wire, in order, and return a future per item that resolves
        with the broker's confirm (or fails with its refusal or the channel's closing). Raises
        if none of them could be sent."""


@dataclass
class _Outgoing:
    routing_key: str
    body: bytes
    properties: Basic.Properties
    key: str  # whose event: at most one per key in a batch, so each key's events keep their order
    confirmed: "asyncio.Future[None]"


class EventPublisher:
    """An ordered outbox for events, confirmed by the broker in batches.

    `send` queues an event and returns at once with a future that resolves when the broker
    has confirmed it; `publish` is `send` and wait. One sender puts everything queued on the
    wire in the order it was sent, then waits for those confirms together before the next
    batch: a burst of events costs one confirm wait, not one each. A batch holds at most one
    event of each job (or cluster), so a job's events are confirmed one after the other and a
    publish the broker refuses cannot be overtaken by a later event of the same job. Failed
    publishes go again, in their order, before anything sent since, and the sender keeps trying
    through a broker outage. A consumer may see an event twice, which events allow (consumers
    dedupe), but in order.
    Callers that must not lose an event keep it in the journal until its future resolves.
    At shutdown `flush()` waits for what is queued; once `closed` is set, what is still
    unconfirmed fails with `PublishAborted`."""

    def __init__(self, wire: Wire, closed: asyncio.Event,
                 retry_s: float = 0.5, max_batch: int = 2048) -> None:
        self._wire = wire
        self._closed = closed
        self._retry_s = retry_s
        self._max_batch = max_batch
        self._queue: deque[_Outgoing] = deque()
        self._in_flight: list[_Outgoing] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0

    @property
    def unconfirmed(self) -> int:
        """Events sent and not confirmed yet: how far the broker is behind."""
        return len(self._queue) + len(self._in_flight)

    def send(self, event: JobEvent | ClusterEvent) -> "asyncio.Future[None]":
        message_id = uuid.uuid4().hex
        properties = Basic.Properties(content_type="application/json", delivery_mode=2, message_id=message_id,
                                      correlation_id=getattr(event, "correlation_id", None))
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed.is_set():
            confirmed.set_exception(PublishAborted("the daemon is closing"))
            confirmed.exception()  # retrieved: the caller may drop it
        else:
            key = (f"cluster {event.cluster}" if isinstance(event, ClusterEvent)
                   else f"job {event.submission_id or message_id}")
            self._queue.append(_Outgoing(event.routing_key, orjson.dumps(event.body()), properties, key, confirmed))
            self._idle.clear()
            self._ready.set()
        return confirmed

    async def publish(self, event: JobEvent | ClusterEvent) -> None:
        await self.send(event)

    async def flush(self) -> None:
        """Wait until everything sent so far is confirmed (or given up at close)."""
        await self._idle.wait()

    async def run(self) -> None:
        """The sender. Returns once `closed` is set, failing whatever is left unconfirmed."""
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            while not self._closed.is_set():
                if not self._queue:
                    self._idle.set()
                    self._ready.clear()
                    ready = asyncio.ensure_future(self._ready.wait())
                    await asyncio.wait([ready, closing], return_when=asyncio.FIRST_COMPLETED)
                    ready.cancel()
                    continue
                self._in_flight = self._take_batch()
                failed = await self._send_batch(self._in_flight, closing)
                self._in_flight = []
                if failed:
                    self._queue.extendleft(reversed(failed))  # first again, in their order
                    log.warning("events not confirmed; sending them again", count=len(failed))
                    await asyncio.wait([closing], timeout=self._retry_s)
        finally:
            closing.cancel()
            self._queue.extendleft(reversed(self._in_flight))  # cancelled while a batch was out
            self._in_flight = []
            self._abort("the daemon is closing")

    def _take_batch(self) -> list[_Outgoing]:
        """The next batch: the queue in order, but at most one event per key (the others keep
        their places for a later batch). The look stops after as many of those as a batch
        holds, so a long run of one key's events is not walked again for every batch."""
        batch: list[_Outgoing] = []
        keys: set[str] = set()
        later: deque[_Outgoing] = deque()
        while self._queue and len(batch) < self._max_batch and len(later) < self._max_batch:
            o = self._queue.popleft()
            if o.key in keys:
                later.append(o)
            else:
                keys.add(o.key)
                batch.append(o)
        later.extend(self._queue)
        self._queue = later
        return batch

    async def _send_batch(self, batch: list[_Outgoing], closing: "asyncio.Future[Any]") -> list[_Outgoing]:
        """Put a batch on the wire and wait for its confirms; the events not confirmed."""
        put = asyncio.ensure_future(self._wire.publish_batch([(o.routing_key, o.body, o.properties) for o in batch]))
        await asyncio.wait([put, closing], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():  # closing while the connection's writer is stuck
            put.cancel()
            await asyncio.wait([put])
        if put.cancelled() or put.exception() is not None:
            log.warning("publish failed", count=len(batch),
                        error=repr(put.exception()) if not put.cancelled() else "cancelled")
            return batch
        confirms = put.result()
        everything = asyncio.gather(*confirms, return_exceptions=True)
        await asyncio.wait([everything, closing], return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():  # closing: stop waiting for the broker
            everything.cancel()
            await asyncio.wait(confirms)
        failed = []
        for o, confirm in zip(batch, confirms):
            error = confirm.exception() if not confirm.cancelled() else asyncio.CancelledError()
            if error is None:
                self.published += 1
                if not o.confirmed.done():
                    o.confirmed.set_result(None)
            else:
                if not failed:
                    log.warning("publish failed", routing_key=o.routing_key, error=repr(error))
                failed.append(o)
        return failed

    def _abort(self, why: str) -> None:
        while self._queue:
            o = self._queue.popleft()
            if not o.confirmed.done():
                o.confirmed.set_exception(PublishAborted(why))
                o.confirmed.exception()  # retrieved: nobody may be waiting for it
        self._idle.set()


class PublishAborted(Exception):
    """The daemon is shutting down and the broker did not confirm the message."""
