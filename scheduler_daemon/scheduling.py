"""Scheduling: the window, then placement, then dispatch.

Each pass ends the jobs that expired, places every waiting job it can (the placer decides; it
does no I/O), reserves the capacity in the cluster's ledger and starts the dispatch, and then
opens or closes the intake consumer: the daemon takes a message only when it could place it.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Callable, Coroutine

import structlog

from .admission import Held, Window
from .autoscaling import is_virtual, type_of
from .book import JobBook
from .dispatch import Outcome, dispatch, not_ours
from .events import PublishAborted
from .following import Follower, gone
from .intake import Intake
from .jobs import RAY_STATES, Job, JobState
from .placement import NoFit, Placer
from .probing import ClusterState, Prober
from .rayapi import RayError, RayNotFound
from .settings import ClusterConfig, Settings
from .shipping import Shipper
from .stopping import stop_on_cluster
from .tasks import Work
from .tenancy import Tenancy
from .tracking import Tracked

log = structlog.get_logger("rmcs.scheduling")

TRANSIENT_EXCLUDE_S = 5.0
VERIFY_ALL = "*"
PASS_TIMEOUT_S = 0.25   # a pass runs at least this often, woken or not
PROBE_WAKE_S = 0.05


class Scheduler:
    def __init__(self, settings: Settings, configs: dict[str, ClusterConfig], *, window: Window,
                 placer: Placer, prober: Prober, book: JobBook, follower: Follower, intake: Intake,
                 work: Work, may_send: Callable[[], bool], observe_dispatch: Callable[[float], None],
                 tenancy: Tenancy, preempt: Callable[[Job], bool] = lambda job: False,
                 shipper: Shipper | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.configs = configs
        self.window = window
        self.placer = placer
        self.prober = prober
        self.book = book
        self.follower = follower
        self.intake = intake
        self._work = work
        self._may_send_at_all = may_send
        self._observe_dispatch = observe_dispatch
        self.clock = clock
        self.tenancy = tenancy  # the queues (docs/queues.md); off with a lone plain `default`
        self._preempt = preempt
        self._shipper = shipper  # jobs' code packages onto their cluster, before the POST
        self._wake = asyncio.Event()
        self._probe_wake: asyncio.TimerHandle | None = None
        self._stop_after_dispatch: dict[str, str] = {}

    def wake(self) -> None:
        self._wake.set()

    def on_probed(self) -> None:
        """A probe ended: fresh capacity matters only to jobs waiting in the window or to a
        cancelled consumer. Each cluster's probe ends on its own, so the probes that end
        within PROBE_WAKE_S share one pass (a thousand clusters would otherwise ask for a
        thousand passes a second)."""
        if (len(self.window) or not self.intake.active) and self._probe_wake is None:
            self._probe_wake = asyncio.get_running_loop().call_later(PROBE_WAKE_S, self._probed_wake)

    def _probed_wake(self) -> None:
        self._probe_wake = None
        self._wake.set()

    def close(self) -> None:
        if self._probe_wake is not None:
            self._probe_wake.cancel()

    def stop_after_dispatch(self, submission_id: str, reason: str) -> None:
        """A stop for a job being dispatched: it is stopped on its cluster once it is there."""
        self._stop_after_dispatch[submission_id] = reason

    async def run(self, stopping: asyncio.Event) -> None:
        while True:
            if not self._wake.is_set():
                try:
                    async with asyncio.timeout(PASS_TIMEOUT_S):  # no task per wait, unlike wait_for
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            if stopping.is_set():
                return  # the daemon's stop() has cancelled the consumer
            try:
                await self.schedule_pass()
            except PublishAborted:
                return
            except Exception:
                log.exception("scheduling pass failed; will try again")
                await asyncio.sleep(0.5)

    async def schedule_pass(self) -> None:
        now = self.clock()
        for held in self.window.expired(now):
            if self.window.get(held.job.submission_id) is not held or held.in_flight:
                continue  # ended or taken while this pass awaited
            await self.finish_held(held, JobState.EXPIRED,
                                   f"not dispatched within queue_timeout_s={held.job.queue_timeout_s:g}")
        queues = self.tenancy if self.tenancy.enabled else None
        if queues is not None:
            queues.refresh()
        for held in self.window.waiting() if queues is None else queues.order(self.window.waiting()):
            if self.window.get(held.job.submission_id) is not held or held.in_flight:
                continue  # ended or taken while this pass awaited
            job = held.job
            if not self.intake.is_live(held.delivery):
                self._let_go(held)
                continue
            if held.verify_on is not None:
                held.in_flight = True
                self._work.spawn(self._guarded(held, self._verify(held)), f"verify-{job.submission_id}")
                continue
            exclude = frozenset(c for c, until in held.exclude_until.items() if until > now)
            if self._refused_everywhere(held):
                await self.finish_held(held, JobState.REJECTED, f"every fitting cluster refused it: {held.last_reason}")
                continue
            if queues is not None:
                never, why = queues.blocked(job)
                if never or why is not None:
                    if never:
                        await self.finish_held(held, JobState.REJECTED, str(why))
                    elif why != held.last_reason:
                        held.last_reason = str(why)
                        log.info("job waits for its queue", submission_id=job.submission_id, explanation=why)
                    continue
            self.prober.refresh()  # the clusters that changed since the last job, if any
            decision = self.placer.choose(job, exclude)
            if isinstance(decision, NoFit):
                if decision.infeasible:
                    await self.finish_held(held, JobState.REJECTED, decision.explanation)
                    continue
                if queues is not None:
                    self._preempt(job)  # a queue owed its guarantee takes it back
                if decision.explanation != held.last_reason:
                    held.last_reason = decision.explanation
                    log.info("job waits for capacity", submission_id=job.submission_id,
                             explanation=decision.explanation)
                continue
            log.info("placement", submission_id=job.submission_id, cluster=decision.cluster,
                     node=decision.node_id, explanation=decision.explanation)
            state = self.prober.clusters[decision.cluster]
            state.ledger.reserve(job.ray_submission_id, decision.node_id, job.ray_resources)
            if queues is not None:
                queues.charge(job)
            held.in_flight = True
            held.placed_because = decision.explanation
            self._work.spawn(self._guarded(held, self._dispatch(held, decision.cluster, decision.node_id)),
                             f"dispatch-{job.submission_id}")
        self.prober.refresh()
        if queues is not None:
            spare = not self.window.full and self.placer.has_spare()
            ready = self.intake.connected and self.prober.first_round_in
            for name, want in queues.wanted(spare).items():
                await self.intake.set_active(ready and want, name)
            return
        want = (not self.window.full and self.intake.connected and self.prober.first_round_in
                and self.placer.has_spare())
        await self.intake.set_active(want)

    async def finish_held(self, held: Held, state: JobState, reason: str) -> None:
        """End a job that never left the window: REJECTED, EXPIRED or CANCELLED."""
        self.window.remove(held.job.submission_id)
        await self.book.journal.end(held.job.submission_id, state.value, reason)
        log.info("job ended before dispatch", submission_id=held.job.submission_id, state=state.value, reason=reason)
        await self.book.emit(held.job, state, None, reason, final=True)  # after ACCEPTED's confirm too
        if state == JobState.REJECTED:
            await self.intake.dead_letter(held.delivery, reason)
        else:
            await self.intake.ack(held.delivery)
        self.wake()

    async def _guarded(self, held: Held, work: Coroutine[Any, Any, None]) -> None:
        """Run a dispatch or verification; if it fails unexpectedly, the job goes back to waiting
        (and its reservation is dropped) instead of staying in flight forever."""
        try:
            await work
        except Exception:
            log.exception("dispatch step failed; job put back", submission_id=held.job.submission_id)
            for state in self.prober.clusters.values():
                state.ledger.forget(held.job.ray_submission_id)
            if self.window.get(held.job.submission_id) is held:
                held.in_flight = False
                self.wake()

    def _may_send(self, held: Held) -> bool:
        """Whether this daemon may still submit `held` to Ray. Not once it has lost leadership,
        and not once the channel that delivered the message is gone: the broker has then put the
        message back in the queue, for this daemon after a reconnect or for the other one of a
        pair, and only the holder of the live delivery submits it."""
        if not self._may_send_at_all() or not self.intake.is_live(held.delivery):
            log.info("not submitting: the delivery is no longer this daemon's",
                     lost_leadership=not self._may_send_at_all())
            return False
        return True

    def _still_ours(self, held: Held, state: ClusterState) -> bool:
        """`_may_send`; when it says no, the job's reservation on `state`'s cluster goes, and the job too."""
        if self._may_send(held):
            return True
        state.ledger.forget(held.job.ray_submission_id)
        self._let_go(held)
        return False

    def _let_go(self, held: Held) -> None:
        """After `_may_send` said no. A job whose delivery died with its channel leaves the window:
        the broker has put its message back, and it is held anew when it comes again (to this daemon
        after the reconnect, or to the other of a pair). Kept, it would fill the window for good,
        and a full window stops the consumer that would bring it back."""
        held.in_flight = False
        if not self.intake.is_live(held.delivery) and self.window.get(held.job.submission_id) is held:
            self.window.remove(held.job.submission_id)
            self.wake()

    def _refused_everywhere(self, held: Held) -> bool:
        if math.inf not in held.exclude_until.values():
            return False
        fitting = [c for c in self.configs.values() if held.job.cluster_tags <= c.tags]
        return bool(fitting) and all(held.exclude_until.get(c.name) == math.inf for c in fitting)

    def _put_back(self, held: Held, cluster: str, outcome: Outcome) -> None:
        """After a failed POST. Any answer that may come after Ray created the job (a timeout, a
        reset, any 5xx: a gateway's 502/504 too) re-checks that cluster before anywhere else."""
        if outcome in (Outcome.AMBIGUOUS, Outcome.CLUSTER_ERROR):
            held.verify_on = cluster
            held.verify_get = outcome == Outcome.CLUSTER_ERROR
            return
        held.verify_on = None
        if outcome == Outcome.REFUSED:
            held.exclude_until[cluster] = math.inf
        else:
            held.exclude_until[cluster] = self.clock() + TRANSIENT_EXCLUDE_S

    async def _dispatch(self, held: Held, cluster: str, node_id: str) -> None:
        job = held.job
        state = self.prober.clusters[cluster]
        t0 = time.perf_counter()
        with structlog.contextvars.bound_contextvars(submission_id=job.submission_id, cluster=cluster):
            if not self._still_ours(held, state):
                return
            # Write-ahead: the intent is journaled before the POST, and until the job is journaled any
            # failure (an exception too) re-checks this cluster first (`_verify`).
            await self.book.journal.intend(job, cluster)
            held.verify_on, held.verify_get = cluster, False
            if not self._still_ours(held, state):  # asked again: this daemon may have been frozen in the write
                return
            result = await dispatch(job, state.config, state.dashboard, self._shipper)
            self._observe_dispatch(time.perf_counter() - t0)
            if result.outcome == Outcome.DISPATCHED:
                await self._dispatched(held, cluster, node_id, JobState.DISPATCHED)
                return
            state.ledger.forget(job.ray_submission_id)
            if result.outcome == Outcome.CONFLICT:
                await self._conflict(held, result.detail)
                return
            held.last_reason = f"{cluster}: {result.outcome.value}: {result.detail}"
            log.warning("dispatch failed; job put back", outcome=result.outcome.value, detail=result.detail)
            self._put_back(held, cluster, result.outcome)
            held.in_flight = False
            self.wake()

    async def _dispatched(self, held: Held, cluster: str, node_id: str, state: JobState) -> None:
        """The job is on `cluster`: journal it, send DISPATCHED, ack its message."""
        job = held.job
        # Journaled before the ack: from here a crash loses nothing, and the events (ACCEPTED,
        # DISPATCHED) are published again at restart until they are confirmed.
        t = await self.book.record(Tracked(job, cluster, node_id, JobState.DISPATCHED), published=False)
        # The placement explanation travels on the event, so the dashboard can say why it runs there.
        self.book.send(job, JobState.DISPATCHED, cluster, held.placed_because or None)
        await self.intake.ack(held.delivery)
        self.window.remove(job.submission_id)
        self.book.confirm_later(t)
        log.info("job dispatched", cluster=cluster)
        reason = self._stop_after_dispatch.pop(job.submission_id, None)
        if reason is not None:
            await stop_on_cluster(self.prober, t, reason)
        if state == JobState.SUCCEEDED:
            t = await self.follower.apply(t, JobState.RUNNING, "found already finished")
        if state != JobState.DISPATCHED:
            await self.follower.apply(t, state, None)
        self.wake()

    @staticmethod
    def _some_node(state: ClusterState) -> str:
        return state.snapshot.nodes[0].node_id if state.snapshot and state.snapshot.nodes else ""

    async def _verify(self, held: Held) -> None:
        """Before (re)dispatching a job that may already be on a cluster, look for it."""
        job = held.job
        if held.verify_on != VERIFY_ALL and held.verify_on not in self.prober.clusters:
            log.warning("the cluster to look on is no longer configured", cluster=held.verify_on)
            held.verify_on = None
            held.in_flight = False
            self.wake()
            return
        scope = list(self.configs) if held.verify_on == VERIFY_ALL else [held.verify_on]
        unsure: list[str] = []
        for name in scope:
            state = self.prober.clusters[name]
            if held.verify_on != VERIFY_ALL:
                if not self._may_send(held):
                    self._let_go(held)
                    return
                try:
                    found_state, unsure_why = await self._recheck(held, state)
                except _Conflict as exc:
                    await self._conflict(held, f"{name}: {exc}")
                    return
                if found_state is not None:
                    await self._dispatched(held, name, self._some_node(state), found_state)
                    return
                if unsure_why is not None:
                    unsure.append(f"{name}: {unsure_why}")
                continue
            try:
                info = await state.dashboard.job(job.ray_submission_id)
            except RayNotFound:
                continue
            except RayError as exc:
                unsure.append(f"{name}: {exc}")  # a cluster down is never taken for "not there"
                continue
            conflict = not_ours(info, job)
            if conflict is not None:
                await self._conflict(held, f"{name}: {conflict}")
                return
            found = RAY_STATES.get(str(info.get("status")), JobState.DISPATCHED)
            log.info("job found on a cluster; adopting it", submission_id=job.submission_id, cluster=name,
                     status=info.get("status"))
            await self._dispatched(held, name, self._some_node(state), found)
            return
        if unsure:
            held.last_reason = "cannot tell whether the job is already on: " + "; ".join(unsure)
            held.in_flight = False
            await asyncio.sleep(1.0)
            self.wake()
            return
        was_all = held.verify_on == VERIFY_ALL
        held.verify_on = None
        held.in_flight = False
        if was_all:
            self.book.send(job, JobState.ACCEPTED, None)
        self.wake()

    async def _conflict(self, held: Held, detail: str) -> None:
        """A job of someone else's has this job's id on a cluster: never adopted, never stopped."""
        log.warning("submission id taken on a cluster by a job that is not this one; rejected", detail=detail,
                    submission_id=held.job.submission_id)
        held.in_flight = False
        await self.finish_held(held, JobState.REJECTED, f"conflict: {detail}")

    async def _recheck(self, held: Held, state: ClusterState) -> tuple[JobState | None, str | None]:
        """Look for a job on the one cluster it may have reached: (its state there, None) when it
        is there; (None, why) when that cannot be told yet; (None, None) when it is not there.
        After a timeout, a GET could answer 404 while Ray still creates the job, so the same
        submission goes again ("already exists" means it is there); after Ray's own 500, a GET."""
        name = state.config.name
        if held.verify_get:
            try:
                info = await state.dashboard.job(held.job.ray_submission_id)
                conflict = not_ours(info, held.job)
                if conflict is not None:
                    raise _Conflict(conflict)
                return RAY_STATES.get(str(info.get("status")), JobState.DISPATCHED), None
            except RayNotFound:
                self._put_back(held, name, Outcome.UNREACHABLE)
                return None, None
            except RayError as exc:
                detail = str(exc)
        else:
            result = await dispatch(held.job, state.config, state.dashboard, self._shipper)
            if result.outcome == Outcome.DISPATCHED:
                return JobState.DISPATCHED, None
            if result.outcome == Outcome.CONFLICT:
                raise _Conflict(result.detail)
            if result.outcome == Outcome.REFUSED:
                self._put_back(held, name, result.outcome)  # Ray answered: the job is not there
                return None, None
            detail = result.detail
        if self._gone(state):
            # Down for lost_after_s, and the job may be on it: followed there, it is declared LOST
            # and retried, and this attempt is stopped there when the cluster comes back.
            return JobState.DISPATCHED, None
        return None, detail  # nothing settles it: the job waits, and goes nowhere else meanwhile

    def _gone(self, state: ClusterState) -> bool:
        return gone(state, self.settings.lost_after_s)


class _Conflict(Exception):
    """A job with this job's id is on the cluster, and it is not this job (dispatch.not_ours)."""
