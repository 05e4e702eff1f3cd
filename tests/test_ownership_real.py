"""The stop rule against real Ray clusters and the real RabbitMQ: on a vhost of its own, the daemon
logged in as the least-privilege daemon user, two producers with users of their own. Another
user's stop is refused and the job really goes on running on its cluster; the owner's stops it."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aio_pika
import orjson
import pytest

from brokeradmin import broker_users, settings_in
from scheduler_daemon.rayapi import RayDashboard
from support import Events, make_settings, running_daemon, sid, wait_idle

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def _ray_status(cluster, ray_id: str) -> str:
    dash = RayDashboard(cluster, 10)
    try:
        return str((await dash.job(ray_id)).get("status"))
    finally:
        await dash.close()


async def _publish(url: str, exchange: str, key: str, body: dict, user: str) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ex = await (await conn.channel(publisher_confirms=True)).get_exchange(exchange)
        await ex.publish(aio_pika.Message(orjson.dumps(body), user_id=user, content_type="application/json",
                                          delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=key)


async def test_only_the_owner_stops_a_job_running_on_ray(tmp_path, ray_clusters):
    base = make_settings(tmp_path)
    with broker_users(base) as users:
        alice, bob = users.add_users(base, "producer", "alice", "bob")
        s = settings_in(users, base)
        observer = replace(s, amqp_url=users.guest_url())
        async with running_daemon(s, ray_clusters) as daemon, Events(observer) as ev:
            await wait_idle(daemon)
            job = sid("owned")
            await _publish(users.url(alice), s.intake_exchange, s.intake_routing_key,
                           {"submission_id": job, "entrypoint": "/bin/sleep 60"}, alice)
            await ev.wait_for(lambda: "RUNNING" in ev.states(job), 60, "the job running")
            assert {e["owner"] for e in ev.of(job)} == {alice}
            cluster = next(c for c in ray_clusters if c.name == ev.of(job)[-1]["cluster"])

            await _publish(users.url(bob), s.events_exchange, "control.stop", {"submission_id": job, "reason": "x"}, bob)
            await ev.wait_for(lambda: ev.answers(job), 10, "the answer to bob")
            assert ev.answers(job)[0]["outcome"] == "refused" and bob in ev.answers(job)[0]["message"]
            await asyncio.sleep(3.0)
            assert await _ray_status(cluster, job) == "RUNNING"
            assert ev.states(job)[-1] == "RUNNING"

            await _publish(users.url(alice), s.events_exchange, "control.stop", {"submission_id": job, "reason": "y"},
                           alice)
            await ev.wait_final([job], timeout=30)
            assert ev.states(job)[-1] == "STOPPED" and ev.answers(job)[1]["outcome"] == "stopping"
            assert await _ray_status(cluster, job) == "STOPPED"
