"""Deadlines: a job RUNNING longer than its `run_timeout_s` is stopped on its cluster; a job sent
to a node yet to launch that is not RUNNING within `autoscale_timeout_s` goes elsewhere.

The start counts from when the daemon first saw the job RUNNING (`Tracked.running_since`,
journaled), so the deadline holds across a restart and on the other daemon of a failover pair.
The stop goes to Ray like a user's; the STOPPED that follows gets a message naming the timeout
(`tracking.stop_message`, in the follower). A stop that did not take is sent again after
RESEND_S, as long as the job still runs.
"""

from __future__ import annotations

import time
from typing import Callable

import structlog

from .autoscaling import is_virtual, type_of
from .book import JobBook
from .jobs import JobState
from .probing import Prober
from .stopping import stop_on_cluster
from .tasks import Work
from .tracking import Tracked, overdue

log = structlog.get_logger("rmcs.timeouts")

RESEND_S = 5.0


class RunTimeouts:
    def __init__(self, book: JobBook, prober: Prober, work: Work, autoscale_timeout_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.autoscale_timeout_s = autoscale_timeout_s
        self._launch_wait: dict[str, float] = {}  # per job sent to a node yet to launch: first seen
        self._held: dict[tuple[str, str], float] = {}  # (cluster, node type) -> held back until
        self.book = book
        self.prober = prober
        self._work = work
        self.clock = clock
        self._sent: dict[str, float] = {}  # per job stopped for its timeout: when the stop was sent

    async def check(self) -> None:
        """Stop every job past its deadline (called every track interval by the daemon)."""
        now = self.clock()
        await self._check_launches(now)
        due = [t for t in self.book.tracked.values() if t.job.run_timeout_s is not None and overdue(t, now)]
        for sid in set(self._sent) - {t.job.submission_id for t in due}:
            del self._sent[sid]
        for t in due:
            sid = t.job.submission_id
            if now - self._sent.get(sid, -RESEND_S) >= RESEND_S:
                self._sent[sid] = now
                self._work.spawn(self._stop(t), f"run-timeout-{sid}")

    async def _stop(self, t: Tracked) -> None:
        limit = t.job.run_timeout_s
        with structlog.contextvars.bound_contextvars(submission_id=t.job.submission_id, cluster=t.cluster):
            log.info("run timeout passed; stopping the job", run_timeout_s=limit)
            await stop_on_cluster(self.prober, t, f"run_timeout_s={limit:g} passed")

    async def _check_launches(self, now: float) -> None:
        waiting = {sid: t for sid, t in self.book.tracked.items()
                   if is_virtual(t.node_id) and t.state == JobState.DISPATCHED and not t.final}
        for sid in set(self._launch_wait) - set(waiting):
            del self._launch_wait[sid]
        for sid, t in waiting.items():
            if now - self._launch_wait.setdefault(sid, now) >= self.autoscale_timeout_s:
                del self._launch_wait[sid]
                self._held[(t.cluster, type_of(t.node_id))] = now + self.autoscale_timeout_s
                self._hold(now)  # before the next attempt is queued
                await self._elsewhere(t)
        self._hold(now)

    def _hold(self, now: float) -> None:
        held: dict[str, set[str]] = {}
        for (cluster, node_type), until in list(self._held.items()):
            if until <= now:
                del self._held[(cluster, node_type)]
            else:
                held.setdefault(cluster, set()).add(node_type)
        for name, state in self.prober.clusters.items():
            if state.config.autoscaling is not None:
                state.hold_back(frozenset(held.get(name, ())))

    async def _elsewhere(self, t: Tracked) -> None:
        job, node_type = t.job, type_of(t.node_id)
        message = (f"no {node_type} node started on {t.cluster} within autoscale_timeout_s="
                   f"{self.autoscale_timeout_s:g}; trying elsewhere")
        with structlog.contextvars.bound_contextvars(submission_id=job.submission_id, cluster=t.cluster):
            log.warning("launch never came; the job goes back", node_type=node_type)
            await stop_on_cluster(self.prober, t, message)
            state = self.prober.clusters.get(t.cluster)
            if state is not None:
                state.ledger.forget(job.ray_submission_id)
            # rmcs takes the attempt back, as a preemption does (docs/contract.md): PREEMPTED, not
            # final, then ACCEPTED as the next attempt, which does not count against max_retries.
            t = await self.book.record(t.moved(JobState.PREEMPTED), published=False)
            await self.book.emit(job, JobState.PREEMPTED, t.cluster, message)
            await self.book.queue_retry(t)
