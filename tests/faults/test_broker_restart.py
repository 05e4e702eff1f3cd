"""RabbitMQ restarted (stop_app / start_app) in the middle of a stream of jobs: the daemon
reconnects by itself, intake and events resume, every job runs exactly once."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import aio_pika
import orjson

from fakeray import FakeCluster, FakeServer
from support import make_settings, publish_many, running_daemon, sid


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def test_broker_restart_mid_stream_loses_nothing(tmp_path: Any) -> None:
    s = make_settings(tmp_path, window_size=4)
    cluster = FakeCluster("steady", nodes={"n1": {"CPU": 2, "memory": 8 * 2**30}}, duration_s=0.3)
    server = FakeServer([cluster])
    await server.start()
    finals: dict[str, list[str]] = {}
    try:
        async with running_daemon(s, (cluster.config(),)) as daemon:
            # A durable queue of our own collects the events across the restart.
            conn = await aio_pika.connect_robust(s.amqp_url)
            ch = await conn.channel()
            ex = await ch.declare_exchange(s.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            q = await ch.declare_queue(f"{s.events_exchange}.watch", durable=True)
            await q.bind(ex, "job.#")

            async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
                e = orjson.loads(msg.body)
                if e.get("final"):
                    finals.setdefault(e["submission_id"], []).append(e["state"])
                await msg.ack()

            await q.consume(on)
            jobs = [sid("brk") for _ in range(30)]
            await publish_many(s, [({"submission_id": j, "entrypoint": "/bin/true"}, 0) for j in jobs])
            while len(finals) < 5:
                await asyncio.sleep(0.05)
            try:
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                await asyncio.sleep(2.0)
            finally:  # the broker comes back whatever happens
                await asyncio.to_thread(rabbitmqctl, "start_app")
                await asyncio.to_thread(rabbitmqctl, "await_startup")
            for _ in range(600):
                if set(finals) >= set(jobs):
                    break
                await asyncio.sleep(0.1)
            assert set(finals) >= set(jobs), f"missing: {sorted(set(jobs) - set(finals))}"
            assert all(set(v) == {"SUCCEEDED"} for v in finals.values()), finals
            runs = [j.submission_id for j in cluster.jobs.values()]
            assert sorted(runs) == sorted(jobs), "every job ran exactly once"
            assert not daemon.stopping.is_set()
            await q.delete(if_unused=False, if_empty=False)
            await conn.close()
    finally:
        await server.stop()
