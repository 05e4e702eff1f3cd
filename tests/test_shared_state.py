"""Shared state on PostgreSQL (`state_url: postgresql://...`): the journal and the status
history live in the database, against the real RabbitMQ, PostgreSQL and Ray."""

from __future__ import annotations

from dataclasses import replace

import asyncpg
import pytest

from pgkit import pg_url  # noqa: F401  (fixture)
from scheduler_daemon.settings import ConfigError, Settings
from support import Events, assert_each_ran_once_on_ray, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def test_state_url_is_sqlite_or_postgresql() -> None:
    assert not Settings().shared_state
    assert Settings(state_url="postgresql://u@h:5432/db").validate().shared_state
    with pytest.raises(ConfigError, match="state_url"):
        Settings(state_url="mysql://u@h/db").validate()


async def test_jobs_on_real_ray_are_journaled_and_recorded_in_postgresql(tmp_path, ray_clusters, pg_url) -> None:
    s = make_settings(tmp_path, state_url=pg_url)
    jobs = [sid("pg") for _ in range(3)]
    async with running_daemon(s, ray_clusters) as daemon, Events(s) as ev:
        for j in jobs:
            await publish(s, {"submission_id": j, "entrypoint": "/bin/true", "resource_requirements": {"CPU": 0.5}})
        await ev.wait_final(jobs)
        assert daemon.service is not None
        await ev.wait_for(lambda: daemon.service.consumer.applied >= 4 * len(jobs), 30, "the status service")
        for j in jobs:
            status = await daemon.store.get(j)
            assert status is not None and status.state == "SUCCEEDED"
            assert [t.state for t in status.transitions] == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
    await assert_each_ran_once_on_ray(ray_clusters, jobs)
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT submission_id, state, final FROM rmcs_tracked")
        assert {r["submission_id"]: (r["state"], r["final"]) for r in rows} == {j: ("SUCCEEDED", True) for j in jobs}
        assert not (tmp_path / "state" / "daemon.db").exists()  # only scratch in state_dir
        assert {r["component"] for r in await conn.fetch("SELECT component FROM rmcs_migrations")} == \
            {"journal", "status", "leader"}
    finally:
        await conn.close()


async def test_migrations_apply_once_and_a_second_open_changes_nothing(pg_url) -> None:
    from scheduler_daemon.pgbase import connect, migrate

    pool = await connect(pg_url)
    try:
        steps = ("CREATE TABLE m1 (x int)", "ALTER TABLE m1 ADD COLUMN y int")
        assert await migrate(pool, "test", steps[:1]) == 1
        assert await migrate(pool, "test", steps) == 1     # only the new step
        assert await migrate(pool, "test", steps) == 0
        assert await pool.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_name='m1'") == 2
    finally:
        await pool.close()


def test_settings_carry_the_url_without_showing_it() -> None:
    s = replace(Settings(), state_url="postgresql://rmcs:secret@db:5432/rmcs")
    assert "secret" not in repr(s)


async def test_two_status_services_on_one_database_each_stream_every_event(tmp_path, pg_url) -> None:
    """A failover group's services share the durable status queue (each event reaches the shared
    store once, through one of them) and each one's live stream still hears every event."""
    import asyncio
    import aio_pika
    import orjson

    from scheduler_daemon.broker import declare
    from scheduler_daemon.status.service import StatusService
    from support import _free_port, delete_topology

    s = make_settings(tmp_path, state_url=pg_url, failover=True)
    await declare(s)
    services = [StatusService(replace(s, http_addr=f"127.0.0.1:{_free_port()}"), ()) for _ in range(2)]
    heard: list[list[str]] = [[], []]

    async def listen(i: int) -> None:
        async for event in services[i].hub.subscribe("job.#"):
            heard[i].append(str(event["submission_id"]))

    listeners = []
    try:
        for service in services:
            await service.start()
        listeners = [asyncio.create_task(listen(i)) for i in range(2)]
        await asyncio.sleep(0.2)
        jobs = [sid("live") for _ in range(20)]
        conn = await aio_pika.connect(s.amqp_url)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            ex = await ch.get_exchange(s.events_exchange)
            for j in jobs:
                await ex.publish(aio_pika.Message(orjson.dumps(
                    {"event": "job.accepted._", "state": "ACCEPTED", "submission_id": j, "attempt": 1})),
                    routing_key="job.accepted._")
        for _ in range(100):
            if all(sorted(h) == sorted(jobs) for h in heard) and \
                    sum(x.consumer.applied for x in services) >= len(jobs):
                break
            await asyncio.sleep(0.1)
        assert all(sorted(h) == sorted(jobs) for h in heard), heard
        assert all(x.consumer.applied > 0 for x in services), "the durable queue is shared"
        assert all([await services[0].store.get(j) is not None for j in jobs])
    finally:
        for task in listeners:
            task.cancel()
        for service in services:
            await service.stop()
        await delete_topology(s)
