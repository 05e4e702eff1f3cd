"""Lifecycle and cluster-health events, published to the topic exchange with confirms.

Routing keys: `job.<state>.<cluster or _>` and `cluster.<up|degraded|down>.<cluster>`.
Events are at-least-once; consumers dedupe on (submission_id, state, attempt).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractExchange

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
    ts: str = field(default_factory=now_rfc3339)

    @classmethod
    def of(cls, job: Job, state: JobState, cluster: str | None, message: str | None = None,
           final: bool = False) -> "JobEvent":
        return cls(state, job.submission_id, job.job_id, cluster, job.attempt, message, final,
                   job.tags, dict(job.metadata), job.priority, dict(job.resources),
                   job.correlation_id, job.reply_to, job.owner)

    @property
    def routing_key(self) -> str:
        return f"job.{self.state.value.lower()}.{self.cluster or '_'}"

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


class EventPublisher:
    """Publishes events with publisher confirms, retrying through broker outages.

    `publish` returns once the broker has confirmed the event. While the broker is away
    it keeps retrying, so callers that must not lose an event simply await it; at shutdown
    `close()` makes waiting publishes give up with `PublishAborted`."""

    def __init__(self, exchange_getter: Callable[[], AbstractExchange], closed: asyncio.Event) -> None:
        self._exchange = exchange_getter
        self._closed = closed
        self.published = 0

    async def publish(self, event: JobEvent | ClusterEvent) -> None:
        message = aio_pika.Message(
            orjson.dumps(event.body()),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
            correlation_id=getattr(event, "correlation_id", None),
        )
        await publish_confirmed(self._exchange, message, event.routing_key, self._closed)
        self.published += 1


class PublishAborted(Exception):
    """The daemon is shutting down and the broker did not confirm the message."""
