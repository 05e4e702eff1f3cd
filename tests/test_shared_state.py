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
            {"journal", "status"}
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
