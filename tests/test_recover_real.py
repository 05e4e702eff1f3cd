"""`rmcs recover`: a journal lost in a disaster (SQLite's files, or PostgreSQL's tables) is rebuilt
from the real Ray clusters' job lists, owners and max_retries intact, and the daemon follows the
recovered jobs to their end."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
import yaml

from rmcs_cli.main import main as rmcs
from scheduler_daemon.jobs import JobState
from pgkit import state_url  # noqa: F401  (fixture)
from scheduler_daemon.state import journal_for
from support import Events, make_settings, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def publish_as(settings: Any, user: str, body: dict[str, Any]) -> None:
    conn = await aio_pika.connect(settings.amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(settings.intake_exchange)
        await ex.publish(aio_pika.Message(orjson.dumps(body), user_id=user, content_type="application/json",
                                          delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                         routing_key=settings.intake_routing_key)


async def lose_the_journal(s: Any) -> None:
    """The disaster: SQLite's files deleted, or PostgreSQL's tables dropped (state and history)."""
    if not s.shared_state:
        for f in Path(s.state_dir).glob("daemon.db*"):
            f.unlink()
        return
    conn = await asyncpg.connect(s.state_url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


async def test_recover_rebuilds_the_followed_jobs_with_owners_from_an_empty_journal(tmp_path: Path,
                                                                                   ray_clusters: Any,
                                                                                   state_url: str) -> None:
    s = make_settings(tmp_path, state_url=state_url)
    jobs = [sid("rec") for _ in range(2)]
    async with Events(s) as ev:
        async with running_daemon(s, ray_clusters, cleanup=False):
            for j in jobs:
                await publish_as(s, "guest", {"submission_id": j, "entrypoint": "/bin/sleep 8", "max_retries": 2,
                                              "metadata": {"team": "a"}, "resource_requirements": {"CPU": 0.5}})
            await ev.wait_for(lambda: all("RUNNING" in ev.states(j) for j in jobs), 90, "both running")
        await lose_the_journal(s)
        config, clusters = tmp_path / "rmcs.yaml", tmp_path / "clusters.yaml"
        config.write_text(yaml.safe_dump({"state_dir": s.state_dir, "amqp_url": s.amqp_url, "state_url": s.state_url}))
        clusters.write_text(yaml.safe_dump({"clusters": {c.name: {"dashboard_url": c.dashboard_url}
                                                         for c in ray_clusters}}))
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(rmcs, ["recover", "--config", str(config), "--clusters", str(clusters)],
                                       stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        assert all(f"journaled {j}\n" in out.getvalue() for j in jobs), out.getvalue()  # (and others' jobs running)
        journal = journal_for(s)
        await journal.open()
        try:
            for j in jobs:
                t = await journal.get(j)
                assert t is not None and t.state == JobState.RUNNING and not t.final
                assert (t.job.owner, t.job.max_retries, dict(t.job.metadata)) == ("guest", 2, {"team": "a"})
        finally:
            await journal.close()
        async with running_daemon(s, ray_clusters):  # it follows them to their end
            await ev.wait_final(jobs, timeout=90)
        assert all(ev.states(j)[-1] == "SUCCEEDED" and ev.of(j)[-1]["owner"] == "guest" for j in jobs)
