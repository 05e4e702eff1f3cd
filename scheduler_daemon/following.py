"""Following dispatched jobs: each cluster's job list (or each job) turned into state changes,
retries and LOST. The transitions themselves are decided in `tracking` (pure); this object
asks the clusters and applies what changed through the job book.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping

import structlog

from .autoscaling import is_virtual
from .book import JobBook
from .clusters import HealthState
from .events import PublishAborted
from .jobs import TERMINAL, JobState
from .probing import ClusterState, Prober
from .rayapi import RayError, RayNotFound, RayRejected
from .settings import Settings
from .tasks import pause
from .tracking import Tracked, one_by_one, stop_message, transitions

log = structlog.get_logger("rmcs.following")

PRUNE_EVERY_S = 300.0


def gone(state: ClusterState, lost_after_s: float) -> bool:
    """Down for `lost_after_s`: what was on it counts as lost, a job may go elsewhere."""
    since = state.health.down_since
    return (state.health.state == HealthState.DOWN and since is not None
            and time.monotonic() - since >= lost_after_s)


class Follower:
    def __init__(self, settings: Settings, book: JobBook, prober: Prober, wake: Callable[[], None],
                 preempted: Callable[[str], str | None] = lambda sid: None) -> None:
        self.settings = settings
        self._preempted = preempted  # the reason a job was stopped for a queue's guarantee, if it was
        self.book = book
        self.prober = prober
        self._wake = wake
        self._missing: dict[str, int] = {}
        self._listed: dict[str, int] = {}  # per cluster, how many jobs its list held when last read
        self._next_prune = 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        """One look per cluster at a time, like the prober: a cluster that never answers
        holds back only its own jobs."""
        looks: dict[str, asyncio.Task[None]] = {}
        try:
            while not await pause(stopping, self.settings.track_interval_s):
                by_cluster: dict[str, list[Tracked]] = {}
                for t in self.book.tracked.values():
                    if not t.final and t.published:
                        by_cluster.setdefault(t.cluster, []).append(t)
                for cluster, task in list(looks.items()):
                    if not task.done():
                        by_cluster.pop(cluster, None)  # its previous look is still waiting
                        continue
                    del looks[cluster]
                    error = None if task.cancelled() else task.exception()
                    if isinstance(error, PublishAborted):
                        return
                    if error is not None:
                        log.error("tracking failed; will look again", cluster=cluster, error=repr(error))
                for cluster, ts in by_cluster.items():
                    looks[cluster] = asyncio.create_task(self.track_cluster(cluster, ts), name=f"track-{cluster}")
                await self._maybe_prune_journal()
        finally:
            for task in looks.values():
                task.cancel()
            await asyncio.gather(*looks.values(), return_exceptions=True)

    async def _maybe_prune_journal(self) -> None:
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            removed = await self.book.journal.prune(time.time() - self.settings.journal_retention_s)
            if removed:
                log.info("journal pruned", rows=removed)

    async def track_cluster(self, cluster: str, tracked: list[Tracked]) -> None:
        state = self.prober.clusters.get(cluster)
        if state is None:  # cluster removed from config while jobs ran there
            for t in tracked:
                await self.apply(t, JobState.LOST, f"cluster {cluster} is no longer configured")
            return
        if state.health.state == HealthState.DOWN:
            down_for = time.monotonic() - (state.health.down_since or time.monotonic())
            if down_for >= self.settings.lost_after_s:
                for t in tracked:
                    await self.apply(t, JobState.LOST, f"cluster {cluster} down for {down_for:.0f}s")
            return
        if one_by_one(len(tracked), self._listed.get(cluster)):
            tracked, ray_jobs = await self._look_up_each(state, tracked)
        else:
            try:
                ray_jobs = await state.dashboard.list_jobs()
            except RayError as exc:
                log.warning("job list failed", cluster=cluster, error=str(exc))
                return
            self._listed[cluster] = len(ray_jobs)
        for change in transitions(tracked, ray_jobs, self._missing):
            current = self.book.get(change.tracked.job.submission_id)
            if current is not None and not current.final:
                await self.apply(current, change.state, change.message, change.ray_time)

    async def _look_up_each(self, state: ClusterState, tracked: list[Tracked],
                            at_once: int = 8) -> tuple[list[Tracked], list[Mapping[str, Any]]]:
        """Ask the cluster for each job (a few at a time: dispatch shares the connections).
        Returns the jobs it answered for, and what it said of those it knows; one it does not
        know (404) counts as missing from its list, one whose look failed is left for next time."""
        answered: list[Tracked] = []
        known: list[Mapping[str, Any]] = []
        failed: list[RayError] = []
        for i in range(0, len(tracked), at_once):
            some = tracked[i:i + at_once]
            answers = await asyncio.gather(*(state.dashboard.job(t.job.ray_submission_id) for t in some),
                                           return_exceptions=True)
            for t, answer in zip(some, answers):
                if isinstance(answer, RayNotFound):
                    answered.append(t)
                elif isinstance(answer, RayError):
                    failed.append(answer)
                elif isinstance(answer, BaseException):
                    raise answer
                elif isinstance(answer, Mapping):
                    answered.append(t)
                    known.append(dict(answer, submission_id=t.job.ray_submission_id))
                else:
                    failed.append(RayRejected(200, "job info is not an object"))
        if failed:
            log.warning("job look-up failed", cluster=state.config.name, failed=len(failed),
                        of=len(tracked), error=str(failed[0]))
        return answered, known

    async def apply(self, t: Tracked, new: JobState, message: str | None,
                    ray_time: float | None = None) -> Tracked:
        """One state change of a dispatched job: ledger, journal, event, retry. `ray_time`
        is when it happened on Ray's clock, which the ledger compares with snapshot times."""
        job = t.job
        if new == JobState.STOPPED and (why := self._preempted(job.submission_id)) is not None:
            new, message = JobState.PREEMPTED, why
        ended = new in TERMINAL or new == JobState.PREEMPTED
        ledger = self.prober.clusters[t.cluster].ledger if t.cluster in self.prober.clusters else None
        now = ray_time if ray_time is not None else time.time()
        if ledger is not None:
            if new == JobState.RUNNING:
                # After a launch, Ray's start_time (its submission) comes before the node: only a
                # snapshot taken after the job was seen running shows it on its node.
                ledger.started(job.ray_submission_id, time.time() if is_virtual(t.node_id) else now)
            elif ended:
                if new == JobState.LOST:
                    ledger.forget(job.ray_submission_id)
                else:
                    snapshot = self.prober.clusters[t.cluster].snapshot
                    ledger.finished(job.ray_submission_id, now, t.node_id, job.ray_resources,
                                    was_running=t.seen_running or t.state == JobState.RUNNING,
                                    snapshot_time=snapshot.time if snapshot is not None else None)
        message = stop_message(t, new, message, max(now, time.time()))
        retry = new in (JobState.FAILED, JobState.LOST) and job.attempt - job.preemptions <= job.max_retries
        final = new in TERMINAL and not retry
        if retry:
            message = (f"{message or new.value.lower()}; retrying (attempt {job.attempt - job.preemptions + 1} "
                       f"of {job.max_retries + 1})")
        retry = retry or new == JobState.PREEMPTED  # back to its queue as the next attempt
        if new == JobState.LOST:  # stopped on its cluster if that comes back (zombies.py)
            await self.book.journal.remember_lost(job.ray_submission_id, t.cluster, job.submission_id)
        t = await self.book.record(t.moved(new, final=final, at=time.time()), published=False)
        with structlog.contextvars.bound_contextvars(submission_id=job.submission_id, cluster=t.cluster):
            log.info("job state", state=new.value, message=message, attempt=job.attempt)
            if retry:
                await self.book.emit(job, new, t.cluster, message, final)
                t = await self.book.queue_retry(t)
            else:
                self.book.send(job, new, t.cluster, message, final)
                self.book.confirm_later(t)
        self._missing.pop(job.submission_id, None)
        if ended:
            self._wake()
        return t
