"""The job book: the dispatched jobs this daemon follows, their journal records and the
confirms of their events.

A job's record and its events stay consistent: a record is journaled `published=False` before
its events go out, and marked published once the broker has confirmed every event of the job so
far. A restart publishes again the events of each record still unpublished (consumers dedupe).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Awaitable, Callable

import structlog

from .events import EventPublisher, JobEvent
from .jobs import Job, JobState
from .journal_base import JournalStore
from .tracking import Tracked
from .tasks import Work

RetryPublisher = Callable[[Job, int, bool], Awaitable[None]]

log = structlog.get_logger("rmcs.book")

MARK_RETRY_S = 1.0  # a record the journal failed to mark published is tried again after this long


class JobBook:
    def __init__(self, journal: JournalStore, publisher: EventPublisher, work: Work,
                 publish_retry: RetryPublisher, on_event: Callable[[str], None] = lambda state: None,
                 on_final: Callable[[str], None] = lambda submission_id: None) -> None:
        self.journal = journal
        self.publisher = publisher
        self.tracked: dict[str, Tracked] = {}
        self._work = work
        self._publish_retry = publish_retry
        self._on_event = on_event
        self._on_final = on_final  # a job's last event: its waiters (depends_on) are looked at
        self._sent: dict[str, list[asyncio.Future[None]]] = {}  # per job: events not known confirmed

    def __len__(self) -> int:
        return len(self.tracked)

    def get(self, submission_id: str) -> Tracked | None:
        return self.tracked.get(submission_id)

    async def load(self) -> int:
        for t in await self.journal.open_jobs():
            self.tracked[t.job.submission_id] = t
        return len(self.tracked)

    # ---- events ----------------------------------------------------------------------

    def send(self, job: Job, state: JobState, cluster: str | None, message: str | None = None,
             final: bool = False) -> asyncio.Future[None]:
        """Queue a job's event (in order); the future resolves when the broker confirms it."""
        confirmed = self.publisher.send(JobEvent.of(job, state, cluster, message, final))
        self._sent.setdefault(job.submission_id, []).append(confirmed)
        self._on_event(state.value)
        if final:
            self._on_final(job.submission_id)
        return confirmed

    async def emit(self, job: Job, state: JobState, cluster: str | None, message: str | None = None,
                   final: bool = False) -> None:
        """Send a job's event and wait until it, and every earlier event of the job, is confirmed."""
        self.send(job, state, cluster, message, final)
        await self.all_confirmed(job.submission_id)

    async def all_confirmed(self, submission_id: str) -> None:
        sent = self._sent.get(submission_id, [])
        waiting = list(sent)
        try:
            for confirmed in waiting:
                await confirmed
        finally:
            if self._sent.get(submission_id) is sent:
                sent[:] = [f for f in sent if not f.done()]
                if not sent:
                    del self._sent[submission_id]

    def confirm_later(self, t: Tracked) -> None:
        """Once the job's events so far are confirmed, mark its record published (unless it has
        moved on since: the newer record's own confirm marks that one). Until then the journal
        holds it unpublished, and a restart publishes its events again."""
        async def mark() -> None:
            await self.all_confirmed(t.job.submission_id)
            while self.tracked.get(t.job.submission_id) is t:
                try:
                    await self.record(t, published=True)
                    return
                except Exception as exc:  # the journal failed it (a database session ended, say)
                    # Unpublished, the job is not followed on its cluster: try until it is marked.
                    log.error("record not marked published; will try again", submission_id=t.job.submission_id,
                              error=repr(exc))
                    await asyncio.sleep(MARK_RETRY_S)

        self._work.spawn(mark(), f"confirm-{t.job.submission_id}")

    # ---- records ---------------------------------------------------------------------

    async def record(self, t: Tracked, *, published: bool) -> Tracked:
        """Journal `t` and make it the job's record. It is the record from before the write
        on: a confirm of an older state that arrives meanwhile then sees that the job has moved
        on, and does not write its own (older) record over this one. If the write fails, the
        record is again what it was, and the error is raised: a change the journal does not
        hold is not the job's state (the follower's next look finds it again)."""
        sid = t.job.submission_id
        current = self.tracked.get(sid)
        if current is not None and current.job.attempt > t.job.attempt:
            return t  # a later attempt already owns the record
        t = replace(t, published=published)
        self.tracked[sid] = t
        try:
            await self.journal.record(t)
        except BaseException:
            if self.tracked.get(sid) is t:
                if current is None:
                    del self.tracked[sid]
                else:
                    self.tracked[sid] = current
            raise
        if t.final and t.published and self.tracked.get(sid) is t:
            del self.tracked[sid]  # done; unless the next attempt took the place meanwhile
        return t

    def follow(self, t: Tracked) -> None:
        """Take over a journaled job (one the other daemon of a pair wrote)."""
        self.tracked[t.job.submission_id] = t
        if not t.published:
            self._work.spawn(self.republish_unconfirmed(t.job.submission_id), f"republish-{t.job.submission_id}")

    async def queue_retry(self, t: Tracked) -> Tracked:
        """Put the next attempt in the intake queue, then close this one. Safe to repeat
        after a crash: a second copy of the retry message is recognised and dropped. After a
        preemption there is no RETRYING: the next attempt is ACCEPTED again, not a retry."""
        job = t.job
        preempted = t.state == JobState.PREEMPTED
        if not preempted:
            await self.emit(job, JobState.RETRYING, t.cluster, f"attempt {job.attempt + 1} queued")
        await self._publish_retry(job, job.attempt + 1, preempted)  # after RETRYING: events stay in order
        return await self.record(t.moved(t.state, final=True), published=True)

    async def republish_unconfirmed(self, only: str | None = None) -> None:
        """After a restart: publish again the events of each journaled job whose last event was
        not confirmed. Its earlier events were sent without waiting and may not have been
        confirmed either, so its whole path goes again, in order (consumers drop duplicates)."""
        for sid, t in list(self.tracked.items()):
            if not t.published and only in (None, sid):
                pending_retry = t.state in (JobState.FAILED, JobState.LOST, JobState.PREEMPTED) and not t.final
                for earlier in path_to(t):
                    self.send(t.job, earlier, None if earlier == JobState.ACCEPTED else t.cluster)
                if pending_retry:  # the retry goes to the queue after its events are confirmed
                    await self.emit(t.job, t.state, t.cluster, None, t.final)
                    await self.queue_retry(t)
                else:  # no waiting: a burst of them shares the confirms
                    self.send(t.job, t.state, t.cluster, None, t.final)
                    self.confirm_later(t)


def path_to(t: Tracked) -> list[JobState]:
    """The states a dispatched job went through before `t.state`, in order."""
    path = [JobState.ACCEPTED]
    if t.state != JobState.DISPATCHED:
        path.append(JobState.DISPATCHED)
    if t.seen_running and t.state != JobState.RUNNING:
        path.append(JobState.RUNNING)
    return path
