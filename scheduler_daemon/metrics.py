"""Prometheus metrics, rendered by prometheus_client in its text format (version 0.0.4).

`SchedulerMetrics` is the scheduler's: counters it updates as it works, and gauges read from a
snapshot (`SchedulerStats`) taken when the page is asked for. `ServiceMetrics` is the status
service's page: its own gauges, then the scheduler's page passed through as it came.
Each object has a registry of its own, never prometheus_client's global one, so two daemons in
one process (as in the tests) do not clash."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .jobs import JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DISPATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UP_HEALTH = frozenset({"up", "degraded"})  # healths for which rmcs_cluster_up is 1


@dataclass(frozen=True)
class SchedulerStats:
    """What the scheduler's gauges show, read at the moment the page is rendered."""

    queue_depth: int | None  # last seen; None before the first look (the gauge is then left out)
    window_jobs: int
    window_size: int
    tracked_jobs: int
    intake_consuming: bool
    messages_consumed: int
    events_unconfirmed: int
    clusters: tuple[tuple[str, str, float | None], ...] = ()  # (name, health, last probe's latency in s)
    queues: tuple[Mapping[str, Any], ...] = ()  # the queues report (tenancy.Tenancy.report)
    preempted: int = 0


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._events = Counter("rmcs_job_events_total", "Job events published by this daemon, by state.",
                               ["state"], registry=self.registry)
        self._dispatch = Histogram("rmcs_dispatch_latency_seconds", "Duration of the submit call to a cluster.",
                                   buckets=DISPATCH_BUCKETS, registry=self.registry)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self._render_lock = threading.Lock()

    def event(self, state: str) -> None:
        self._events.labels(state=state).inc()

    def dispatch_latency(self, seconds: float) -> None:
        self._dispatch.observe(seconds)

    def render(self, stats: SchedulerStats) -> bytes:
        with self._render_lock:  # the snapshot belongs to this render until it is done
            self._snapshot.stats = stats
            return generate_latest(self.registry)


class _Snapshot(Collector):
    """The gauges (and the consumed-messages counter, a value the intake owns) of one
    `SchedulerStats`."""

    def __init__(self) -> None:
        self.stats: SchedulerStats | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        if s is None:
            return
        if s.queue_depth is not None:
            yield GaugeMetricFamily("rmcs_queue_depth", "Messages waiting in the intake queue, last seen.",
                                    value=s.queue_depth)
        yield GaugeMetricFamily("rmcs_window_jobs", "Jobs held in the admission window.", value=s.window_jobs)
        yield GaugeMetricFamily("rmcs_window_size", "Capacity of the admission window.", value=s.window_size)
        yield GaugeMetricFamily("rmcs_tracked_jobs", "Dispatched jobs being followed.", value=s.tracked_jobs)
        yield GaugeMetricFamily("rmcs_intake_consuming", "1 while the intake consumer takes messages.",
                                value=int(s.intake_consuming))
        yield CounterMetricFamily("rmcs_messages_consumed_total", "Intake messages received.",
                                  value=s.messages_consumed)
        yield GaugeMetricFamily("rmcs_events_unconfirmed",
                                "Events sent by this daemon and not yet confirmed by the broker.",
                                value=s.events_unconfirmed)
        up = GaugeMetricFamily("rmcs_cluster_up", "1 if the cluster is up or degraded; its health as a label.",
                               labels=["cluster", "health"])
        latency = GaugeMetricFamily("rmcs_probe_latency_seconds", "Duration of the cluster's last probe.",
                                    labels=["cluster"])
        for name, health, latency_s in s.clusters:
            up.add_metric([name, health], int(health in UP_HEALTH))
            if latency_s is not None:
                latency.add_metric([name], latency_s)
        yield up
        yield latency
        yield from _queue_families(s)


def _queue_families(s: SchedulerStats) -> Iterator[Metric]:
    """Per queue (label `queue`): jobs running and waiting, resources held, dominant share."""
    running = GaugeMetricFamily("rmcs_queue_jobs_running", "Jobs of the queue dispatched and not final.",
                                labels=["queue"])
    waiting = GaugeMetricFamily("rmcs_queue_jobs_waiting", "Jobs of the queue waiting, in the daemon's window "
                                "or in RabbitMQ.", labels=["queue", "where"])
    held = GaugeMetricFamily("rmcs_queue_resources_held", "Resources held by the queue's jobs (memory in GiB).",
                             labels=["queue", "resource"])
    share = GaugeMetricFamily("rmcs_queue_dominant_share", "The queue's weighted dominant resource share.",
                              labels=["queue"])
    for q in s.queues:
        name = str(q["name"])
        running.add_metric([name], q["running"])
        waiting.add_metric([name, "daemon"], q["waiting_in_daemon"])
        if q.get("waiting_in_broker") is not None:
            waiting.add_metric([name, "broker"], q["waiting_in_broker"])
        for resource, amount in q["held"].items():
            held.add_metric([name, resource], amount)
        share.add_metric([name], q["dominant_share"])
    yield from (running, waiting, held, share)
    yield CounterMetricFamily("rmcs_jobs_preempted_total", "Jobs this daemon stopped to give a queue its "
                              "guarantee back.", value=s.preempted)


class ServiceMetrics:
    """The status service's page: its own gauges, then the scheduler's page (rendered by
    `SchedulerMetrics` in the scheduler's process) as it came."""

    def __init__(self, states: Iterable[str] = tuple(s.value for s in JobState)) -> None:
        self._states = frozenset(states)

    def render(self, jobs_by_state: Mapping[str, int], stream_clients: int,
               scheduler_text: bytes | None) -> bytes:
        jobs = GaugeMetricFamily("rmcs_jobs", "Jobs in the status cache by current state.", labels=["state"])
        for state in sorted(self._states | set(jobs_by_state)):  # every known state, even at 0
            jobs.add_metric([state], jobs_by_state.get(state, 0))
        clients = GaugeMetricFamily("rmcs_event_stream_clients", "Open /api/v1/events streams.",
                                    value=stream_clients)
        own = generate_latest(_Families(jobs, clients))
        if not scheduler_text:
            return own
        return own + scheduler_text if scheduler_text.endswith(b"\n") else own + scheduler_text + b"\n"


class _Families(Collector):
    """Metric families made for one render."""

    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
