"""Upkeep: the reconcile at start, Ray's job retention, taking over a pair's journal, and the
reports the status service reads (the clusters as this daemon sees them, and its metrics)."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import orjson
import structlog

from .admission import Window
from .book import JobBook
from .events import EventPublisher, JobEvent
from .jobs import RAY_STATES, TERMINAL, JobState
from .probing import Prober
from .rayapi import RayError, RayNotFound, RayRejected
from .settings import Settings
from .queueconf import queue_of_key
from .status.store import (CLUSTERS_REPORT, METRICS_REPORT, QUEUES_REPORT, SCHEDULER_REPORT, JobStatus,
                           StatusStore, now_minus)

log = structlog.get_logger("rmcs.upkeep")

RETRY_DELETE_S = 600.0  # a job Ray would not delete is tried again after this long


def ray_id(submission_id: str, attempt: int) -> str:
    return submission_id if attempt == 1 else f"{submission_id}~{attempt}"


class Upkeep:
    def __init__(self, settings: Settings, *, book: JobBook, prober: Prober, store: StatusStore,
                 publisher: EventPublisher, render_metrics: Callable[[], bytes],
                 is_held: Callable[[str], bool], window: Window | None = None,
                 queue_depths: Callable[[], Mapping[str, int | None]] = dict,
                 clock: Callable[[], float] = time.monotonic,
                 report_queues: Callable[[], list[Any]] = list) -> None:
        self.settings = settings
        self.book = book
        self.prober = prober
        self.store = store
        self.publisher = publisher
        self._render_metrics = render_metrics
        self._is_held = is_held
        self._window = window
        self._queue_depths = queue_depths
        self._clock = clock
        self._report_queues = report_queues

    async def reconcile(self) -> None:
        """At start: jobs the status cache thinks run, that ended while the daemon was away,
        get their real end state from their cluster, published like any other change."""
        for status in await self.store.open_jobs():
            if status.state not in ("DISPATCHED", "RUNNING") or self.book.get(status.submission_id) is not None:
                continue
            state = self.prober.clusters.get(status.cluster or "")
            if state is None:
                continue
            try:
                info = await state.dashboard.job(ray_id(status.submission_id, status.attempt))
            except RayError:
                continue
            ended = RAY_STATES.get(str(info.get("status")))
            if ended is not None and ended in TERMINAL:
                await self.publisher.publish(_final_event(status, ended, "reconciled with the cluster at start"))

    async def follow_journal(self) -> None:
        """A pair's new leader: take over jobs the previous leader journaled after this one loaded."""
        for t in await self.book.journal.open_jobs():
            sid = t.job.submission_id
            if self.book.get(sid) is None and not self._is_held(sid):
                log.info("following a job the previous leader journaled", submission_id=sid,
                         cluster=t.cluster, state=t.state.value)
                self.book.follow(t)

    async def delete_expired_ray_jobs(self) -> None:
        """Ray keeps job history forever: delete recorded terminal jobs after the retention. A
        job that cannot be deleted now is passed over for RETRY_DELETE_S, so the sweep moves on."""
        for status in await self.store.due_for_deletion(now_minus(self.settings.ray_job_retention_s)):
            state = self.prober.clusters.get(status.cluster or "")
            try:
                if state is None:
                    raise RayRejected(404, f"cluster {status.cluster} is not configured")
                await state.dashboard.delete(ray_id(status.submission_id, status.attempt))
            except RayNotFound:
                pass
            except RayError as exc:
                log.warning("could not delete job from its cluster; will try again later", cluster=status.cluster,
                            submission_id=status.submission_id, error=str(exc))
                await self.store.postpone_deletion(status.submission_id, now_minus(-RETRY_DELETE_S))
                continue
            await self.store.mark_deleted(status.submission_id)

    async def prune_status_cache(self) -> None:
        """The status cache keeps a job for `status_retention_s` after it ended and left its
        cluster, and at most `status_max_jobs` jobs."""
        s = self.settings
        forgotten = await self.store.prune(now_minus(s.status_retention_s), s.status_max_jobs)
        if forgotten:
            log.info("status cache pruned", jobs=forgotten)
        packages = await self.store.prune_packages(time.time() - s.journal_retention_s)
        if packages:
            log.info("job packages not used for journal_retention_s forgotten", packages=packages)

    async def report(self) -> None:
        """What the status service shows of this daemon: its clusters and its metrics."""
        views = [v.summary() for v in self.prober.views()]
        await self.store.put_reports({  # one write
            CLUSTERS_REPORT: orjson.dumps(views), METRICS_REPORT: self._render_metrics(),
            SCHEDULER_REPORT: orjson.dumps(self.scheduler_report()),
            QUEUES_REPORT: orjson.dumps(self._report_queues())})

    def scheduler_report(self) -> dict[str, Any]:
        """The jobs waiting in the window, in the order the next pass takes them, each with why it
        waits, and the messages waiting in RabbitMQ per queue (as last read, every 5 s)."""
        now = self._clock()
        waiting = [] if self._window is None else [
            {"submission_id": h.job.submission_id, "position": i, "priority": h.job.priority,
             "waited_s": round(now - h.accepted_at, 3), "reason": h.last_reason or None}
            for i, h in enumerate(self._window.waiting(), 1)]
        dispatching = 0 if self._window is None else len(self._window) - len(waiting)
        depths = dict(self._queue_depths()) or {"default": None}
        return {"window_size": self.settings.window_size, "waiting": waiting, "dispatching": dispatching,
                "queues": [{"name": name, "broker_queue": queue_of_key(self.settings.intake_queue, name),
                            "waiting_in_broker": depth} for name, depth in depths.items()]}


def _final_event(status: JobStatus, state: JobState, message: str) -> JobEvent:
    return JobEvent(state, status.submission_id, status.job_id, status.cluster, status.attempt, message,
                    final=True, tags=status.tags, metadata=dict(status.metadata), priority=status.priority,
                    resource_requirements=dict(status.resource_requirements), owner=status.owner)
