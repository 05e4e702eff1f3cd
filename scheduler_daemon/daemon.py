"""Wiring: the one object that starts, owns and stops every background task.

Data flow: intake (broker) -> window (admission) -> placement -> dispatch (Ray) ->
journal -> ack; tracking follows dispatched jobs; every change is an event.
"""

from __future__ import annotations

import asyncio
import errno
import math
import signal
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Coroutine, Mapping

import structlog
from aio_pika.abc import AbstractIncomingMessage

from . import api
from .access import TRUSTED_LOCAL, Caller, broker_caller, check_exposure, load_api_tokens, may_stop, refusal
from .admission import Held, Window
from .clusters import HealthState
from .dispatch import Outcome, dispatch
from .events import AmqpWire, ClusterEvent, EventPublisher, JobEvent, PublishAborted
from .intake import Intake, message_meta
from .jobs import TERMINAL, InvalidJob, Job, JobState, RAY_STATES, parse_job
from .journal import Journal, Tracked
from .leadership import Leadership
from .placement import NoFit, Placer
from .probing import ClusterState, Prober
from .rayapi import RayError, RayNotFound, RayRejected
from .settings import ClusterConfig, Settings
from .status.consumer import StatusConsumer
from .status.hub import EventHub
from .status.store import SqliteStatusStore, StatusStore, now_minus
from .tracking import one_by_one, transitions

log = structlog.get_logger("rmcs.daemon")

TRANSIENT_EXCLUDE_S = 5.0
VERIFY_ALL = "*"
MAINTENANCE_INTERVAL_S = 5.0
PROBE_WAKE_S = 0.05


@dataclass(frozen=True)
class StopAnswer:
    """What a stop request did: `cancelled` (never dispatched), `stopping` (asked its cluster),
    `already_final`, `recorded` (not seen yet: cancelled if it arrives, and is the requester's),
    or `refused` (the requester is neither the job's owner nor an admin; the job goes on)."""

    submission_id: str
    outcome: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"submission_id": self.submission_id, "outcome": self.outcome, "message": self.message}


class LogsUnavailable(Exception):
    """The job exists but its logs cannot be had; the message says why."""


