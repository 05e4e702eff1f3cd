"""The job book when the journal fails a write (its database session ended, say): the job's
record stays what the journal holds, and a record still to be marked published is marked later."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scheduler_daemon import book as book_module
from scheduler_daemon.book import JobBook
from scheduler_daemon.jobs import Job, JobState
from scheduler_daemon.tasks import Work
from scheduler_daemon.tracking import Tracked


class FlakyJournal:
    """Fails the writes whose turn in `fails` is True; keeps the others."""

    def __init__(self, fails: list[bool]) -> None:
        self.fails = fails
        self.rows: list[Tracked] = []

    async def record(self, t: Tracked) -> None:
        if self.fails and self.fails.pop(0):
            raise ConnectionError("the session ended")
        self.rows.append(t)


class Confirming:
    """A publisher whose broker confirms every event at once."""

    def send(self, event: Any) -> "asyncio.Future[None]":
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        confirmed.set_result(None)
        return confirmed


async def _no_retry(job: Job, attempt: int, preempted: bool) -> None:
    raise AssertionError("no retry here")


def _book(journal: FlakyJournal) -> JobBook:
    return JobBook(journal, Confirming(), Work(), _no_retry)  # type: ignore[arg-type]


async def test_a_change_the_journal_fails_is_not_the_jobs_record() -> None:
    journal = FlakyJournal([False, True])
    book = _book(journal)
    job = Job("a", "a", "/bin/true")
    dispatched = await book.record(Tracked(job, "c1", "n1", JobState.DISPATCHED), published=True)
    with pytest.raises(ConnectionError):
        await book.record(dispatched.moved(JobState.RUNNING), published=False)
    # Still the published DISPATCHED record: the follower looks at it, and finds RUNNING again.
    assert book.get("a") is dispatched
    first = Job("b", "b", "/bin/true")
    with pytest.raises(ConnectionError):
        await _book(FlakyJournal([True])).record(Tracked(first, "c1", "n1", JobState.DISPATCHED), published=False)


async def test_a_record_the_journal_failed_to_mark_published_is_marked_later(monkeypatch) -> None:
    monkeypatch.setattr(book_module, "MARK_RETRY_S", 0.01)
    journal = FlakyJournal([False, True, True, False])
    book = _book(journal)
    job = Job("a", "a", "/bin/true")
    t = await book.record(Tracked(job, "c1", "n1", JobState.DISPATCHED), published=False)
    book.send(job, JobState.DISPATCHED, "c1")
    book.confirm_later(t)
    for _ in range(200):
        current = book.get("a")
        if current is not None and current.published:
            break
        await asyncio.sleep(0.01)
    current = book.get("a")
    assert current is not None and current.published and current.state == JobState.DISPATCHED
    assert [r.published for r in journal.rows] == [False, True]
