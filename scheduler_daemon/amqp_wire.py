"""A batch of publishes written to the socket at once, over aiormq's channel internals.

Why reach past aio-pika: it publishes one message at a time, holding the channel's lock until
the connection's writer has sent it, so each publish waits a turn of the event loop. Under load
the daemon's outbox got its events out a few hundred a second and fell thousands behind
dispatch. Writing each batch in one go took the outbox from 6,126 to 12,308 events/s
(`bench/broker_events.py`, commit 40d6cfe; the current figures are the event-path row of
bench/README.md).

What it reaches into, and so what it is pinned to (pyproject.toml: aiormq>=7.2.4,<7.3 and
pamqp>=4,<5; written against aiormq 7.2.4 and pamqp 4.0.1): aiormq's `Channel.lock`,
`delivery_tag`, `confirmations`, `create_future()`, `write_queue`, `max_content_size`,
`publisher_confirms` and `number`, `aiormq.abc.ChannelFrame.marshall`, and pamqp's frame
classes. They are the bookkeeping aiormq's own `Channel.basic_publish` does; check it again
before moving either bound. tests/test_outbox.py runs this against the real broker.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

from aio_pika.abc import AbstractExchange
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

Outgoing = tuple[str, bytes, Basic.Properties]  # routing key, body, properties


class AmqpWire:
    """A batch of publishes to one exchange written to the socket at once.

    The channel's lock is taken once per batch and the batch is one write: its publish frames,
    each with its delivery tag and confirm future registered with aiormq's channel as its own
    publish does (so confirms, nacks and a closing channel resolve them the same way)."""

    def __init__(self, exchange: Callable[[], AbstractExchange]) -> None:
        self._exchange = exchange

    async def publish_batch(self, items: Sequence[Outgoing]) -> "list[asyncio.Future[Any]]":
        exchange = self._exchange()
        channel: Any = await exchange.channel.get_underlay_channel()
        if not channel.publisher_confirms:
            raise RuntimeError("the events channel must have publisher confirms")
        frames: list[Any] = []
        confirms: list[asyncio.Future[Any]] = []
        async with channel.lock:
            first = channel.delivery_tag
            try:
                for routing_key, body, properties in items:
                    channel.delivery_tag += 1
                    confirm = channel.create_future()
                    channel.confirmations[channel.delivery_tag] = confirm
                    confirms.append(confirm)
                    frames.append(Basic.Publish(exchange=exchange.name, routing_key=routing_key))
                    frames.append(ContentHeader(body_size=len(body), properties=properties))
                    size = channel.max_content_size
                    frames.extend(ContentBody(body[i:i + size]) for i in range(0, len(body), size))
                written = channel.create_future()
                await channel.write_queue.put(ChannelFrame.marshall(channel.number, frames, written))
            except BaseException:  # nothing reached the wire: give the delivery tags back
                for tag in range(first + 1, channel.delivery_tag + 1):
                    channel.confirmations.pop(tag, None)
                channel.delivery_tag = first
                for confirm in confirms:
                    confirm.cancel()
                raise
            await written  # cancelled here, the batch is on its way and its confirms stand
        return confirms
