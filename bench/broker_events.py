"""What bounds dispatch throughput: how many lifecycle events per second this machine's RabbitMQ
and client take when published as the daemon publishes them (its own outbox: persistent, to the
topic exchange with a durable queue bound, confirmed in batches) and consumed back as the status
cache consumes them (prefetch 64, one ack each). No scheduling, no journal, no Ray.

    .venv/bin/python bench/broker_events.py

The daemon publishes at least four events per job (ACCEPTED, DISPATCHED, RUNNING, the end) and
its status cache consumes each back, so its dispatch rate cannot pass a quarter of the second
figure; the first (nothing consumed) is the publishing side alone.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aio_pika

from common import machine
from scheduler_daemon.amqp_wire import AmqpWire
from scheduler_daemon.events import ClusterEvent, EventPublisher
from support import AMQP_URL


async def run(consume: bool, seconds: float = 5.0) -> float:
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.declare_exchange(f"bench.events.{uuid.uuid4().hex[:8]}", aio_pika.ExchangeType.TOPIC,
                                       auto_delete=True)
        q = await ch.declare_queue(f"bench.status.{uuid.uuid4().hex[:8]}", durable=True)
        await q.bind(ex, "cluster.#")
        consumed = 0
        cch = None
        closed = asyncio.Event()
        outbox = EventPublisher(AmqpWire(lambda: ex), closed)
        sender = asyncio.create_task(outbox.run())
        try:
            if consume:
                cch = await conn.channel()
                await cch.set_qos(prefetch_count=64)

                async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                    nonlocal consumed
                    await message.ack()
                    consumed += 1

                await (await cch.get_queue(q.name)).consume(on)
            # Events about the size of a job event (the message field carries the padding), each
            # about a subject of its own, as a loaded daemon's are (one per job): the outbox puts
            # at most one event per subject in a batch.
            events = [ClusterEvent(f"c{i}", "up", "x" * 400) for i in range(2000)]
            t0 = time.monotonic()
            stop = t0 + seconds
            while time.monotonic() < stop:
                # Keep a few thousand in the outbox, as a daemon under load does.
                await asyncio.gather(*(outbox.send(event) for event in events))
            elapsed = time.monotonic() - t0
            await outbox.flush()
            rate = outbox.published / elapsed
            if consume:
                while consumed < outbox.published and time.monotonic() < stop + 30:
                    await asyncio.sleep(0.05)
                rate = consumed / (time.monotonic() - t0)
            print(f"  persistent events through the daemon's outbox, "
                  f"{'each consumed back and acked on the same connection' if consume else 'not consumed'}: "
                  f"{rate:,.0f} events/s")
            return rate
        finally:
            closed.set()
            await sender
            if cch is not None:
                await cch.close()
            await q.delete(if_unused=False, if_empty=False)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="how long each of the two runs publishes")
    a = p.parse_args()
    print(f"machine: {machine()}")
    await run(consume=False, seconds=a.seconds)
    rate = await run(consume=True, seconds=a.seconds)
    print(f"bound on dispatch from the event path alone: {rate / 4:,.0f} jobs/s (4 events per job)")


if __name__ == "__main__":
    asyncio.run(main())
