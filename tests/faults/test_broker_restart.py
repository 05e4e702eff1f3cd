"""RabbitMQ restarted (stop_app / start_app) in the middle of a stream of jobs: the daemon
reconnects by itself, intake and events resume, every job runs exactly once."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import aio_pika
import orjson
import pytest

from fakeray import FakeCluster, FakeServer
from producers.core import Client, build_job
from producers.config import ProducerConfig
from support import make_settings, publish_many, running_daemon, sid

pytestmark = [pytest.mark.usefixtures("rabbitmq"), pytest.mark.alone]  # it restarts the broker every test shares


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


async def test_producers_ride_out_a_broker_restart_or_fail_clearly(tmp_path: Any) -> None:
    """Two producers publish through the helper while the broker restarts: one with the default
    `broker_retry_s` waits the restart out and every job it submitted runs once; one with
    `broker_retry_s=0` gets a clear error for the jobs it could not hand over, and those it did
    run once. No call returns for a job that is then lost."""
    s = make_settings(tmp_path, window_size=4)
    cluster = FakeCluster("steady", nodes={"n1": {"CPU": 4, "memory": 8 * 2**30}}, duration_s=0.05)
    server = FakeServer([cluster])
    await server.start()
    names = dict(amqp_url=s.amqp_url, http_addr=s.http_addr, intake_exchange=s.intake_exchange,
                 intake_routing_key=s.intake_routing_key, events_exchange=s.events_exchange)
    patient = Client(ProducerConfig(**names).validate())
    hasty = Client(ProducerConfig(**names, broker_retry_s=0).validate())
    accepted: dict[str, list[str]] = {"patient": [], "hasty": []}
    errors: dict[str, list[str]] = {"patient": [], "hasty": []}

    async def produce(name: str, client: Client, stop: asyncio.Event) -> None:
        await client.connect()
        while not stop.is_set():
            body, priority = build_job("/bin/true", submission_id=sid(f"pr-{name}"))
            try:
                accepted[name].append(await client.submit(body, priority, check_duplicate=False))
            except RuntimeError as exc:
                errors[name].append(str(exc))
            await asyncio.sleep(0.05)

    try:
        async with running_daemon(s, (cluster.config(),)):
            stop = asyncio.Event()
            producers = [asyncio.create_task(produce(n, c, stop)) for n, c in (("patient", patient), ("hasty", hasty))]
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                await asyncio.sleep(2.0)
            finally:
                await asyncio.to_thread(rabbitmqctl, "start_app")
                await asyncio.to_thread(rabbitmqctl, "await_startup")
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*producers), 60)
            everything = accepted["patient"] + accepted["hasty"]
            for _ in range(600):
                if {j.submission_id for j in cluster.jobs.values()} >= set(everything):
                    break
                await asyncio.sleep(0.1)
        runs = sorted(j.submission_id for j in cluster.jobs.values())
        assert sorted(set(runs)) == runs, "no job ran twice"
        assert set(runs) >= set(everything), f"lost: {sorted(set(everything) - set(runs))}"
        assert errors["patient"] == [], "the producer that waits rode the restart out"
        assert errors["hasty"], "the producer that does not wait saw the outage"
        assert all("broker" in e and ("cannot reach" in e or "lost the connection" in e) for e in errors["hasty"]), \
            errors["hasty"]
        print(f"through a broker restart: {len(accepted['patient'])} jobs from the waiting producer, "
              f"{len(accepted['hasty'])} from the other with {len(errors['hasty'])} clear errors; "
              "all accepted ran once")
    finally:
        await patient.close()
        await hasty.close()
        await server.stop()
