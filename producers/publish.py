"""Publish one job to the intake queue, as the wire contract says. Needs only aio-pika."""

from __future__ import annotations

import os
import uuid
from typing import Any

import aio_pika
import orjson

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def publish_job(job: dict[str, Any], *, priority: int = 0, amqp_url: str | None = None,
                      exchange: str = "rmcs.jobs", routing_key: str = "submit") -> str:
    """Publish `job` (contract fields) persistently and wait for the broker's confirm.
    Returns the submission id (generated as sub_<uuid> if the job has none)."""
    if not 0 <= priority <= 9:
        raise ValueError("priority must be 0..9")
    body = dict(job)
    body.setdefault("submission_id", f"sub_{uuid.uuid4().hex}")
    url = amqp_url or os.environ.get("RMCS_AMQP_URL", DEFAULT_AMQP_URL)
    try:
        connection = await aio_pika.connect(url)
    except Exception as exc:
        raise RuntimeError(f"cannot reach the broker at {url.split('@')[-1]}: {exc}") from exc
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        ex = await channel.get_exchange(exchange)
        await ex.publish(
            aio_pika.Message(orjson.dumps(body), content_type="application/json", priority=priority,
                             message_id=body["submission_id"], delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key,
        )
    return str(body["submission_id"])
