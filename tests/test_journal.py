"""The journal: what it records survives a restart, and a late write never replaces a later attempt."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from builders import job
from pgkit import pg_url  # noqa: F401  (fixture)
from scheduler_daemon.jobs import Job, JobState
from scheduler_daemon.journal import Journal, Lookup, Tracked
from scheduler_daemon.pgjournal import PgJournal


@pytest.fixture(params=["sqlite", "postgresql"])
def make_journal(request: Any, tmp_path: Path) -> Any:
    """Each test runs on both journals: SQLite (one host) and PostgreSQL (shared)."""
    if request.param == "sqlite":
        return lambda: Journal(tmp_path / "state" / "journal.sqlite")
    url = request.getfixturevalue("pg_url")
    return lambda: PgJournal(url)


async def test_journal_round_trip(make_journal: Any) -> None:
    journal = make_journal()
    await journal.open()
    try:
        full = Job(submission_id="s1", job_id="j1", entrypoint="python /opt/x.py", runtime_env={"pip": ["a"]},
                   metadata={"k": "v"}, preferred_cluster="gpu_cluster", resources={"CPU": 1.0, "memory": 0.5},
                   tags=("a", "b"), cluster_tags=frozenset({"gpu"}), priority=7, max_retries=2,
                   queue_timeout_s=30.0, attempt=2, correlation_id="c", reply_to="r",
                   body=b'{"entrypoint": "python /opt/x.py"}')
        t1 = Tracked(full, "gpu_cluster", "n1", JobState.DISPATCHED)
        await journal.record(t1)
        assert await journal.get("s1") == t1
        assert await journal.get("nope") is None

        # Newer records replace older ones.
        t1b = t1.moved(JobState.RUNNING)
        assert t1b.seen_running and not t1b.published
        await journal.record(t1b)
        assert await journal.get("s1") == t1b

        done = Tracked(job("s2"), "cpu_cluster", "n2", JobState.SUCCEEDED, published=True, final=True,
                       seen_running=True)
        unconfirmed = Tracked(job("s3"), "cpu_cluster", "n2", JobState.FAILED, published=False, final=True)
        await journal.record(done)
        await journal.record(unconfirmed)
        open_ids = {t.job.submission_id for t in await journal.open_jobs()}
        assert open_ids == {"s1", "s3"}
        assert await journal.get("s2") == done

        # One lookup answers what get, ended and cancellation answer.
        await journal.end("s4", "EXPIRED", "too late")
        await journal.cancel("s5", "stop")
        await journal.cancel("s6", "mine", requester="alice")
        assert await journal.lookup("s1") == Lookup(t1b, None, None)
        assert await journal.lookup("s4") == Lookup(None, ("EXPIRED", "too late"), None)
        assert await journal.lookup("s5") == Lookup(None, None, ("stop", None))
        assert await journal.lookup("s6") == Lookup(None, None, ("mine", "alice"))
    finally:
        await journal.close()

    # Survives a restart.
    again = make_journal()
    await again.open()
    try:
        assert await again.get("s1") == t1b
    finally:
        await again.close()


async def test_journal_never_writes_over_a_later_attempt(make_journal: Any) -> None:
    """Closing attempt 1 (final, published) can finish after attempt 2 was dispatched:
    the journal keeps attempt 2's record."""
    journal = make_journal()
    await journal.open()
    try:
        first = job("r1")
        second = replace(first, attempt=2)
        await journal.record(Tracked(second, "spare", "n", JobState.DISPATCHED))
        await journal.record(Tracked(first, "doomed", "n", JobState.LOST, published=True, final=True))
        kept = await journal.get("r1")
        assert kept is not None and kept.job.attempt == 2 and kept.cluster == "spare"
        assert [t.job.attempt for t in await journal.open_jobs()] == [2]
    finally:
        await journal.close()


async def test_an_intent_is_looked_up_until_the_job_is_journaled(make_journal: Any) -> None:
    """Write-ahead dispatch: the intent names the cluster until the job's record replaces it;
    a LOST attempt is kept until it has been stopped on its cluster."""
    journal = make_journal()
    await journal.open()
    try:
        j = job("w1")
        await journal.intend(j, "c1")
        assert (await journal.lookup("w1")).intent == ("c1", 1)
        await journal.record(Tracked(j, "c1", "n", JobState.DISPATCHED))
        assert (await journal.lookup("w1")).intent is None
        await journal.remember_lost("w1", "c1", "w1")
        await journal.remember_lost("w2~2", "c2", "w2")
        assert await journal.lost_attempts() == [("w1", "c1"), ("w2~2", "c2")]
        await journal.forget_lost("w1")
        assert await journal.lost_attempts() == [("w2~2", "c2")]
    finally:
        await journal.close()


async def test_an_intent_written_while_the_jobs_record_is_being_written_stays(make_journal: Any) -> None:
    """A job sent back to its window (its record being written, which deletes its intents) and
    dispatched again at once: the new intent is not deleted by the record written before it,
    though intents do not queue behind records (PostgreSQL: a group commit of their own)."""
    journal = make_journal()
    await journal.open()
    try:
        j = job("again")
        await journal.intend(j, "c1")
        for _ in range(20):
            recorded = asyncio.ensure_future(journal.record(Tracked(j, "c1", "n", JobState.DISPATCHED)))
            await asyncio.sleep(0)  # the record is queued (and perhaps on the wire)
            await journal.intend(j, "c2")
            await recorded
            assert (await journal.lookup("again")).intent == ("c2", 1)
    finally:
        await journal.close()


