"""Wiring: builds the scheduler's objects and owns every background task.

Data flow: intake (broker) -> receiving (admit, pure) -> window (admission) -> scheduling
(placement, dispatch) -> job book (journal, events) -> ack; following tracks dispatched jobs;
control takes stop requests; upkeep reconciles, deletes old Ray jobs and reports to the status
service, which runs in a process of its own (status/).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Awaitable, Callable

import structlog

from .access import check_exposure, load_api_tokens
from .admission import Window
from .book import JobBook
from .broker import apply_policy_here
from .control import Control
from .dependents import Dependents
from .events import EventPublisher, PublishAborted
from .amqp_wire import AmqpWire
from .following import Follower
from .health_events import HealthEvents
from .intake import Intake
from .metrics import SchedulerMetrics, SchedulerStats
from .placement import Placer
from .preempting import Preempting
from .probing import Prober
from .queueconf import queue_of_key
from .receiving import Receiver
from .scheduling import Scheduler
from .shipping import Shipper
from .settings import ClusterConfig, Settings
from .status.service import StatusService
from .state import journal_for, leadership_for
from .status.backend import status_store
from .status.store import StatusStore
from .supervisor import ServiceProcess
from .tasks import Work, every
from .tenancy import Tenancy
from .timeouts import RunTimeouts
from .upkeep import Upkeep
from .waiting import WaitingStore
from .zombies import stop_lost_attempts

log = structlog.get_logger("rmcs.daemon")

MAINTENANCE_INTERVAL_S = 5.0
REPORT_INTERVAL_S = 1.0
SERVICE_START_S = 15.0


class Daemon:
    def __init__(self, settings: Settings, clusters: tuple[ClusterConfig, ...], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        # Checked before anything opens: an exposed API without tokens never starts.
        check_exposure(settings, load_api_tokens(settings.api_tokens_file))
        self.clusters = clusters
        self.configs = {c.name: c for c in clusters}
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self._closing = asyncio.Event()  # set late in shutdown: pending publishes give up
        self._tasks: list[asyncio.Task[Any]] = []
        self.work = Work(quiet=(PublishAborted,))
        self.metrics = SchedulerMetrics()
        self.window = Window(settings.window_size)
        self.journal = journal_for(settings)
        self.store: StatusStore = status_store(settings)
        self.placer = Placer(settings.placement_strategy)
        self.intake = Intake(settings, self._on_message, self._closing)
        self.publisher = EventPublisher(AmqpWire(lambda: self.intake.events_exchange), self._closing)
        self.book = JobBook(self.journal, self.publisher, self.work, self.intake.publish_retry,
                            on_event=self.metrics.event, on_final=lambda sid: self.dependents.nudge(sid))
        self.waiting = WaitingStore(f"{settings.state_dir}/waiting.db", exclusive=not settings.failover)
        self.dependents = Dependents(settings, store=self.waiting, book=self.book, window=self.window,
                                     status=self.store, intake=lambda: self.intake)
        self.health = HealthEvents(self.publisher, self.work)
        self.prober = Prober(settings, clusters, self.health.changed, self._on_probed, on_view=self.placer.update)
        self.tenancy = Tenancy(settings, book=self.book, window=self.window, placer=self.placer)
        self.preempting = Preempting(book=self.book, prober=self.prober, placer=self.placer, tenancy=self.tenancy,
                                     work=self.work, waits=lambda sid: self.window.get(sid) is not None)
        self.follower = Follower(settings, self.book, self.prober, self._wake, preempted=self.preempting.take)
        self.timeouts = RunTimeouts(self.book, self.prober, self.work, settings.autoscale_timeout_s)
        self.scheduler = Scheduler(settings, self.configs, window=self.window, placer=self.placer,
                                   prober=self.prober, book=self.book, follower=self.follower,
                                   intake=self.intake, work=self.work, may_send=lambda: not self.lost_leadership,
                                   observe_dispatch=self.metrics.dispatch_latency, tenancy=self.tenancy,
                                   preempt=self.preempting.consider, shipper=Shipper(self.store), clock=clock)
        self.receiver = Receiver(settings, window=self.window, book=self.book, publisher=self.publisher,
                                 intake=lambda: self.intake, stopping=self.stopping, wake=self._wake, clock=clock,
                                 dependents=self.dependents, store=self.store)
        self.control = Control(settings, scheduler=self.scheduler, book=self.book, dependents=self.dependents,
                               prober=self.prober,
                               store=self.store, daemon_user=self.intake.user)
        self.upkeep = Upkeep(settings, book=self.book, prober=self.prober, store=self.store,
                             publisher=self.publisher, render_metrics=self._render_metrics,
                             is_held=lambda sid: self.window.get(sid) is not None, window=self.window,
                             queue_depths=lambda: self.depths, clock=clock,
                             report_queues=lambda: self.tenancy.last_report)
        self.leadership = leadership_for(settings)
        self.journal.on_fenced = self._fenced
        self.service_process = ServiceProcess(settings, clusters) if settings.status_service == "process" else None
        self.service = StatusService(settings, clusters) if settings.status_service == "inline" else None
        self._sender: asyncio.Task[None] | None = None
        self.queue_depth: int | None = None  # messages waiting in the intake queue, last seen
        self.depths: dict[str, int | None] = {}  # the same per queue

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def lost_leadership(self) -> bool:
        return self.leadership is not None and self.leadership.lost

    def _own(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._task_died)
        self._tasks.append(task)

    async def start(self) -> None:
        await self.intake.connect()
        self._sender = asyncio.create_task(self.publisher.run(), name="event-sender")
        self._sender.add_done_callback(self._task_died)
        if self.leadership is not None:
            # A standby holds nothing but its place in line: no journal, no consumers, no API.
            assert self.intake.connection is not None
            await self.leadership.join(self.intake.connection)
            self._own(self.leadership.run(self.stopping, self.stopping.set), "leadership")
            if self.settings.shared_state:  # the standby's API answers from the shared history
                await self._start_status_service()
            if not await self.leadership.acquired(self.stopping):
                return
            self.journal.epoch = self.leadership.epoch  # every write that matters carries it
        await self.journal.open()
        await self.waiting.open()
        await self.store.open()
        loaded = await self.book.load()
        if loaded:
            log.info("resuming jobs from the journal", count=loaded)
        assert self.intake.connection is not None
        await self.control.start(self.intake.connection)
        await self.intake.consume_unrouted(self.receiver.on_unrouted)
        if self.settings.unrouted_policy:
            self.work.spawn(self._unrouted_policy(), "unrouted-policy")
        await self._check_removed_queues()
        self.depths = await self.queue_depths()
        self.tenancy.report(self.depths)
        self.work.spawn(self.book.republish_unconfirmed(), "republish")
        self.work.spawn(self.upkeep.reconcile(), "reconcile")
        if self.leadership is None or not self.settings.shared_state:
            await self._start_status_service()
        self._own(self.prober.run(self.stopping), "prober")
        self._own(self.scheduler.run(self.stopping), "scheduler")
        self._own(self.follower.run(self.stopping), "follower")
        self._own(self.dependents.run(self.stopping), "dependents")
        self._own(every("run-timeouts", self.settings.track_interval_s, self.timeouts.check, self.stopping), "run-timeouts")
        self._own(every("maintenance", MAINTENANCE_INTERVAL_S, self._maintain, self.stopping), "maintenance")
        self._own(every("report", REPORT_INTERVAL_S, self._report, self.stopping), "report")
        log.info("daemon started", clusters=sorted(self.configs), window=self.settings.window_size,
                 status_service=self.settings.status_service)
        if self.intake.user is None:
            log.warning("amqp_url names no broker user (certificate login): retries cannot be told from "
                        "forged ones and are dropped as duplicates; put the user name in amqp_url")

    async def _unrouted_policy(self) -> None:
        try:
            log.info("unroutable messages go to the alternate exchange", policy=await apply_policy_here(self.settings))
        except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
            log.warning("alternate-exchange policy not applied: a message published without `mandatory` to a key "
                        "no queue is bound to is dropped by RabbitMQ", error=str(exc) or type(exc).__name__)

    async def _start_status_service(self) -> None:
        if self.service is not None:
            await self.service.start()
        elif self.service_process is not None:
            self._own(self.service_process.run(self.stopping), "status-service")
            # Serving means its consumer has bound the status queue: a leader that dispatched before
            # then would publish its first events where no status store hears them.
            if not await self.service_process.wait_serving(SERVICE_START_S):
                log.warning("status service not serving yet", http_addr=self.settings.http_addr)

    async def _report(self) -> None:
        if not self.lost_leadership:  # a deposed leader writes nothing to the shared state
            await self.upkeep.report()

    async def _maintain(self) -> None:
        if self.lost_leadership:
            return
        if self.leadership is not None:
            await self.upkeep.follow_journal()
        await self.upkeep.delete_expired_ray_jobs()
        await self.upkeep.prune_status_cache()
        await stop_lost_attempts(self.journal, self.prober)
        self.depths = await self.queue_depths()
        self.queue_depth = self.depths.get("default")
        # The queues report, with the depths just read: every 5 s, off the dispatch's every-second path.
        self.tenancy.report(self.depths)

    async def queue_depths(self) -> dict[str, int | None]:
        """Messages waiting in each queue's RabbitMQ queue, removed queues included."""
        return {name: await self.intake.queue_depth(name) for name in [*self.tenancy.queues, *self.tenancy.removed]}

    async def _check_removed_queues(self) -> None:
        for name in sorted(await self.tenancy.remember()):
            waiting = await self.intake.queue_depth(name)
            if waiting:
                log.warning("queue removed from the settings while messages wait in it; they stay in "
                            "RabbitMQ, unconsumed, until the queue is configured again", queue=name,
                            rabbitmq_queue=queue_of_key(self.settings.intake_queue, name), messages=waiting)

    def _task_died(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        log.error("background task died; stopping", task=task.get_name(), error=repr(exc))
        self.stopping.set()

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
        log.info("daemon stopping", in_flight=len(self.work), held=len(self.window))
        await _step("stop consuming", self.intake.stop_consuming(), 5)
        await self.work.wait(self.settings.shutdown_grace_s)  # in-flight dispatches finish
        # The loops see `stopping` and end by themselves, so no broker call is cut off midway
        # (a cancelled AMQP call makes aio-pika close and reopen its channel); cancel stragglers.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3.0)
        for task in reversed(self._tasks):
            task.cancel()
        await _step("stop loops", asyncio.gather(*self._tasks, return_exceptions=True), 5)
        await _step("events", self.publisher.flush(), 5)
        self._closing.set()
        await _step("cancel work", self.work.cancel(), 5)
        if self._sender is not None:
            await _step("event sender", self._sender, 5)
        if self.service is not None:
            await _step("status service", self.service.stop(), 10)
        if self.service_process is not None:
            await _step("status service", self.service_process.close(), 15)
        await _step("probes", self.prober.close(), 5)
        # Held jobs that were never dispatched go back to the queue when the channel closes.
        await _step("broker", self.intake.close(), 10)
        await _step("journal", self.journal.close(), 5)
        await _step("waiting store", self.waiting.close(), 5)
        await _step("status store", self.store.close(), 5)
        if self.leadership is not None:
            await _step("leadership", self.leadership.close(), 5)
        self.scheduler.close()
        self.stopped.set()
        log.info("daemon stopped")

    # ---- callbacks -------------------------------------------------------------------

    async def _on_message(self, message: Any, queue: str) -> None:
        if self.lost_leadership:
            self.stopping.set()  # the receiver puts the message back
        await self.receiver.on_message(message, queue)

    def _fenced(self, exc: Exception) -> None:
        """The store refused a write: another daemon leads now. Step down at once."""
        if self.leadership is not None:
            self.leadership.step_down(str(exc))
        self.stopping.set()

    def _wake(self) -> None:
        self.scheduler.wake()

    def _on_probed(self) -> None:
        self.scheduler.on_probed()

    def _render_metrics(self) -> bytes:
        return self.metrics.render(SchedulerStats(
            queue_depth=self.queue_depth, window_jobs=len(self.window), window_size=self.window.capacity,
            tracked_jobs=len(self.book), intake_consuming=self.intake.active,
            messages_consumed=self.intake.consumed, events_unconfirmed=self.publisher.unconfirmed,
            clusters=tuple((v.name, v.health.value, v.latency_s) for v in self.prober.views()),
            queues=tuple(self.tenancy.last_report), preempted=self.preempting.preempted))


async def _step(name: str, aw: Awaitable[Any], timeout: float) -> None:
    try:
        await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        log.error("shutdown step timed out", step=name, timeout_s=timeout)
    except Exception as exc:
        log.error("shutdown step failed", step=name, error=repr(exc))
