"""Publish-to-POST latency of the scheduler itself: the real RabbitMQ, simulated Ray dashboards
(tests/fakeray.py) in this process that answer at once, free capacity, one job at a time.

    .venv/bin/python bench/latency_fake.py [--n 500] [--clusters 100]

The time is from just before the publish to the moment a simulated dashboard receives the
`POST /api/jobs/`. Targets: p50 at most 5 ms, p99 at most 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import orjson

from common import machine, pct, quiet_logs
from fakeray import fake_fleet, make_nodes
from support import make_settings, running_daemon


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--clusters", type=int, default=100)
    a = p.parse_args()
    quiet_logs()
    print(f"machine: {machine()}")
    async with fake_fleet(a.clusters, servers=2, duration_s=0.05,
                          nodes_of=lambda c: make_nodes(c, [{"CPU": 64, "memory": 64}])) as fleet:
        with tempfile.TemporaryDirectory() as tmp:
            s = make_settings(Path(tmp), probe_interval_s=1.0, track_interval_s=0.5)
            async with running_daemon(s, fleet.configs()):
                await asyncio.sleep(1.5)  # first probes
                conn = await aio_pika.connect(s.amqp_url)
                async with conn:
                    ch = await conn.channel(publisher_confirms=True)
                    ex = await ch.get_exchange(s.intake_exchange)
                    lat = []
                    posted: asyncio.Queue[float] = asyncio.Queue()
                    for c in fleet.clusters:  # note the moment each POST reaches a dashboard
                        def submit(body: object, _orig=c.submit) -> tuple[int, object]:
                            posted.put_nowait(time.time())
                            return _orig(body)
                        c.submit = submit  # type: ignore[method-assign]
                    for _ in range(a.n):
                        sid = f"f-{uuid.uuid4().hex[:10]}"
                        t0 = time.time()
                        await ex.publish(aio_pika.Message(orjson.dumps({"submission_id": sid,
                                                                        "entrypoint": "/bin/true"})),
                                         routing_key=s.intake_routing_key)
                        lat.append((await posted.get() - t0) * 1000)
                        await asyncio.sleep(0.01)
    print(f"publish -> POST /api/jobs/ at a simulated dashboard ({a.clusters} clusters, free capacity, "
          f"n={a.n}): p50 {pct(lat, 50):.2f} ms (target <= 5), p99 {pct(lat, 99):.2f} ms (target <= 20), "
          f"max {max(lat):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
