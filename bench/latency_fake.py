"""Publish-to-POST latency of the scheduler itself: the real RabbitMQ, an in-process fake
Ray dashboard that answers at once, free capacity, one job at a time.

    .venv/bin/python bench/latency_fake.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakeray import FakeCluster, FakeServer  # noqa: E402
from support import make_settings, running_daemon  # noqa: E402


async def main(n: int = 200) -> None:
    cluster = FakeCluster("fast", duration_s=0.05, nodes={"n1": {"CPU": 64, "memory": 64 * 2**30}})
    server = FakeServer([cluster])
    await server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            s = make_settings(Path(tmp))
            async with running_daemon(s, (cluster.config(),)):
                await asyncio.sleep(1.0)
                conn = await aio_pika.connect(s.amqp_url)
                async with conn:
                    ch = await conn.channel(publisher_confirms=True)
                    ex = await ch.get_exchange(s.intake_exchange)
                    lat = []
                    for _ in range(n):
                        sid = f"f-{uuid.uuid4().hex[:10]}"
                        seen = len(cluster.submissions)
                        t0 = time.time()
                        await ex.publish(aio_pika.Message(orjson.dumps({"submission_id": sid, "entrypoint": "/bin/true"})),
                                         routing_key=s.intake_routing_key)
                        while len(cluster.submissions) == seen:
                            await asyncio.sleep(0.0002)
                        lat.append((cluster.submissions[-1][0] - t0) * 1000)
                        await asyncio.sleep(0.01)
                lat.sort()
                print(f"publish -> POST /api/jobs/ at the fake dashboard (free capacity, n={n}): "
                      f"p50 {statistics.median(lat):.2f} ms, p99 {lat[int(0.99 * (n - 1))]:.2f} ms, max {lat[-1]:.2f} ms")
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
