"""Jobs that wait for others (`depends_on`): held durably outside the window, then released.

A job whose dependencies are not all met is stored (`waiting.WaitingStore`), published as
ACCEPTED then WAITING, and its message acknowledged: it holds no place in the window and no
memory, and intake goes on. When a job ends, its waiters are looked at again (`nudge`, from the
job book); every waiting job is looked at again at start and every FULL_SWEEP_S, which also
catches ends this daemon did not see. A waiter whose dependencies all SUCCEEDED is released: put
back in the intake queue (header `x-rmcs-released`, from the daemon's user), where it waits its
turn like any job and is placed as usual. One whose dependency ended otherwise ends CANCELLED,
naming it; one past its queue_timeout_s ends EXPIRED. The decisions are `dependencies` (pure).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

import structlog
from aio_pika.abc import AbstractIncomingMessage

from producers.wire import RELEASED_HEADER

from .admission import Window
from .book import JobBook
from .dependencies import Condition, Known, Verdict, condition, resolve, waiting_for
from .events import PublishAborted
from .intake import Intake
from .jobs import Job, JobState
from .settings import Settings
from .status.store import StatusStore
from .tasks import pause
from .waiting import Waiter, WaitingStore

log = structlog.get_logger("rmcs.dependents")

CHECK_S = 1.0         # expiry, and ends not yet looked at
FULL_SWEEP_S = 30.0   # every waiting job looked at again
PAGE = 500


def is_release(message: AbstractIncomingMessage, daemon_user: str | None) -> bool:
    """Whether a message is a waiting job this daemon released (trusted only from its own user)."""
    return (daemon_user is not None and message.user_id == daemon_user
            and bool((message.headers or {}).get(RELEASED_HEADER)))


class Dependents:
    def __init__(self, settings: Settings, *, store: WaitingStore, book: JobBook, window: Window,
                 status: StatusStore, intake: Callable[[], Intake], clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.book = book
        self.window = window
        self.status = status
        self._intake = intake
        self.clock = clock
        self._ended: set[str] = set()
        self._wake = asyncio.Event()

    def nudge(self, submission_id: str) -> None:
        """A job ended: its waiters are looked at on the next turn."""
        self._ended.add(submission_id)
        self._wake.set()

    # ---- intake ----------------------------------------------------------------------

    async def take(self, job: Job, message: AbstractIncomingMessage, *, released: bool) -> bool:
        """For a job about to enter the window: True when it was taken care of here (it waits,
        was cancelled, refused, or is a copy of a waiting job), False to hold it as usual."""
        intake = self._intake()
        if released:
            return False
        if await self.store.contains(job.submission_id):
            if message.redelivered:  # stored, but the events may not have gone out
                await self._announce(job, await self._conditions(job.depends_on))
                await intake.ack(message)
            else:
                await intake.dead_letter(message, f"duplicate submission_id {job.submission_id!r}: "
                                                  "a job with this id is waiting for its dependencies")
            return True
        if not job.depends_on:
            return False
        states = await self._conditions(job.depends_on)
        resolution = resolve(job.depends_on, states)
        if resolution.verdict == Verdict.READY:
            return False
        if resolution.verdict == Verdict.CANCEL:
            await self._end_unstored(job, message, JobState.CANCELLED, resolution.reason)
            return True
        if self.store.count >= self.settings.max_waiting_jobs:
            reason = f"too many jobs wait for dependencies (max_waiting_jobs={self.settings.max_waiting_jobs})"
            await self._end_unstored(job, message, JobState.REJECTED, reason)
            return True
        now = self.clock()
        await self.store.add(job, now, now + job.queue_timeout_s if job.queue_timeout_s else None)
        await self._announce(job, states)  # confirmed before the ack: a crash repeats it, never loses it
        await intake.ack(message)
        log.info("job waits for its dependencies", submission_id=job.submission_id, depends_on=list(job.depends_on))
        await self._evaluate(job)  # a dependency may have ended while it was being stored
        return True

    async def _announce(self, job: Job, states: dict[str, tuple[Condition, str | None]]) -> None:
        self.book.send(job, JobState.ACCEPTED, None)
        await self.book.emit(job, JobState.WAITING, None, waiting_for(job.depends_on, states))

    async def _end_unstored(self, job: Job, message: AbstractIncomingMessage, state: JobState, reason: str) -> None:
        intake = self._intake()
        await self.book.journal.end(job.submission_id, state.value, reason)
        log.info("job ended at intake", submission_id=job.submission_id, state=state.value, reason=reason)
        self.book.send(job, JobState.ACCEPTED, None)
        await self.book.emit(job, state, None, reason, final=True)
        if state == JobState.REJECTED:
            await intake.dead_letter(message, reason)
        else:
            await intake.ack(message)

    # ---- what is known of a dependency ---------------------------------------------------

    async def _conditions(self, deps: Iterable[str], memo: dict[str, tuple[Condition, str | None]] | None = None
                          ) -> dict[str, tuple[Condition, str | None]]:
        """Each dependency's condition; `memo` shares the look-ups over one sweep's page."""
        out: dict[str, tuple[Condition, str | None]] = {}
        for dep in deps:
            if memo is not None and dep in memo:
                out[dep] = memo[dep]
                continue
            known = await self._known(dep)
            out[dep] = (condition(known), known.state if known else None)
            if memo is not None:
                memo[dep] = out[dep]
        return out

    async def _known(self, dep: str) -> Known | None:
        if self.window.get(dep) is not None:
            return Known(JobState.ACCEPTED.value, False)
        t = self.book.get(dep)
        if t is None:
            record = await self.book.journal.lookup(dep)
            t = record.tracked
            if t is None and record.ended is not None:
                return Known(record.ended[0], True)
        if t is not None:
            retry = t.state in (JobState.FAILED, JobState.LOST) and t.job.attempt <= t.job.max_retries
            return Known(t.state.value, t.final, retry)
        if await self.store.contains(dep):
            return Known(JobState.WAITING.value, False)
        status = await self.status.get(dep, history=False)  # ends the daemon never held (REJECTED at intake)
        return Known(status.state, status.final) if status is not None else None

    # ---- the loop ----------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        next_sweep = 0.0
        while not stopping.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + FULL_SWEEP_S
                    await self.sweep()
                ended, self._ended = self._ended, set()
                if ended:
                    memo: dict[str, tuple[Condition, str | None]] = {}
                    for waiter in await self.store.waiters_of(ended):
                        await self._evaluate(waiter, memo)
                for job in await self.store.expired(self.clock()):
                    await self.end(job, JobState.EXPIRED, f"dependencies not met within queue_timeout_s="
                                                          f"{job.queue_timeout_s:g}")
            except PublishAborted:
                return
            except Exception:
                log.exception("looking at waiting jobs failed; will look again")
            self._wake.clear()
            if not self._ended:
                try:
                    await asyncio.wait_for(self._wake.wait(), CHECK_S)
                except asyncio.TimeoutError:
                    pass
            if await pause(stopping, 0):
                return

    async def sweep(self) -> None:
        """Look at every waiting job again, a page at a time."""
        after = ""
        while page := await self.store.page(after, PAGE):
            memo: dict[str, tuple[Condition, str | None]] = {}
            for waiter in page:
                await self._evaluate(waiter, memo)
            after = page[-1].submission_id

    async def _evaluate(self, waiter: Job | Waiter, memo: dict[str, tuple[Condition, str | None]] | None = None
                        ) -> None:
        resolution = resolve(waiter.depends_on, await self._conditions(waiter.depends_on, memo))
        if resolution.verdict == Verdict.WAIT:
            return
        job = waiter if isinstance(waiter, Job) else await self.store.get(waiter.submission_id)
        if job is None:  # released or ended meanwhile
            return
        if resolution.verdict == Verdict.READY:
            await self._intake().publish_retry(job, job.attempt, released=True)
            if await self.store.remove(job.submission_id):
                log.info("dependencies met; job released to the queue", submission_id=job.submission_id)
        elif resolution.verdict == Verdict.CANCEL:
            await self.end(job, JobState.CANCELLED, resolution.reason)

    async def end(self, job: Job, state: JobState, reason: str) -> None:
        """End a waiting job before placement: CANCELLED or EXPIRED (journaled, then announced)."""
        await self.book.journal.end(job.submission_id, state.value, reason)
        log.info("waiting job ended", submission_id=job.submission_id, state=state.value, reason=reason)
        await self.book.emit(job, state, None, reason, final=True)
        await self.store.remove(job.submission_id)