async def test_intents_are_trusted_after_a_clean_stop_or_a_killed_process_not_after_a_reboot(tmp_path: Path) -> None:
    """Intents are committed without waiting for the disk: they survive a killed process (the OS
    keeps the write), not a crash of the machine. A start after a clean stop, or after a kill on
    the same boot, trusts them; a start on another boot after a run that did not stop does not."""
    import sqlite3

    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    await journal.open()
    assert journal.intents_trusted  # a new journal
    await journal.record(Tracked(job("t1"), "c", "n", JobState.DISPATCHED))
    await journal.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta")  # as a journal from before intents
    db.commit()
    db.close()
    journal = Journal(path)
    await journal.open()
    assert not journal.intents_trusted
    await journal.close()
    for clean in (True, False):  # a clean stop; a kill (close never ran) on the same boot
        journal = Journal(path)
        await journal.open()
        assert journal.intents_trusted
        if clean:
            await journal.close()
        else:
            await journal._db.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 'another-boot' WHERE key = 'boot'")  # killed, then the machine restarted
    db.commit()
    db.close()
    journal = Journal(path)
    await journal.open()
    try:
        assert not journal.intents_trusted
    finally:
        await journal.close()


async def test_an_intent_survives_a_kill_and_an_old_journals_intents_move_to_their_file(tmp_path: Path) -> None:
    """On SQLite, intents live in a file of their own, written on the loop (intentfile.py). After a
    kill, the next start finds an intent whose record was never written, not one whose record was;
    the intents a journal from before that file holds are moved there."""
    import sqlite3

    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    await journal.open()
    await journal.intend(job("k1"), "c1")
    await journal.intend(job("k2"), "c2")
    await journal.record(Tracked(job("k2"), "c2", "n", JobState.DISPATCHED))
    await journal._db.close()  # killed: the journal never stopped cleanly
    db = sqlite3.connect(path)
    db.execute("INSERT INTO intents VALUES ('old', 1, 'c3', 0)")  # as a journal from before the file
    db.commit()
    db.close()
    journal = Journal(path)
    await journal.open()
    try:
        assert (await journal.lookup("k1")).intent == ("c1", 1)
        assert (await journal.lookup("old")).intent == ("c3", 1)
        assert (await journal.lookup("k2")).intent is None
        db = sqlite3.connect(path)
        assert db.execute("SELECT COUNT(*) FROM intents").fetchone() == (0,)
        db.close()
    finally:
        await journal.close()


async def test_postgresql_intents_are_trusted_only_while_the_server_has_not_restarted(pg_url: str) -> None:
    """Intents go to PostgreSQL without waiting for its disk, so a server that went down may have
    lost the last ones: a journal opened after the server restarted (here: its first recorded
    start moved back) looks for redelivered jobs everywhere, and so does a daemon that sees the
    server go under it. The intent itself is there at once, for any other session."""
    import asyncpg

    journal = PgJournal(pg_url)
    await journal.open()
    try:
        assert journal.intents_trusted
        await journal.intend(job("pi1"), "c1")
        other = await asyncpg.connect(pg_url)
        try:
            assert await other.fetchval("SELECT cluster FROM rmcs_intents WHERE submission_id = 'pi1'") == "c1"
            await other.execute("UPDATE rmcs_server SET first_start = first_start - interval '1 hour'")
        finally:
            await other.close()
    finally:
        await journal.close()
    journal = PgJournal(pg_url)
    await journal.open()
    try:
        assert not journal.intents_trusted
        assert (await journal.lookup("pi1")).intent == ("c1", 1)
    finally:
        await journal.close()
    # A server that goes down under a running journal: its pools open new sessions, which see it.
    other = await asyncpg.connect(pg_url)
    try:
        await other.execute("UPDATE rmcs_server SET first_start = pg_postmaster_start_time()")
        running = PgJournal(pg_url)
        await running.open()
        try:
            assert running.intents_trusted
            await other.execute("UPDATE rmcs_server SET first_start = first_start - interval '1 hour'")
            assert running.pool is not None
            await running.pool.expire_connections()  # as after a restart: the next use opens a new one
            await running.end("pi2", "CANCELLED", "x")
            assert not running.intents_trusted
        finally:
            await running.close()
    finally:
        await other.close()


async def test_a_postgresql_journal_closes_after_its_sessions_were_ended_under_it(pg_url: str) -> None:
    """The server ends every session of a running journal (as a restart or an administrator
    would): the writes after it may fail, but closing the journal does not wait for ever for a
    session asyncpg can no longer give back."""
    import asyncio

    import asyncpg

    journal = PgJournal(pg_url)
    await journal.open()
    other = await asyncpg.connect(pg_url)
    try:
        await other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        for i in range(3):
            try:
                await journal.end(f"gone{i}", "CANCELLED", "x")
            except Exception:  # noqa: BLE001 (which error a dead session gives is asyncpg's business)
                pass
    finally:
        await other.close()
        await asyncio.wait_for(journal.close(), 30)  # a hang, not a speed: close_pool gives up at 10 s
