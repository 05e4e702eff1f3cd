"""The journal: what it records survives a restart, and a late write never replaces a later attempt."""

from __future__ import annotations

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
