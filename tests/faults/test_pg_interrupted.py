"""The database goes away under a running daemon, twice, while jobs stream through: every
session ended (as a failover or an administrator does), or the server restarted. Against the
real RabbitMQ and PostgreSQL, on simulated clusters (what is under test is the state, not Ray)."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path
from typing import Awaitable, Callable

import asyncpg
import pytest

from fakeray import fake_fleet
from pgkit import pg_url  # noqa: F401  (fixture)
from support import Events, make_settings, publish_many, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def end_sessions(url: str) -> None:
    """End every other session on the database, as a server restart does to its clients."""
    conn = await asyncpg.connect(url)
    try:
        ended = await conn.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert ended, "the daemon had no session to end"
    finally:
        await conn.close()


async def restart_server(url: str) -> None:
    """Restart the local PostgreSQL (Debian's cluster, as scripts/ensure-postgres starts it) and
    wait until it answers again."""
    version = max((p.name for p in Path("/etc/postgresql").iterdir()),
                  key=lambda v: [int(x) for x in v.split(".") if x.isdigit()])  # as `sort -V | tail -1`
    await asyncio.to_thread(subprocess.run, ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                                             "restart", "-m", "fast"], check=True, timeout=60)
    for _ in range(60):
        try:
            await (await asyncpg.connect(url)).close()
            return
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.5)
    raise AssertionError("PostgreSQL did not answer within 30 s of its restart")


@pytest.mark.parametrize("interrupt", [
    pytest.param(end_sessions, id="sessions-ended"),
    pytest.param(restart_server, id="server-restarted", marks=pytest.mark.alone),  # every test's server
])
async def test_the_database_going_away_twice_loses_no_job_and_runs_none_twice(
        tmp_path, pg_url, interrupt: Callable[[str], Awaitable[None]]) -> None:
    s = make_settings(tmp_path, state_url=pg_url)
    jobs = [{"submission_id": sid("pgend"), "entrypoint": "/bin/sleep 0.3", "resource_requirements": {"CPU": 0.5}}
            for _ in range(60)]
    sids = [j["submission_id"] for j in jobs]
    async with fake_fleet(2, name="pgend") as fleet:
        async with running_daemon(s, fleet.configs()) as daemon, Events(s) as ev:
            await publish_many(s, [(j, 0) for j in jobs])
            for dispatched in (15, 40):
                await ev.wait_for(lambda: sum(1 for x in sids if "DISPATCHED" in ev.states(x)) >= dispatched,
                                  60, f"{dispatched} jobs dispatched")
                await interrupt(pg_url)
            await ev.wait_final(sids, 120)
            assert {x: ev.states(x)[-1] for x in sids} == {x: "SUCCEEDED" for x in sids}
            assert daemon.service is not None
            await ev.wait_for(lambda: daemon.service.consumer.applied >= 4 * len(sids), 60, "the status service")
            for x in sids:
                status = await daemon.store.get(x)
                assert status is not None and status.state == "SUCCEEDED", (x, status)
    posts = Counter(s_id for c in fleet.clusters for _, s_id in c.submissions)
    assert {x: posts[x] for x in sids} == {x: 1 for x in sids}  # each POSTed once, none lost
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT submission_id, state FROM rmcs_tracked")
        assert {r["submission_id"]: r["state"] for r in rows} == {x: "SUCCEEDED" for x in sids}
    finally:
        await conn.close()
