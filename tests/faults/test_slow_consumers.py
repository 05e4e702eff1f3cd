"""A dashboard that stops reading events never slows dispatch or grows the daemon's memory:
RabbitMQ keeps the unread events in the dashboard's queue; the daemon holds none of them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pytest

from fakeray import FakeCluster, FakeServer
from support import Events, make_settings, publish_many, queue_depth, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def _run_batch(s: Any, ev: Events, n: int) -> float:
    jobs = [sid("slow") for _ in range(n)]
    t0 = time.monotonic()
    await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/true"}, 0) for j in jobs])
    await ev.wait_final(jobs, timeout=120)
    return time.monotonic() - t0


async def test_a_dashboard_that_stops_reading_does_not_slow_dispatch(tmp_path: Any) -> None:
    s = make_settings(tmp_path, window_size=16, track_interval_s=0.1)
    cluster = FakeCluster("wide", nodes={"n": {"CPU": 64, "memory": 64 * 2**30}}, duration_s=0.05)
    server = FakeServer([cluster])
    await server.start()
    try:
        async with running_daemon(s, (cluster.config(),)) as daemon, Events(s, "job.#") as ev:
            baseline = await _run_batch(s, ev, 150)
            conn = await aio_pika.connect(s.amqp_url)
            async with conn:
                ch = await conn.channel()
                ex = await ch.get_exchange(s.events_exchange)
                stalled = await ch.declare_queue(f"{s.events_exchange}.stalled-dashboard", durable=True)
                await stalled.bind(ex, "#")  # bound, never consumed
                with_stalled = await _run_batch(s, ev, 150)
                unread = await queue_depth(s, stalled.name)
                await stalled.delete(if_unused=False, if_empty=False)
            print(f"150 jobs: {baseline:.2f}s alone, {with_stalled:.2f}s with a stalled dashboard "
                  f"holding {unread} unread events")
            assert unread >= 150 * 4, unread  # the broker keeps them, not the daemon
            assert with_stalled < baseline * 2 + 2.0
            assert len(daemon.window) == 0 and len(daemon.service.hub) == 0
    finally:
        await server.stop()
