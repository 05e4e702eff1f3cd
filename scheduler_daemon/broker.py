"""The broker topology of the wire contract, declared idempotently."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from .settings import Settings


@dataclass(frozen=True)
class Topology:
    intake: AbstractExchange
    queue: AbstractQueue
    dlx: AbstractExchange
    dead: AbstractQueue
    events: AbstractExchange


async def declare_topology(channel: AbstractChannel, s: Settings) -> Topology:
    intake = await channel.declare_exchange(s.intake_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(s.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    events = await channel.declare_exchange(s.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_queue(s.dead_letter_queue, durable=True)
    await dead.bind(dlx, routing_key="")
    queue = await channel.declare_queue(
        s.intake_queue,
        durable=True,
        arguments={"x-max-priority": s.max_priority, "x-dead-letter-exchange": s.dead_letter_exchange},
    )
    await queue.bind(intake, routing_key=s.intake_routing_key)
    return Topology(intake, queue, dlx, dead, events)


async def declare(s: Settings) -> None:
    """Declare the topology once and disconnect (the `rmcs-declare` command)."""
    connection = await aio_pika.connect(s.amqp_url, **s.amqp_connect_kwargs())
    async with connection:
        await declare_topology(await connection.channel(), s)
