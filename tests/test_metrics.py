"""Metrics pages: the scheduler's and the status service's, read back with prometheus_client's
own text parser (no broker)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from scheduler_daemon.jobs import JobState
from scheduler_daemon.metrics import DISPATCH_BUCKETS, SchedulerMetrics, SchedulerStats, ServiceMetrics

STATS = SchedulerStats(queue_depth=7, window_jobs=3, window_size=64, tracked_jobs=5, intake_consuming=True,
                       messages_consumed=120, events_unconfirmed=2,
                       clusters=(("cpu_cluster", "up", 0.012), ("gpu_cluster", "degraded", 0.5),
                                 ('odd "name"', "down", None)))


def parse(text: bytes) -> dict[str, Any]:
    """Family name -> family; fails on a name that comes twice."""
    families = list(text_string_to_metric_families(text.decode()))
    names = Counter(f.name for f in families)
    assert not [n for n, k in names.items() if k > 1], names
    return {f.name: f for f in families}


def samples(family: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def scheduler_page() -> bytes:
    m = SchedulerMetrics()
    for state in ("ACCEPTED", "ACCEPTED", "DISPATCHED"):
        m.event(state)
    for seconds in (0.0005, 0.003, 0.003, 0.2, 30.0):
        m.dispatch_latency(seconds)
    return m.render(STATS)


def test_scheduler_page_parses_with_the_names_of_before() -> None:
    f = parse(scheduler_page())
    gauges = {"rmcs_queue_depth": 7, "rmcs_window_jobs": 3, "rmcs_window_size": 64, "rmcs_tracked_jobs": 5,
              "rmcs_intake_consuming": 1, "rmcs_events_unconfirmed": 2}
    for name, value in gauges.items():
        assert f[name].type == "gauge"
        assert samples(f[name]) == {(name, ()): value}
    assert f["rmcs_messages_consumed"].type == "counter"
    assert samples(f["rmcs_messages_consumed"]) == {("rmcs_messages_consumed_total", ()): 120}
    assert f["rmcs_job_events"].type == "counter"
    assert samples(f["rmcs_job_events"]) == {("rmcs_job_events_total", (("state", "ACCEPTED"),)): 2,
                                             ("rmcs_job_events_total", (("state", "DISPATCHED"),)): 1}
    assert samples(f["rmcs_cluster_up"]) == {
        ("rmcs_cluster_up", (("cluster", "cpu_cluster"), ("health", "up"))): 1,
        ("rmcs_cluster_up", (("cluster", "gpu_cluster"), ("health", "degraded"))): 1,
        ("rmcs_cluster_up", (("cluster", 'odd "name"'), ("health", "down"))): 0}
    assert samples(f["rmcs_probe_latency_seconds"]) == {  # no probe timed yet: no sample
        ("rmcs_probe_latency_seconds", (("cluster", "cpu_cluster"),)): 0.012,
        ("rmcs_probe_latency_seconds", (("cluster", "gpu_cluster"),)): 0.5}


def test_dispatch_latency_is_a_histogram_with_the_buckets_of_before() -> None:
    h = parse(scheduler_page())["rmcs_dispatch_latency_seconds"]
    assert h.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in h.samples if s.name.endswith("_bucket")}
    assert [float(le) for le in buckets] == [*DISPATCH_BUCKETS, float("inf")]
    assert DISPATCH_BUCKETS == (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    cumulative = {0.001: 1, 0.0025: 1, 0.005: 3, 0.01: 3, 0.025: 3, 0.05: 3, 0.1: 3, 0.25: 4, 0.5: 4, 1: 4, 2.5: 4,
                  5: 4, 10: 4, float("inf"): 5}
    assert {float(le): v for le, v in buckets.items()} == cumulative
    rest = {s.name: s.value for s in h.samples if not s.name.endswith("_bucket")}
    assert rest["rmcs_dispatch_latency_seconds_count"] == 5
    assert abs(rest["rmcs_dispatch_latency_seconds_sum"] - 30.2065) < 1e-9


def test_a_queue_depth_not_yet_seen_is_left_out() -> None:
    f = parse(SchedulerMetrics().render(replace(STATS, queue_depth=None, clusters=())))
    assert "rmcs_queue_depth" not in f
    assert samples(f["rmcs_window_jobs"]) == {("rmcs_window_jobs", ()): 3}
    assert not f["rmcs_cluster_up"].samples


def test_two_schedulers_in_one_process_keep_their_own_counts() -> None:
    a, b = SchedulerMetrics(), SchedulerMetrics()
    a.event("RUNNING")
    b.dispatch_latency(0.1)
    fa, fb = parse(a.render(STATS)), parse(b.render(STATS))
    assert samples(fa["rmcs_job_events"]) == {("rmcs_job_events_total", (("state", "RUNNING"),)): 1}
    assert not fb["rmcs_job_events"].samples
    count = "rmcs_dispatch_latency_seconds_count"
    assert {s.name: s.value for s in fa["rmcs_dispatch_latency_seconds"].samples}[count] == 0
    assert {s.name: s.value for s in fb["rmcs_dispatch_latency_seconds"].samples}[count] == 1


def test_service_page_has_every_state_then_the_schedulers_page_without_a_name_twice() -> None:
    scheduler = scheduler_page()
    page = ServiceMetrics().render({"RUNNING": 4, "SUCCEEDED": 9}, 2, scheduler)
    assert page.endswith(scheduler)
    f = parse(page)
    assert samples(f["rmcs_jobs"]) == {
        ("rmcs_jobs", (("state", s.value),)): {"RUNNING": 4, "SUCCEEDED": 9}.get(s.value, 0) for s in JobState}
    assert samples(f["rmcs_event_stream_clients"]) == {("rmcs_event_stream_clients", ()): 2}
    assert samples(f["rmcs_window_size"]) == {("rmcs_window_size", ()): 64}  # the scheduler's, passed through
    assert "rmcs_dispatch_latency_seconds" in f


def test_service_page_without_the_scheduler() -> None:
    f = parse(ServiceMetrics().render({"ODD": 1}, 0, None))
    assert set(f) == {"rmcs_jobs", "rmcs_event_stream_clients"}
    assert len(f["rmcs_jobs"].samples) == len(JobState) + 1  # a state it did not know is shown too
