"""Leadership in PostgreSQL with fencing: a stale leader's writes are refused, and a leader
frozen (SIGSTOP) past its lease and thawed changes nothing and steps down. Real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from builders import job
from pgkit import pg_url  # noqa: F401  (fixture)
from scheduler_daemon.dblease import DbLeadership
from scheduler_daemon.jobs import JobState
from scheduler_daemon.pgbase import Fenced
from scheduler_daemon.pgjournal import PgJournal
from scheduler_daemon.settings import Settings
from scheduler_daemon.tracking import Tracked


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_standby_takes_over_only_after_the_lease_and_the_old_epoch_is_fenced(pg_url: str) -> None:
    s = Settings(state_url=pg_url, failover=True, leader_tick_s=0.2)
    clock = Clock()
    first, second = DbLeadership(s, clock), DbLeadership(s)
    stopping = asyncio.Event()
    await first.join()
    await second.join()
    journal = PgJournal(pg_url)
    await journal.open()
    fenced: list[Exception] = []
    journal.on_fenced = fenced.append
    try:
        assert await first.acquired(stopping) and first.epoch == 1
        journal.epoch = first.epoch
        t = Tracked(job("f1"), "c1", "n1", JobState.DISPATCHED)
        await journal.record(t)

        # The second waits while the first's lease runs (it renews it).
        wait = asyncio.ensure_future(second.acquired(stopping))
        for _ in range(5):
            assert await first._renew()
            await asyncio.sleep(0.2)
        assert not wait.done()
        # The first freezes: no renewal. Its own clock says so at once when it thaws.
        await asyncio.wait_for(wait, 5)
        assert second.epoch == 2
        clock.now += 10 * first.lease_s
        assert first.lost

        # Its writes are refused and change nothing; the new leader's go through.
        with pytest.raises(Fenced):
            await journal.record(t.moved(JobState.RUNNING))
        assert fenced and (await journal.get("f1")).state == JobState.DISPATCHED
        with pytest.raises(Fenced):
            await journal.fence()  # what a stop to Ray checks first
        journal.epoch = second.epoch
        await journal.record(t.moved(JobState.SUCCEEDED, final=True))
        assert (await journal.get("f1")).state == JobState.SUCCEEDED
    finally:
        stopping.set()
        await journal.close()
        await first.close()
        await second.close()


async def test_a_write_racing_a_takeover_either_commits_before_it_or_is_refused(pg_url: str) -> None:
    journal = PgJournal(pg_url)
    await journal.open()
    try:
        conn = await asyncpg.connect(pg_url)
        await conn.execute("UPDATE rmcs_leader SET epoch = 7")
        journal.epoch = 7
        async with conn.transaction():
            await conn.execute("UPDATE rmcs_leader SET epoch = 8")  # the takeover holds the row
            write = asyncio.ensure_future(journal.record(Tracked(job("r1"), "c", "n", JobState.DISPATCHED)))
            await asyncio.sleep(0.3)
            assert not write.done()  # the write waits for the takeover
        with pytest.raises(Fenced):
            await write
        assert await conn.fetchval("SELECT count(*) FROM rmcs_tracked") == 0
        await conn.close()
    finally:
        await journal.close()
