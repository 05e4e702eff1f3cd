"""Preempting: a queue owed its guarantee gets it back by stopping jobs of queues that borrow.
The choice is `preemption.choose_victims` (pure); this object gathers its inputs, says why in
one log line, asks the victims' cluster to stop them, and remembers why, so that the follower
turns their STOPPED into PREEMPTED and requeues them as the next attempt (docs/queues.md).
"""

from __future__ import annotations

import time
from typing import Callable

import structlog

from .book import JobBook
from .clusters import HealthState, ray_name
from .jobs import GIB, Job, JobState
from .placement import Placer
from .preemption import Room, Running, choose_victims
from .probing import Prober
from .stopping import stop_on_cluster
from .tasks import Work
from .tenancy import Tenancy
from .tracking import Tracked

log = structlog.get_logger("rmcs.preemption")

PENDING_S = 30.0  # a stop not seen through by then no longer counts as coming


class Preempting:
    def __init__(self, *, book: JobBook, prober: Prober, placer: Placer, tenancy: Tenancy, work: Work,
                 waits: Callable[[str], bool] = lambda sid: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.book = book
        self.prober = prober
        self.placer = placer
        self.tenancy = tenancy
        self._work = work
        self._waits = waits  # whether a job is still in the window, not placed yet
        self.clock = clock
        self._pending: dict[str, tuple[str, float, str]] = {}  # victim -> (reason, asked at, for job)
        # Waiting jobs whose victims are being stopped, or were stopped while the job still waits ->
        # (queue, resources, asked at): they count as held by their queue, so that the next waiting
        # job of the queue preempts only for its own share, and the job itself does not preempt
        # again while Ray frees what its victims held (a second or two after their stop is seen).
        self._claims: dict[str, tuple[str, dict[str, float], float]] = {}
        self.preempted = 0

    def take(self, submission_id: str) -> str | None:
        """The follower saw `submission_id` stop: the reason, if it was preempted (once)."""
        entry = self._pending.pop(submission_id, None)
        return entry[0] if entry is not None else None

    def _prune(self) -> None:
        now = self.clock()
        for sid, (_, at, _) in list(self._pending.items()):
            t = self.book.get(sid)
            if t is None or t.final or now - at > PENDING_S:
                del self._pending[sid]
        waiting_for = {for_job for _, _, for_job in self._pending.values()}
        for sid, (_, _, at) in list(self._claims.items()):
            if sid not in waiting_for and (not self._waits(sid) or now - at > PENDING_S):
                del self._claims[sid]

    def consider(self, job: Job) -> bool:
        """`job` waits and fits nowhere now: stop jobs for it if its queue is owed its guarantee.
        Jobs already being stopped are not chosen again, and a job waits for its own victims."""
        q = self.tenancy.queues.get(job.queue)
        if q is None or not q.guaranteed:
            return False
        self._prune()
        if job.submission_id in self._claims:
            return False
        running: list[Running] = []
        by_id: dict[str, Tracked] = {}
        for i, t in enumerate(self.book.tracked.values()):  # in dispatch order: later is newer
            if not t.final and t.state in (JobState.DISPATCHED, JobState.RUNNING) \
                    and t.job.submission_id not in self._pending:
                by_id[t.job.submission_id] = t
                running.append(Running(t.job.submission_id, t.job.queue, t.job.priority, float(i),
                                       t.cluster, t.node_id, t.job.resources))
        rooms = [Room(view.name, node.node_id,
                      {r: node.free(ray_name(r)) / (GIB if r == "memory" else 1.0) for r in job.resources})
                 for view in self.placer.views
                 if view.health in (HealthState.UP, HealthState.DEGRADED) and job.cluster_tags <= view.config.tags
                 for node in view.nodes]
        held = {name: dict(u.held) for name, u in self.tenancy.usage.items()}
        # As it will be once the stops under way are through: the victims' queues hold less, the
        # queues they were stopped for hold more.
        changes = [(q_, res, 1.0) for q_, res, _ in self._claims.values()]
        changes += [(t.job.queue, t.job.resources, -1.0) for sid in self._pending if (t := self.book.get(sid))]
        for queue, resources, sign in changes:
            for r, a in resources.items():
                held.setdefault(queue, {})[r] = held.get(queue, {}).get(r, 0.0) + sign * a
        decision = choose_victims(job.queue, job.resources, self.tenancy.queues, held, self.tenancy.totals(),
                                  running, rooms)
        if decision is None:
            return False
        reason = f"preempted for job {job.submission_id}: {decision.explanation}"
        log.info("preemption", submission_id=job.submission_id, queue=job.queue, cluster=decision.cluster,
                 victims=[v.submission_id for v in decision.victims], explanation=decision.explanation)
        now = self.clock()
        self._claims[job.submission_id] = (job.queue, dict(job.resources), now)
        for victim in decision.victims:
            self._pending[victim.submission_id] = (reason, now, job.submission_id)
            self.preempted += 1
            self._work.spawn(self._stop(by_id[victim.submission_id], reason), f"preempt-{victim.submission_id}")
        return True

    async def _stop(self, t: Tracked, reason: str) -> None:
        with structlog.contextvars.bound_contextvars(submission_id=t.job.submission_id, cluster=t.cluster):
            answer = await stop_on_cluster(self.prober, t, reason)
            if answer.outcome != "stopping":
                log.warning("preemption stop failed; the job goes on", message=answer.message)
                self._pending.pop(t.job.submission_id, None)
