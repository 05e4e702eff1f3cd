"""Publish-to-POST latency of the scheduler itself: the real RabbitMQ, simulated Ray dashboards
(tests/fakeray.py) in a process of their own that answer at once, free capacity, one job at a time.

    .venv/bin/python bench/latency_fake.py [--n 500] [--clusters 100]

The time is from just before the publish to the moment a simulated dashboard receives the
`POST /api/jobs/` (its wall clock, the same machine's), as the fleet reports it. The daemon runs
in this process, with the publisher; the dashboards do not, as in production (the first round of
this benchmark served them from the daemon's own event loop). Targets: p50 at most 5 ms, p99 at
most 20 ms. First, for context, the same path with no scheduling at all (the bare loop of the
throughput benchmark, one job at a time, on the same fleet); `--skip-bare` leaves it out.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import aiohttp
import orjson

from common import SimFleet, bare_post, machine, pct, quiet_logs, sim_fleet, state_url
from support import AMQP_URL, make_settings, running_daemon


async def one_at_a_time(fleet: SimFleet, exchange: aio_pika.abc.AbstractExchange, routing_key: str,
                        n: int, prefix: str) -> list[float]:
    """Publish a job, wait until a simulated dashboard reports its POST, n times: milliseconds."""
    assert fleet.posts is not None
    lat = []
    for _ in range(n):
        sid = f"{prefix}-{uuid.uuid4().hex[:10]}"
        t0 = time.time()
        await exchange.publish(aio_pika.Message(orjson.dumps({"submission_id": sid, "entrypoint": "/bin/true"})),
                               routing_key=routing_key)
        while True:
            posted, at = await asyncio.wait_for(fleet.posts.get(), 10)
            if posted == sid:
                break
        lat.append((at - t0) * 1000)
        await asyncio.sleep(0.01)
    return lat


async def bare(fleet: SimFleet, n: int) -> list[float]:
    """The same path with no scheduling: aio-pika consume, one POST to the next cluster, ack."""
    conn = await aio_pika.connect(AMQP_URL)
    async with conn, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue(f"bench.bare.{uuid.uuid4().hex[:8]}", auto_delete=True,
                                   arguments={"x-max-priority": 10})
        urls = itertools.cycle(list(fleet.urls.values()))

        async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await bare_post(http, next(urls), message.body)
            await message.ack()

        await q.consume(on)
        return await one_at_a_time(fleet, ch.default_exchange, q.name, n, "bare")


def summary(lat: list[float]) -> str:
    return f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--probe-process-from", type=int, default=None,
                   help="the daemon's setting (default: its own default, 200)")
    p.add_argument("--skip-bare", action="store_true", help="only the daemon")
    p.add_argument("--state", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the daemon's journal and status history: SQLite files, or a PostgreSQL database of its own")
    a = p.parse_args()
    quiet_logs()
    print(f"machine: {machine()}")
    async with sim_fleet(a.clusters, servers=2, cpus=64, duration=0.05, report_submissions=True) as fleet, \
            state_url(a.state) as where:
        if not a.skip_bare:
            print(f"bare loop (consume, POST, ack), n={a.n}: {summary(await bare(fleet, a.n))}")
        with tempfile.TemporaryDirectory() as tmp:
            extra = {} if a.probe_process_from is None else {"probe_process_from": a.probe_process_from}
            extra.update(where)
            s = make_settings(Path(tmp), probe_interval_s=1.0, track_interval_s=0.5, status_service="process",
                              **extra)  # the status service in its own process, as by default
            async with running_daemon(s, fleet.configs()):
                await asyncio.sleep(1.5)  # first probes
                conn = await aio_pika.connect(s.amqp_url)
                async with conn:
                    ch = await conn.channel(publisher_confirms=True)
                    ex = await ch.get_exchange(s.intake_exchange)
                    lat = await one_at_a_time(fleet, ex, s.intake_routing_key, a.n, "f")
    print(f"publish -> POST /api/jobs/ at a simulated dashboard ({a.clusters} clusters, free capacity, "
          f"n={a.n}): p50 {pct(lat, 50):.2f} ms (target <= 5), p99 {pct(lat, 99):.2f} ms (target <= 20), "
          f"max {max(lat):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