class Daemon:
    def __init__(self, settings: Settings, clusters: tuple[ClusterConfig, ...], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        # Read and checked before anything opens: an exposed API without tokens never starts.
        self.api_tokens = load_api_tokens(settings.api_tokens_file)
        check_exposure(settings, self.api_tokens)
        self.configs = {c.name: c for c in clusters}
        self.clock = clock
        self.window = Window(settings.window_size)
        self.tracked: dict[str, Tracked] = {}
        self.journal = Journal(f"{settings.state_dir}/daemon.db", exclusive=not settings.failover)
        self._closing = asyncio.Event()  # set late in shutdown: pending publishes give up
        self.intake = Intake(settings, self._on_message, self._closing)
        self.publisher = EventPublisher(AmqpWire(lambda: self.intake.events_exchange), self._closing)
        self.placer = Placer(settings.placement_strategy)
        self.prober = Prober(settings, clusters, self._on_health, self._on_probed, on_view=self.placer.update)
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._probe_wake: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._work: set[asyncio.Task[Any]] = set()
        self._missing: dict[str, int] = {}
        self._listed: dict[str, int] = {}  # per cluster, how many jobs its list held when last read
        self._health_pending: dict[str, ClusterEvent] = {}
        self._health_publishing: set[str] = set()
        self._next_prune = 0.0
        self._lock = asyncio.Lock()
        self.http: api.HttpServer | None = None
        self.metrics = api.Metrics()
        self.store: StatusStore = SqliteStatusStore(f"{settings.state_dir}/status.db")
        self.hub = EventHub()
        self.status = StatusConsumer(settings, self.store, self.hub, self._stop_from_broker)
        self.queue_depth: int | None = None
        self._stop_after_dispatch: dict[str, str] = {}
        self._sent: dict[str, list[asyncio.Future[None]]] = {}  # per job: events not known confirmed
        self._sender: asyncio.Task[None] | None = None
        self.leadership = Leadership(settings) if settings.failover else None

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def lost_leadership(self) -> bool:
        return self.leadership is not None and self.leadership.lost

    async def start(self) -> None:
        await self.intake.connect()
        self._sender = asyncio.create_task(self.publisher.run(), name="event-sender")
        self._sender.add_done_callback(self._task_died)
        if self.leadership is not None:
            # A standby holds nothing but its place in line: no journal, no consumers, no API.
            assert self.intake.connection is not None
            await self.leadership.join(self.intake.connection)
            task = asyncio.create_task(self.leadership.run(self.stopping, self.stopping.set), name="leadership")
            task.add_done_callback(self._task_died)
            self._tasks.append(task)
            if not await self.leadership.acquired(self.stopping):
                return
        await self.journal.open()
        await self.store.open()
        for t in await self.journal.open_jobs():
            self.tracked[t.job.submission_id] = t
        assert self.intake.connection is not None
        await self.status.start(self.intake.connection)
        if self.tracked:
            log.info("resuming jobs from the journal", count=len(self.tracked))
        self._spawn(self._republish_unconfirmed(), "republish")
        self._spawn(self._reconcile_status(), "reconcile")
        self.http = api.HttpServer(self)
        if self.leadership is None:
            await self.http.start()
        else:
            self._spawn(self._serve_http_once_free(self.http), "http-bind")
        loops = [
            asyncio.create_task(self.prober.run(self.stopping), name="prober"),
            asyncio.create_task(self._schedule_loop(), name="scheduler"),
            asyncio.create_task(self._track_loop(), name="tracker"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
        ]
        for task in loops:
            task.add_done_callback(self._task_died)
        self._tasks += loops
        log.info("daemon started", clusters=sorted(self.configs), window=self.settings.window_size)
        if self.intake.user is None:
            log.warning("amqp_url names no broker user (certificate login): retries cannot be told from "
                        "forged ones and are dropped as duplicates; put the user name in amqp_url")

    async def _serve_http_once_free(self, http: api.HttpServer) -> None:
        """A new leader may find the API's port still held by the old one, which is stopping:
        the pair shares one address, so wait for the port instead of failing."""
        waited = False
        while True:
            try:
                await http.start()
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                await http.stop()
                if not waited:
                    log.warning("HTTP API address in use, presumably by the previous leader; waiting for it",
                                http_addr=self.settings.http_addr)
                    waited = True
                if await self._pause(0.5):
                    return

    def _task_died(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        log.error("background task died; stopping", task=task.get_name(), error=repr(exc))
        self.stopping.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Short-lived work (a dispatch, a verification): kept, reaped, errors surfaced."""
        task = asyncio.create_task(coro, name=name)
        self._work.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._work.discard(t)
            if not t.cancelled() and t.exception() is not None and not isinstance(t.exception(), PublishAborted):
                log.error("task failed", task=t.get_name(), error=repr(t.exception()))

        task.add_done_callback(done)
        return task

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_tasks)
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()

    def dump_tasks(self) -> None:
        """SIGUSR1: log every task and where it waits (for a daemon that seems stuck)."""
        for task in asyncio.all_tasks():
            frames, coro = [], task.get_coro()
            while coro is not None and len(frames) < 20:  # follow the await chain
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                if frame is not None:
                    frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
                coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
            log.warning("task dump", task=task.get_name(), awaiting=frames)

    async def stop(self) -> None:
        """Graceful: stop taking jobs, finish in-flight dispatches, close in order. Idempotent."""
        if self.stopped.is_set():
            return
        self.stopping.set()
        log.info("daemon stopping", in_flight=len(self._work), held=len(self.window))
        await self._step("stop consuming", self.intake.stop_consuming(), 5)
        # Let in-flight dispatches finish within the grace period.
        deadline = self.clock() + self.settings.shutdown_grace_s
        while self._work and self.clock() < deadline:
            await asyncio.wait(set(self._work), timeout=max(0.0, deadline - self.clock()))
        # The loops see `stopping` and end by themselves, so no broker call is cut off midway
        # (a cancelled AMQP call makes aio-pika close and reopen its channel); cancel stragglers.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3.0)
        for task in reversed(self._tasks):
            task.cancel()
        await self._step("stop loops", asyncio.gather(*self._tasks, return_exceptions=True), 5)
        await self._step("events", self.publisher.flush(), 5)
        self._closing.set()
        for task in list(self._work):
            task.cancel()
        await self._step("cancel work", asyncio.gather(*self._work, return_exceptions=True), 5)
        if self._sender is not None:
            await self._step("event sender", self._sender, 5)
        if self.http is not None:
            await self._step("http", self.http.stop(), 5)
        await self._step("probes", self.prober.close(), 5)
        # Held jobs that were never dispatched go back to the queue when the channel closes.
        await self._step("broker", self.intake.close(), 10)
        await self._step("journal", self.journal.close(), 5)
        await self._step("status store", self.store.close(), 5)
        if self._probe_wake is not None:
            self._probe_wake.cancel()
        self.stopped.set()
        log.info("daemon stopped")

    async def _step(self, name: str, aw: Awaitable[Any], timeout: float) -> None:
        try:
            await asyncio.wait_for(aw, timeout)
        except asyncio.TimeoutError:
            log.error("shutdown step timed out", step=name, timeout_s=timeout)
        except Exception as exc:
            log.error("shutdown step failed", step=name, error=repr(exc))

    async def _pause(self, seconds: float) -> bool:
        """Sleep, but wake at once when the daemon starts stopping; True if it is."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        return self.stopping.is_set()

    def _wake_up(self) -> None:
        self._wake.set()

    def _on_probed(self) -> None:
        """A probe ended: fresh capacity matters only to jobs waiting in the window or to a
        cancelled consumer. Each cluster's probe ends on its own, so the probes that end
        within PROBE_WAKE_S share one pass (a thousand clusters would otherwise ask for a
        thousand passes a second)."""
        if (len(self.window) or not self.intake.active) and self._probe_wake is None:
            self._probe_wake = asyncio.get_running_loop().call_later(PROBE_WAKE_S, self._probed_wake)

    def _probed_wake(self) -> None:
        self._probe_wake = None
        self._wake.set()

    # ---- events ----------------------------------------------------------------------

    def _send(self, job: Job, state: JobState, cluster: str | None, message: str | None = None,
              final: bool = False) -> asyncio.Future[None]:
        """Queue a job's event (in order); the future resolves when the broker confirms it."""
        confirmed = self.publisher.send(JobEvent.of(job, state, cluster, message, final))
        self._sent.setdefault(job.submission_id, []).append(confirmed)
        self.metrics.events[state.value] = self.metrics.events.get(state.value, 0) + 1
        return confirmed

    async def _emit(self, job: Job, state: JobState, cluster: str | None, message: str | None = None,
                    final: bool = False) -> None:
        """Send a job's event and wait until it, and every earlier event of the job, is confirmed."""
        self._send(job, state, cluster, message, final)
        await self._all_confirmed(job.submission_id)

    async def _all_confirmed(self, submission_id: str) -> None:
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

    def _confirm_later(self, t: Tracked) -> None:
        """Once the job's events so far are confirmed, mark its record published (unless it has
        moved on since: the newer record's own confirm marks that one). Until then the journal
        holds it unpublished, and a restart publishes its events again."""
        async def mark() -> None:
            await self._all_confirmed(t.job.submission_id)
            if self.tracked.get(t.job.submission_id) is t:
                await self._record(t, published=True)

        self._spawn(mark(), f"confirm-{t.job.submission_id}")

    async def _on_health(self, state: ClusterState, health: HealthState) -> None:
        if health == HealthState.UNKNOWN:
            return
        # Not awaited here: a broker outage must not hold up the next probe of this cluster.
        # At most one publishing task per cluster: changes that pile up while one is being
        # published collapse into the latest (with a thousand clusters flapping under load,
        # a task per change grew without bound).
        name = state.config.name
        self._health_pending[name] = ClusterEvent(name, health.value, state.error)
        if name not in self._health_publishing:
            self._health_publishing.add(name)
            self._spawn(self._publish_health(name), f"health-{name}")

    async def _publish_health(self, name: str) -> None:
        try:
            while (event := self._health_pending.pop(name, None)) is not None:
                await self.publisher.publish(event)
        finally:
            self._health_publishing.discard(name)

    async def _republish_unconfirmed(self, only: str | None = None) -> None:
        """After a restart: publish again the events of each journaled job whose last event was
        not confirmed. Its earlier events were sent without waiting and may not have been
        confirmed either, so its whole path goes again, in order (consumers drop duplicates)."""
        for sid, t in list(self.tracked.items()):
            if not t.published and only in (None, sid):
                pending_retry = t.state in (JobState.FAILED, JobState.LOST) and not t.final
                for earlier in _path_to(t):
                    self._send(t.job, earlier, None if earlier == JobState.ACCEPTED else t.cluster)
                if pending_retry:  # the retry goes to the queue after its events are confirmed
                    await self._emit(t.job, t.state, t.cluster, None, t.final)
                    await self._queue_retry(t)
                else:  # no waiting: a burst of them shares the confirms
                    self._send(t.job, t.state, t.cluster, None, t.final)
                    self._confirm_later(t)

    # ---- intake ----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self.stopping.is_set():
            await self.intake.requeue(message)
            return
        meta = message_meta(message, self.intake.user, self.settings.default_owner)
        try:
            job = parse_job(message.body, meta,
                            default_resources=self.settings.default_resources,
                            max_bytes=self.settings.max_message_bytes,
                            ceiling=self.settings.max_job_resources)
        except InvalidJob as exc:
            await self._reject_message(message, exc, meta.owner)
            return
        bound = structlog.contextvars.bound_contextvars(submission_id=job.submission_id)
        with bound:
            # One trip to the journal's thread for all it knows of this id (the hot path).
            record = await self.journal.lookup(job.submission_id)
            known = self.tracked.get(job.submission_id) or record.tracked
            if known is not None and known.job.attempt >= job.attempt:
                if message.redelivered or job.attempt > 1:
                    log.info("redelivered job already dispatched; acknowledging", cluster=known.cluster)
                    if job.submission_id not in self.tracked and not (known.final and known.published):
                        self._follow(known)
                    await self.intake.ack(message)
                else:
                    await self.intake.dead_letter(message, f"duplicate submission_id {job.submission_id!r}: "
                                                           "a job with this id was already accepted")
                    log.warning("duplicate submission rejected")
                return
            ended = record.ended if job.attempt == 1 or message.redelivered else None
            if ended is not None and message.redelivered:
                state, reason = ended
                log.info("redelivered job had already ended before dispatch; acknowledging", state=state)
                await self._emit(job, JobState(state), None, reason, final=True)
                await self.intake.ack(message)
                return
            cancelled = record.cancellation
            if cancelled is not None:
                reason, requester = cancelled
                if requester is None or requester == job.owner:
                    log.info("job cancelled before it was received", reason=reason)
                    await self._emit(job, JobState.CANCELLED, None, reason, final=True)
                    await self.intake.ack(message)
                    return
                log.warning("a stop recorded before the job arrived is not its owner's; the job goes on",
                            requester=requester, owner=job.owner)
            existing = self.window.get(job.submission_id)
            if existing is not None:
                if self.intake.is_live(existing.delivery):
                    log.info("second message for a held job; acknowledging the copy")
                    await self.intake.ack(message)
                else:
                    log.info("held job redelivered after a reconnect; keeping the new delivery")
                    existing.delivery = message
                return
            held = Held(job, message, self.clock())
            if message.redelivered or job.attempt > 1:
                # It may already be on a cluster (crash between dispatch and journal):
                # look everywhere before dispatching again.
                held.verify_on = VERIFY_ALL
            self.window.add(held)
            if held.verify_on is None:
                # Sent without waiting: the job is placed meanwhile; the outbox keeps its events in order.
                self._send(job, JobState.ACCEPTED, None)
            log.info("job accepted", priority=job.priority, resources=dict(job.resources),
                     attempt=job.attempt, redelivered=message.redelivered)
        self._wake_up()

    async def _reject_message(self, message: AbstractIncomingMessage, exc: InvalidJob,
                              owner: str | None = None) -> None:
        log.warning("message rejected", submission_id=exc.submission_id, reason=exc.reason)
        event = JobEvent(JobState.REJECTED, exc.submission_id or message.message_id, exc.job_id, None,
                         message=exc.reason, final=True, correlation_id=message.correlation_id,
                         reply_to=message.reply_to, owner=owner)
        await self.publisher.publish(event)
        await self.intake.dead_letter(message, exc.reason)

    async def _finish_held(self, held: Held, state: JobState, reason: str) -> None:
        """End a job that never left the window: REJECTED, EXPIRED or CANCELLED."""
        self.window.remove(held.job.submission_id)
        await self.journal.end(held.job.submission_id, state.value, reason)
        log.info("job ended before dispatch", submission_id=held.job.submission_id, state=state.value, reason=reason)
        await self._emit(held.job, state, None, reason, final=True)  # after ACCEPTED's confirm too
        if state == JobState.REJECTED:
            await self.intake.dead_letter(held.delivery, reason)
        else:
            await self.intake.ack(held.delivery)
        self._wake_up()

    # ---- scheduling ------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while True:
            if not self._wake.is_set():
                try:
                    async with asyncio.timeout(0.25):  # no task per wait, unlike wait_for
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            if self.stopping.is_set():
                return  # stop() has cancelled the consumer
            try:
                await self._schedule_pass()
            except PublishAborted:
                return
            except Exception:
                log.exception("scheduling pass failed; will try again")
                await asyncio.sleep(0.5)

    async def _schedule_pass(self) -> None:
        now = self.clock()
        for held in self.window.expired(now):
            if self.window.get(held.job.submission_id) is not held or held.in_flight:
                continue  # ended or taken while this pass awaited
            await self._finish_held(held, JobState.EXPIRED,
                                    f"not dispatched within queue_timeout_s={held.job.queue_timeout_s:g}")
        for held in self.window.waiting():
            if self.window.get(held.job.submission_id) is not held or held.in_flight:
                continue  # ended or taken while this pass awaited
            job = held.job
            if held.verify_on is not None:
                held.in_flight = True
                self._spawn(self._guarded(held, self._verify(held)), f"verify-{job.submission_id}")
                continue
            exclude = frozenset(c for c, until in held.exclude_until.items() if until > now)
            if self._refused_everywhere(held):
                await self._finish_held(held, JobState.REJECTED, f"every fitting cluster refused it: {held.last_reason}")
                continue
            self.prober.refresh()  # the clusters that changed since the last job, if any
            decision = self.placer.choose(job, exclude)
            if isinstance(decision, NoFit):
                if decision.infeasible:
                    await self._finish_held(held, JobState.REJECTED, decision.explanation)
                elif decision.explanation != held.last_reason:
                    held.last_reason = decision.explanation
                    log.info("job waits for capacity", submission_id=job.submission_id,
                             explanation=decision.explanation)
                continue
            log.info("placement", submission_id=job.submission_id, cluster=decision.cluster,
                     node=decision.node_id, explanation=decision.explanation)
            state = self.prober.clusters[decision.cluster]
            state.ledger.reserve(job.ray_submission_id, decision.node_id, job.ray_resources)
            held.in_flight = True
            self._spawn(self._guarded(held, self._dispatch(held, decision.cluster, decision.node_id)),
                        f"dispatch-{job.submission_id}")
        self.prober.refresh()
        want = (not self.window.full and self.intake.connected and self.prober.any_probed
                and self.placer.has_spare())
        await self.intake.set_active(want)

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
                self._wake_up()

    def _may_send(self, held: Held) -> bool:
        """Whether this daemon may still submit `held` to Ray. Not once it has lost leadership,
        and not once the channel that delivered the message is gone: the broker has then put the
        message back in the queue, for this daemon after a reconnect or for the other one of a
        pair, and only the holder of the live delivery submits it."""
        if self.lost_leadership or not self.intake.is_live(held.delivery):
            log.info("not submitting: the delivery is no longer this daemon's",
                     lost_leadership=self.lost_leadership)
            return False
        return True

    def _refused_everywhere(self, held: Held) -> bool:
        if math.inf not in held.exclude_until.values():
            return False
        fitting = [c for c in self.configs.values() if held.job.cluster_tags <= c.tags]
        return bool(fitting) and all(held.exclude_until.get(c.name) == math.inf for c in fitting)

    async def _dispatch(self, held: Held, cluster: str, node_id: str) -> None:
        job = held.job
        state = self.prober.clusters[cluster]
        t0 = time.perf_counter()
        with structlog.contextvars.bound_contextvars(submission_id=job.submission_id, cluster=cluster):
            if not self._may_send(held):
                state.ledger.forget(job.ray_submission_id)
                held.in_flight = False
                return
            result = await dispatch(job, state.config, state.dashboard)
            self.metrics.dispatch_latency.observe(time.perf_counter() - t0)
            if result.outcome == Outcome.DISPATCHED:
                await self._dispatched(held, cluster, node_id, JobState.DISPATCHED, seen_running=False)
                return
            state.ledger.forget(job.ray_submission_id)
            held.last_reason = f"{cluster}: {result.outcome.value}: {result.detail}"
            log.warning("dispatch failed; job put back", outcome=result.outcome.value, detail=result.detail)
            if result.outcome == Outcome.AMBIGUOUS:
                held.verify_on = cluster
            elif result.outcome == Outcome.REFUSED:
                held.exclude_until[cluster] = math.inf
            else:
                held.exclude_until[cluster] = self.clock() + TRANSIENT_EXCLUDE_S
            held.in_flight = False
            self._wake_up()

    async def _dispatched(self, held: Held, cluster: str, node_id: str, state: JobState,
                          seen_running: bool) -> None:
        """The job is on `cluster`: journal it, send DISPATCHED, ack its message."""
        job = held.job
        # Journaled before the ack: from here a crash loses nothing, and the events (ACCEPTED,
        # DISPATCHED) are published again at restart until they are confirmed.
        t = await self._record(Tracked(job, cluster, node_id, JobState.DISPATCHED, seen_running=seen_running),
                               published=False)
        self._send(job, JobState.DISPATCHED, cluster, None)
        await self.intake.ack(held.delivery)
        self.window.remove(job.submission_id)
        self._confirm_later(t)
        log.info("job dispatched", cluster=cluster)
        reason = self._stop_after_dispatch.pop(job.submission_id, None)
        if reason is not None:
            await self._stop_on_cluster(t, reason)
        if state == JobState.SUCCEEDED:
            t = await self._apply(t, JobState.RUNNING, "found already finished")
        if state != JobState.DISPATCHED:
            await self._apply(t, state, None)
        self._wake_up()

    async def _verify(self, held: Held) -> None:
        """Before (re)dispatching a job that may already be on a cluster, look for it."""
        job = held.job
        scope = list(self.configs) if held.verify_on == VERIFY_ALL else [held.verify_on]
        unsure: list[str] = []
        for name in scope:
            state = self.prober.clusters[name]
            if held.verify_on != VERIFY_ALL:
                if not self._may_send(held):
                    held.in_flight = False
                    return
                # After an ambiguous POST, a GET could answer 404 while Ray still creates the job:
                # send the same submission again instead; "already exists" means it is there.
                result = await dispatch(job, state.config, state.dashboard)
                if result.outcome == Outcome.DISPATCHED:
                    node = state.snapshot.nodes[0].node_id if state.snapshot and state.snapshot.nodes else ""
                    await self._dispatched(held, name, node, JobState.DISPATCHED, seen_running=False)
                    return
                if result.outcome in (Outcome.AMBIGUOUS, Outcome.UNREACHABLE) and not self._gone(state):
                    unsure.append(f"{name}: {result.detail}")
                elif result.outcome == Outcome.REFUSED:
                    held.exclude_until[name] = math.inf
                else:
                    held.exclude_until[name] = self.clock() + TRANSIENT_EXCLUDE_S
                continue
            try:
                info = await state.dashboard.job(job.ray_submission_id)
            except RayNotFound:
                continue
            except RayError as exc:
                if not self._gone(state):
                    unsure.append(f"{name}: {exc}")
                continue
            found = RAY_STATES.get(str(info.get("status")), JobState.DISPATCHED)
            log.info("job found on a cluster; adopting it", submission_id=job.submission_id, cluster=name,
                     status=info.get("status"))
            node = state.snapshot.nodes[0].node_id if state.snapshot and state.snapshot.nodes else ""
            await self._dispatched(held, name, node, found, seen_running=False)
            return
        if unsure:
            held.last_reason = "cannot tell whether the job is already on: " + "; ".join(unsure)
            held.in_flight = False
            await asyncio.sleep(1.0)
            self._wake_up()
            return
        was_all = held.verify_on == VERIFY_ALL
        held.verify_on = None
        held.in_flight = False
        if was_all:
            self._send(job, JobState.ACCEPTED, None)
        self._wake_up()


    # ---- stopping ----------------------------------------------------------------------

    async def _stop_from_broker(self, submission_id: str, reason: str, user_id: str | None) -> dict[str, str]:
        return (await self.stop_job(submission_id, reason, broker_caller(user_id, self.settings))).to_json()

    async def stop_job(self, submission_id: str, reason: str = "stop requested",
                       caller: Caller = TRUSTED_LOCAL) -> StopAnswer:
        """Stop a job wherever it is, if `caller` is its owner or an admin. Repeating it is harmless."""
        with structlog.contextvars.bound_contextvars(submission_id=submission_id, requester=caller.name):
            answer = await self._stop_job(submission_id, reason, caller)
            if answer.outcome == "refused":
                log.warning("stop refused", message=answer.message)
            return answer

    @staticmethod
    def _refused(submission_id: str, caller: Caller, owner: str | None) -> StopAnswer | None:
        if may_stop(caller, owner):
            return None
        return StopAnswer(submission_id, "refused", refusal(caller, owner))

    async def _stop_job(self, submission_id: str, reason: str, caller: Caller) -> StopAnswer:
        held = self.window.get(submission_id)
        if held is not None:
            if (refused := self._refused(submission_id, caller, held.job.owner)) is not None:
                return refused
            if held.in_flight:
                self._stop_after_dispatch[submission_id] = reason
                log.info("stop requested during dispatch; will stop it on its cluster")
                return StopAnswer(submission_id, "stopping", "being dispatched; it is stopped on its cluster next")
            await self._finish_held(held, JobState.CANCELLED, reason)
            return StopAnswer(submission_id, "cancelled", "cancelled before dispatch; it never reaches a cluster")
        t = self.tracked.get(submission_id)
        known = t or await self.journal.get(submission_id)
        if known is not None and (refused := self._refused(submission_id, caller, known.job.owner)):
            return refused
        if t is not None and not t.final:
            return await self._stop_on_cluster(t, reason)
        if known is not None and not known.final:
            return await self._stop_on_cluster(known, reason)
        status = await self.store.get(submission_id, history=False)
        if status is not None and (refused := self._refused(submission_id, caller, status.owner)):
            return refused
        # Between attempts (FAILED or LOST, retry queued) the job is not over: record the stop,
        # and the next attempt's message is dropped as CANCELLED when it arrives.
        between = (known is not None and known.state in (JobState.FAILED, JobState.LOST)
                   and known.job.attempt <= known.job.max_retries)
        if not between and ((known is not None and known.final) or (status is not None and status.final)):
            state = status.state if status is not None else known.state.value  # type: ignore[union-attr]
            return StopAnswer(submission_id, "already_final", f"the job already ended: {state}")
        if status is not None and status.state in ("DISPATCHED", "RUNNING"):
            return StopAnswer(submission_id, "unknown", "the job runs on a cluster this daemon does not follow")
        await self.journal.cancel(submission_id, reason, None if caller.admin else caller.name)
        log.info("stop recorded for a job not received yet")
        mine = "" if caller.admin else f" if it is {caller.name!r}'s"
        return StopAnswer(submission_id, "recorded",
                          f"no such job has reached the daemon; if one with this id arrives it is cancelled{mine}")

    async def _stop_on_cluster(self, t: Tracked, reason: str) -> StopAnswer:
        state = self.prober.clusters.get(t.cluster)
        if state is None:
            return StopAnswer(t.job.submission_id, "unknown", f"cluster {t.cluster} is not configured")
        try:
            await state.dashboard.stop(t.job.ray_submission_id)
        except RayError as exc:
            log.warning("stop on cluster failed", cluster=t.cluster, error=str(exc))
            return StopAnswer(t.job.submission_id, "failed", f"cluster {t.cluster} did not take the stop: {exc}")
        log.info("stop sent to cluster", cluster=t.cluster, reason=reason)
        return StopAnswer(t.job.submission_id, "stopping", f"stop sent to {t.cluster}; the job ends as STOPPED")

    # ---- status upkeep -------------------------------------------------------------------

    async def _reconcile_status(self) -> None:
        """At start: jobs the status cache thinks run, that ended while the daemon was away,
        get their real end state from their cluster."""
        for status in await self.store.open_jobs():
            if status.state not in ("DISPATCHED", "RUNNING") or status.submission_id in self.tracked:
                continue
            state = self.prober.clusters.get(status.cluster or "")
            if state is None:
                continue
            ray_id = status.submission_id if status.attempt == 1 else f"{status.submission_id}~{status.attempt}"
            try:
                info = await state.dashboard.job(ray_id)
            except RayError:
                continue
            ray_state = RAY_STATES.get(str(info.get("status")))
            if ray_state is not None and ray_state in TERMINAL:
                await self.store.apply({"event": f"job.{ray_state.value.lower()}.{status.cluster}",
                                        "state": ray_state.value, "submission_id": status.submission_id,
                                        "attempt": status.attempt, "cluster": status.cluster,
                                        "message": "reconciled with the cluster at start",
                                        "final": True})

    def _follow(self, t: Tracked) -> None:
        """Take over a job journaled by the other daemon of a pair after this one loaded the
        journal (the previous leader, while it stepped down)."""
        log.info("following a job the previous leader journaled", submission_id=t.job.submission_id,
                 cluster=t.cluster, state=t.state.value)
        self.tracked[t.job.submission_id] = t
        if not t.published:
            self._spawn(self._republish_unconfirmed(t.job.submission_id), f"republish-{t.job.submission_id}")

    async def _follow_journal(self) -> None:
        for t in await self.journal.open_jobs():
            sid = t.job.submission_id
            if sid not in self.tracked and self.window.get(sid) is None:
                self._follow(t)

    async def _maintenance_loop(self) -> None:
        while not await self._pause(MAINTENANCE_INTERVAL_S):
            try:
                if self.leadership is not None:
                    await self._follow_journal()
                await self._delete_expired_ray_jobs()
                self.queue_depth = await self.intake.queue_depth()
            except Exception as exc:
                log.warning("maintenance step failed", error=repr(exc))

    async def _delete_expired_ray_jobs(self) -> None:
        """Ray keeps job history forever: delete recorded terminal jobs after the retention."""
        for status in await self.store.due_for_deletion(now_minus(self.settings.ray_job_retention_s)):
            state = self.prober.clusters.get(status.cluster or "")
            if state is None:
                continue
            ray_id = status.submission_id if status.attempt == 1 else f"{status.submission_id}~{status.attempt}"
            try:
                await state.dashboard.delete(ray_id)
            except RayNotFound:
                pass
            except RayRejected as exc:
                log.warning("could not delete job from its cluster", cluster=status.cluster, error=str(exc))
                continue
            except RayError:
                continue
            await self.store.mark_deleted(status.submission_id)

    async def logs(self, submission_id: str) -> str:
        """The job's logs, from its cluster."""
        status = await self.store.get(submission_id, history=False)
        t = self.tracked.get(submission_id)
        cluster = t.cluster if t is not None else (status.cluster if status is not None else None)
        if status is None and t is None:
            raise LookupError(f"no job {submission_id!r}")
        if cluster is None:
            raise LogsUnavailable(f"job {submission_id!r} has not been dispatched to a cluster")
        if status is not None and status.deleted_from_cluster:
            raise LogsUnavailable(f"job {submission_id!r} was deleted from {cluster} after its retention")
        state = self.prober.clusters.get(cluster)
        if state is None:
            raise LogsUnavailable(f"cluster {cluster} is not configured")
        attempt = t.job.attempt if t is not None else status.attempt  # type: ignore[union-attr]
        ray_id = submission_id if attempt == 1 else f"{submission_id}~{attempt}"
        return await state.dashboard.logs(ray_id)

    def _gone(self, state: ClusterState) -> bool:
        """Down for `lost_after_s`: what was on it counts as lost, a job may go elsewhere."""
        since = state.health.down_since
        return (state.health.state == HealthState.DOWN and since is not None
                and time.monotonic() - since >= self.settings.lost_after_s)

    # ---- tracking --------------------------------------------------------------------

    async def _track_loop(self) -> None:
        """One look per cluster at a time, like the prober: a cluster that never answers
        holds back only its own jobs."""
        looks: dict[str, asyncio.Task[None]] = {}
        try:
            while not await self._pause(self.settings.track_interval_s):
                by_cluster: dict[str, list[Tracked]] = {}
                for t in self.tracked.values():
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
                    looks[cluster] = asyncio.create_task(self._track_cluster(cluster, ts), name=f"track-{cluster}")
                await self._maybe_prune_journal()
        finally:
            for task in looks.values():
                task.cancel()
            await asyncio.gather(*looks.values(), return_exceptions=True)

    async def _maybe_prune_journal(self) -> None:
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 300
            removed = await self.journal.prune(time.time() - self.settings.journal_retention_s)
            if removed:
                log.info("journal pruned", rows=removed)

    async def _track_cluster(self, cluster: str, tracked: list[Tracked]) -> None:
        state = self.prober.clusters.get(cluster)
        if state is None:  # cluster removed from config while jobs ran there
            for t in tracked:
                await self._apply(t, JobState.LOST, f"cluster {cluster} is no longer configured")
            return
        if state.health.state == HealthState.DOWN:
            down_for = time.monotonic() - (state.health.down_since or time.monotonic())
            if down_for >= self.settings.lost_after_s:
                for t in tracked:
                    await self._apply(t, JobState.LOST, f"cluster {cluster} down for {down_for:.0f}s")
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
            current = self.tracked.get(change.tracked.job.submission_id)
            if current is not None and not current.final:
                await self._apply(current, change.state, change.message, change.ray_time)

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

    async def _apply(self, t: Tracked, new: JobState, message: str | None,
                     ray_time: float | None = None) -> Tracked:
        """One state change of a dispatched job: ledger, journal, event, retry. `ray_time`
        is when it happened on Ray's clock, which the ledger compares with snapshot times."""
        job = t.job
        ledger = self.prober.clusters[t.cluster].ledger if t.cluster in self.prober.clusters else None
        now = ray_time if ray_time is not None else time.time()
        if ledger is not None:
            if new == JobState.RUNNING:
                ledger.started(job.ray_submission_id, now)
            elif new in TERMINAL:
                if new == JobState.LOST:
                    ledger.forget(job.ray_submission_id)
                else:
                    ledger.finished(job.ray_submission_id, now, t.node_id, job.ray_resources,
                                    was_running=t.seen_running or t.state == JobState.RUNNING)
        retry = new in (JobState.FAILED, JobState.LOST) and job.attempt <= job.max_retries
        final = new in TERMINAL and not retry
        if retry:
            message = f"{message or new.value.lower()}; retrying (attempt {job.attempt + 1} of {job.max_retries + 1})"
        t = await self._record(t.moved(new, final=new in TERMINAL and not retry), published=False)
        with structlog.contextvars.bound_contextvars(submission_id=job.submission_id, cluster=t.cluster):
            log.info("job state", state=new.value, message=message, attempt=job.attempt)
            if retry:
                await self._emit(job, new, t.cluster, message, final)
                t = await self._queue_retry(t)
            else:
                self._send(job, new, t.cluster, message, final)
                self._confirm_later(t)
        self._missing.pop(job.submission_id, None)
        if new in TERMINAL:
            self._wake_up()
        return t

    async def _queue_retry(self, t: Tracked) -> Tracked:
        """Put the next attempt in the intake queue, then close this one. Safe to repeat
        after a crash: a second copy of the retry message is recognised and dropped."""
        job = t.job
        await self._emit(job, JobState.RETRYING, t.cluster, f"attempt {job.attempt + 1} queued")
        await self.intake.publish_retry(job, job.attempt + 1)  # after RETRYING: events stay in order
        return await self._record(t.moved(t.state, final=True), published=True)

    async def _record(self, t: Tracked, *, published: bool) -> Tracked:
        """Journal `t` and make it the job's record. It is the record from before the write
        on: a confirm of an older state that arrives meanwhile then sees that the job has moved
        on, and does not write its own (older) record over this one."""
        sid = t.job.submission_id
        current = self.tracked.get(sid)
        if current is not None and current.job.attempt > t.job.attempt:
            return t  # a later attempt already owns the record
        t = replace(t, published=published)
        self.tracked[sid] = t
        await self.journal.record(t)
        if t.final and t.published and self.tracked.get(sid) is t:
            del self.tracked[sid]  # done; unless the next attempt took the place meanwhile
        return t


def _path_to(t: Tracked) -> list[JobState]:
    """The states a dispatched job went through before `t.state`, in order."""
    path = [JobState.ACCEPTED]
    if t.state != JobState.DISPATCHED:
        path.append(JobState.DISPATCHED)
    if t.seen_running and t.state != JobState.RUNNING:
        path.append(JobState.RUNNING)
    return path
