"""What bounds dispatch throughput: how many lifecycle events per second RabbitMQ takes on this
machine when published as the daemon publishes them (persistent, publisher confirms, to a topic
exchange with a durable queue bound) and consumed back as the status cache consumes them (on the
same connection, prefetch 64, one ack each). No scheduling at all.

    .venv/bin/python bench/broker_events.py

The daemon publishes four such events per job at least (ACCEPTED, DISPATCHED, RUNNING, and the end)
and consumes each back, so its dispatch rate cannot pass a quarter of the second figure.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika

from common import machine, pct
from support import AMQP_URL


async def run(consume: bool, in_flight: int = 200, seconds: float = 5.0) -> float:
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.declare_exchange(f"bench.events.{uuid.uuid4().hex[:8]}", aio_pika.ExchangeType.TOPIC,
                                       auto_delete=True)
        q = await ch.declare_queue(f"bench.status.{uuid.uuid4().hex[:8]}", durable=True)
        await q.bind(ex, "job.#")
        cch = None
        try:
            if consume:
                cch = await conn.channel()
                await cch.set_qos(prefetch_count=64)

                async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                    await message.ack()

                await (await cch.get_queue(q.name)).consume(on)
            body = b"x" * 600  # about the size of a job event
            lat: list[float] = []
            stop = time.monotonic() + seconds

            async def publisher() -> None:
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    await ex.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                     routing_key="job.accepted._")
                    lat.append(time.perf_counter() - t)

            await asyncio.gather(*(publisher() for _ in range(in_flight)))
            rate = len(lat) / seconds
            print(f"  persistent events with confirms, {in_flight} in flight, "
                  f"{'consumed back on the same connection' if consume else 'not consumed'}: "
                  f"{rate:,.0f} events/s, confirm p50 {pct(lat, 50) * 1000:.0f} ms")
            return rate
        finally:
            if cch is not None:
                await cch.close()
            await q.delete(if_unused=False, if_empty=False)


async def main() -> None:
    print(f"machine: {machine()}")
    await run(consume=False)
    rate = await run(consume=True)
    print(f"bound on dispatch from the event path alone: {rate / 4:,.0f} jobs/s (4 events per job)")


if __name__ == "__main__":
    asyncio.run(main())
