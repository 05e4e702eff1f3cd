"""The pure state of the daemon: cluster health, the ledger, probe parsing, the window,
job tracking, the Ray submit body, and the journal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scheduler_daemon.admission import Held, Window
from scheduler_daemon.clusters import (
    Health,
    HealthState,
    Ledger,
    Node,
    ProbeError,
    Snapshot,
    parse_cluster_status,
)
from scheduler_daemon.dispatch import submit_body
from scheduler_daemon.jobs import GIB, Job, JobState
from scheduler_daemon.journal import Journal, Lookup, Tracked
from scheduler_daemon.settings import ClusterConfig
from scheduler_daemon.tracking import LISTED_PER_FOLLOWED, one_by_one, transitions

UP, DEGRADED, DOWN, UNKNOWN = HealthState.UP, HealthState.DEGRADED, HealthState.DOWN, HealthState.UNKNOWN


def job(sid: str = "s1", **kw: Any) -> Job:
    kw.setdefault("resources", {"CPU": 1.0})
    return Job(submission_id=sid, job_id=f"job-{sid}", entrypoint="echo hi", **kw)


# --- Health -------------------------------------------------------------------------------------


def test_health_unknown_to_up_on_first_success() -> None:
    h = Health(down_after=3, up_after=2)
    assert h.state == UNKNOWN
    assert h.record(ok=True, slow=False, now=1.0) == UP
    assert h.record(ok=True, slow=False, now=2.0) is None  # no change, nothing returned
    assert h.state == UP and h.down_since is None


def test_health_unknown_stays_unknown_until_down_after_failures() -> None:
    h = Health(down_after=3, up_after=2)
    assert h.record(ok=False, slow=False, now=1.0) is None
    assert h.record(ok=False, slow=False, now=2.0) is None
    assert h.state == UNKNOWN
    assert h.record(ok=False, slow=False, now=3.0) == DOWN
    assert h.down_since == 3.0


def test_health_one_failure_degrades() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(ok=False, slow=False, now=1.0) == DEGRADED
    assert h.down_since is None


def test_health_slow_answer_degrades() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(ok=True, slow=True, now=1.0) == DEGRADED
    assert h.state == DEGRADED


def test_health_down_after_failures_and_back_up_after_successes() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(False, False, 1.0) == DEGRADED
    assert h.record(False, False, 2.0) is None
    assert h.record(False, False, 3.0) == DOWN
    assert h.down_since == 3.0
    assert h.record(False, False, 4.0) is None
    assert h.down_since == 3.0  # stays the time it went down
    # One success is not enough to come back.
    assert h.record(True, False, 5.0) is None
    assert h.state == DOWN and h.down_since == 3.0
    # A failure in between restarts the count.
    assert h.record(False, False, 6.0) is None
    assert h.record(True, False, 7.0) is None
    assert h.state == DOWN
    assert h.record(True, False, 8.0) == UP
    assert h.down_since is None


def test_health_slow_answers_do_not_bring_a_down_cluster_up() -> None:
    h = Health(down_after=1, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(False, False, 1.0) == DOWN
    assert h.record(True, True, 2.0) is None
    assert h.record(True, True, 3.0) is None
    assert h.state == DOWN


def test_health_degraded_recovers_after_up_after_successes() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    h.record(False, False, 1.0)
    assert h.record(True, False, 2.0) is None
    assert h.state == DEGRADED
    assert h.record(True, False, 3.0) == UP


# --- Ledger -------------------------------------------------------------------------------------

NODES = (Node("n1", {"CPU": 4.0, "GPUFake": 2.0, "memory": 8 * GIB}, {"CPU": 1.0}), Node("n2", {"CPU": 2.0}, {}))


def free(ledger: Ledger, node_id: str = "n1") -> dict[str, float]:
    n = next(n for n in ledger.adjust(NODES) if n.node_id == node_id)
    return {k: n.free(k) for k in n.total}


def test_ledger_empty_changes_nothing() -> None:
    assert Ledger().adjust(NODES) == NODES


def test_ledger_reserve_lowers_free_until_a_later_snapshot_shows_it() -> None:
    ledger = Ledger()
    ledger.reserve("r1", "n1", {"CPU": 2.0, "GPU_fake": 1.0, "memory": 2 * GIB})
    f = free(ledger)
    assert f["CPU"] == 1.0 and f["GPUFake"] == 1.0 and f["memory"] == 6 * GIB
    assert free(ledger, "n2") == {"CPU": 2.0}  # other nodes untouched
    ledger.prune(snapshot_time=1e12, margin=1.0)
    assert free(ledger)["CPU"] == 1.0  # not started: kept whatever the snapshot
    ledger.started("r1", at=100.0)
    ledger.started("r1", at=150.0)  # the first start time counts
    ledger.prune(snapshot_time=100.5, margin=1.0)
    assert free(ledger)["CPU"] == 1.0
    ledger.prune(snapshot_time=101.5, margin=1.0)
    assert free(ledger)["CPU"] == 3.0
    assert not ledger.entries


def test_ledger_finished_adds_a_release_until_pruned() -> None:
    ledger = Ledger()
    ledger.reserve("r1", "n1", {"CPU": 1.0})
    ledger.started("r1", at=100.0)
    ledger.prune(snapshot_time=105.0, margin=1.0)  # a snapshot counts the job: reservation dropped
    ledger.finished("r1", at=110.0, node_id="n1", resources={"CPU": 1.0})
    # Ray's snapshot still counts the job: the release frees its CPU.
    assert free(ledger)["CPU"] == 4.0
    ledger.prune(snapshot_time=110.5, margin=1.0)
    assert free(ledger)["CPU"] == 4.0
    ledger.prune(snapshot_time=111.5, margin=1.0)
    assert free(ledger)["CPU"] == 3.0 and not ledger.entries


def test_ledger_finished_between_snapshots_drops_the_reservation_only() -> None:
    ledger = Ledger()  # started and ended after the snapshot: no snapshot ever counted it
    ledger.reserve("r1", "n1", {"CPU": 1.0})
    ledger.reserve("r2", "n1", {"CPU": 1.0})
    ledger.started("r1", at=100.0)
    ledger.finished("r1", at=110.0)
    assert free(ledger)["CPU"] == 2.0  # r2 still holds its CPU


def test_ledger_finished_before_started_drops_the_reservation_only() -> None:
    ledger = Ledger()
    ledger.reserve("r1", "n1", {"CPU": 1.0})
    ledger.finished("r1", at=110.0)
    assert not ledger.entries
    assert free(ledger)["CPU"] == 3.0


def test_ledger_finished_without_reservation() -> None:
    ledger = Ledger()  # e.g. after a restart: only the journal knows the job
    ledger.finished("r1", at=5.0, node_id="n1", resources={"CPU": 1.0}, was_running=True)
    assert free(ledger)["CPU"] == 4.0
    other = Ledger()
    other.finished("r1", at=5.0, node_id="n1", resources={"CPU": 1.0}, was_running=False)
    assert not other.entries


def test_ledger_adjust_clamps_to_the_node() -> None:
    ledger = Ledger()
    ledger.reserve("r1", "n1", {"CPU": 10.0})
    ledger.finished("r2", at=1.0, node_id="n2", resources={"CPU": 10.0})
    assert free(ledger)["CPU"] == 0.0
    assert free(ledger, "n2")["CPU"] == 2.0


def test_ledger_forget() -> None:
    ledger = Ledger()
    ledger.reserve("r1", "n1", {"CPU": 1.0})
    ledger.forget("r1")
    assert not ledger.entries
    ledger.reserve("r2", "n1", {"CPU": 1.0})
    ledger.started("r2", 1.0)
    ledger.finished("r2", 2.0)
    ledger.forget("r2")
    ledger.forget("never-seen")
    assert not ledger.entries


# --- parse_cluster_status -----------------------------------------------------------------------

REAL_ANSWER: dict[str, Any] = {
    "result": True,
    "msg": "Got cluster status.",
    "data": {
        "autoscalingStatus": None,
        "autoscalingError": None,
        "clusterStatus": {
            "loadMetricsReport": {
                "usage": {
                    "CPU": [1.0, 4.0],
                    "GPU": [0.0, 2.0],
                    "GPUFake": [1.0, 2.0],
                    "memory": [0.0, 17179869184.0],
                    "objectStoreMemory": [0.0, 536870912.0],
                    "node:127.0.0.1": [0.0, 2.0],
                    "node:__internal_head__": [0.0, 1.0],
                },
                "resourceDemand": [[{"CPU": 1.0}, 3]],
                "pgDemand": [],
                "requestDemand": [],
                "nodeTypes": [],
                "headIp": "127.0.0.1",
                "usageByNode": {
                    "a1b2c3": {
                        "CPU": [1.0, 2.0],
                        "GPU": [0.0, 2.0],
                        "GPUFake": [1.0, 2.0],
                        "memory": [0.0, 8589934592.0],
                        "objectStoreMemory": [0.0, 268435456.0],
                        "node:127.0.0.1": [0.0, 1.0],
                        "node:__internal_head__": [0.0, 1.0],
                        "accelerator_type:A100": [0.0, 1.0],
                    },
                    "d4e5f6": {
                        "CPU": [0.0, 2.0],
                        "memory": [0.0, 8589934592.0],
                        "objectStoreMemory": [0.0, 268435456.0],
                        "node:127.0.0.2": [0.0, 1.0],
                    },
                },
                "idleTimeDict": {},
                "pendingNodes": [],
                "pendingLaunches": {},
                "failedNodes": [],
            },
            "autoscalerReport": {"activeNodes": {}, "pendingLaunches": {}, "pendingNodes": [], "failedNodes": []},
            "time": 1732612345.25,
            "monitorPid": 4242,
        },
    },
}


def test_parse_cluster_status_real_answer() -> None:
    snap = parse_cluster_status(REAL_ANSWER)
    assert isinstance(snap, Snapshot)
    assert snap.time == 1732612345.25
    n1, n2 = snap.nodes
    assert n1.node_id == "a1b2c3" and n2.node_id == "d4e5f6"
    assert n1.total == {"CPU": 2.0, "GPU": 2.0, "GPUFake": 2.0, "memory": 8589934592.0,
                        "objectStoreMemory": 268435456.0, "accelerator_type:A100": 1.0}
    assert n1.used["CPU"] == 1.0 and n1.free("CPU") == 1.0
    assert n1.free("GPUFake") == 1.0 and n1.free("GPU") == 2.0
    assert n1.free("A100") == 0.0
    # node:<ip> is bookkeeping; accelerator types stay, jobs may ask for them.
    assert not any(k.startswith("node:") for n in snap.nodes for k in n.total)
    assert n2.total["CPU"] == 2.0 and "GPU" not in n2.total


def test_parse_cluster_status_without_per_node_usage_uses_the_cluster_total() -> None:
    body = {"data": {"clusterStatus": {"time": 5, "loadMetricsReport": {"usage": {"CPU": [0, 2]}}}}}
    snap = parse_cluster_status(body)
    assert snap.time == 5.0
    assert snap.nodes == (Node("cluster", {"CPU": 2.0}, {"CPU": 0.0}),)


@pytest.mark.parametrize("body", [
    None,
    "<html>502 Bad Gateway</html>",
    [],
    {},
    {"data": None},
    {"data": {}},
    {"data": {"clusterStatus": None}},
    {"data": {"clusterStatus": {}}},
    {"data": {"clusterStatus": {"loadMetricsReport": []}}},
    {"data": {"clusterStatus": {"loadMetricsReport": {"usageByNode": {"n": {"CPU": 2}}}}}},
    {"data": {"clusterStatus": {"loadMetricsReport": {"usageByNode": {"n": {"CPU": [1]}}}}}},
    {"data": {"clusterStatus": {"loadMetricsReport": {"usageByNode": {"n": {"CPU": ["a", "b"]}}}}}},
    {"data": {"clusterStatus": {"loadMetricsReport": {"usageByNode": {"n": []}}}}},
    {"data": {"clusterStatus": {"time": "noon", "loadMetricsReport": {"usage": {"CPU": [0, 1]}}}}},
])
def test_parse_cluster_status_garbage(body: Any) -> None:
    with pytest.raises(ProbeError, match="unexpected cluster_status answer"):
        parse_cluster_status(body)


# --- Window -------------------------------------------------------------------------------------


def held(sid: str, priority: int = 0, at: float = 0.0, timeout: float | None = None, delivery: Any = None) -> Held:
    return Held(job(sid, priority=priority, queue_timeout_s=timeout), delivery or f"d-{sid}", accepted_at=at)


def test_window_orders_by_priority_then_arrival() -> None:
    w = Window(capacity=10)
    for sid, prio in [("a", 1), ("b", 5), ("c", 1), ("d", 9), ("e", 5)]:
        assert w.add(held(sid, prio)) is None
    assert [h.job.submission_id for h in w.waiting()] == ["d", "b", "e", "a", "c"]
    w.get("d").in_flight = True
    assert [h.job.submission_id for h in w.waiting()] == ["b", "e", "a", "c"]
    assert "d" in w and len(w) == 5


def test_window_expiry() -> None:
    w = Window(capacity=10)
    w.add(held("short", at=100.0, timeout=5.0))
    w.add(held("long", at=100.0, timeout=60.0))
    w.add(held("forever", at=0.0))
    w.add(held("busy", at=100.0, timeout=1.0))
    w.get("busy").in_flight = True
    assert w.get("short").deadline == 105.0 and w.get("forever").deadline is None
    assert w.expired(104.9) == []
    assert [h.job.submission_id for h in w.expired(105.0)] == ["short"]
    assert {h.job.submission_id for h in w.expired(1e9)} == {"short", "long"}


def test_window_redelivery_replaces_the_delivery() -> None:
    w = Window(capacity=2)
    first = held("a", delivery="tag-1")
    w.add(first)
    w.add(held("b"))
    again = held("a", delivery="tag-2")
    old = w.add(again)
    assert old is first
    assert w.get("a") is first and first.delivery == "tag-2"
    assert len(w) == 2
    assert [h.job.submission_id for h in w.waiting()] == ["a", "b"]  # keeps its place


def test_window_full_and_remove() -> None:
    w = Window(capacity=2)
    assert not w.full
    w.add(held("a"))
    w.add(held("b"))
    assert w.full
    assert w.remove("a").job.submission_id == "a"
    assert w.remove("a") is None
    assert not w.full and "a" not in w
    assert [h.job.submission_id for h in w] == ["b"]


# --- tracking.transitions -----------------------------------------------------------------------


def tracked(state: JobState = JobState.DISPATCHED, sid: str = "s1", attempt: int = 1, **kw: Any) -> Tracked:
    return Tracked(job(sid, attempt=attempt), "cpu_cluster", "n1", state, **kw)


def states(changes: list[Any]) -> list[JobState]:
    return [c.state for c in changes]


def test_transitions_pending_is_no_change() -> None:
    assert transitions([tracked()], [{"submission_id": "s1", "status": "PENDING"}], {}) == []


def test_transitions_running() -> None:
    t = tracked()
    changes = transitions([t], [{"submission_id": "s1", "status": "RUNNING"}], {})
    assert states(changes) == [JobState.RUNNING]
    assert changes[0].tracked is t


def test_transitions_succeeded_without_seeing_it_run_synthesizes_running() -> None:
    ray = [{"submission_id": "s1", "status": "SUCCEEDED", "message": "Job finished successfully."}]
    changes = transitions([tracked()], ray, {})
    assert states(changes) == [JobState.RUNNING, JobState.SUCCEEDED]
    assert changes[1].message == "Job finished successfully."
    # Seen running before: no RUNNING again.
    assert states(transitions([tracked(JobState.RUNNING, seen_running=True)], ray, {})) == [JobState.SUCCEEDED]


def test_transitions_failed_and_stopped() -> None:
    ray = [{"submission_id": "s1", "status": "FAILED", "message": "exit 1"}]
    changes = transitions([tracked(JobState.RUNNING, seen_running=True)], ray, {})
    assert states(changes) == [JobState.FAILED] and changes[0].message == "exit 1"
    ray = [{"submission_id": "s1", "status": "STOPPED", "message": 42}]
    changes = transitions([tracked(JobState.RUNNING, seen_running=True)], ray, {})
    assert states(changes) == [JobState.STOPPED] and changes[0].message is None


def test_transitions_never_backwards() -> None:
    assert transitions([tracked(JobState.RUNNING, seen_running=True)],
                       [{"submission_id": "s1", "status": "PENDING"}], {}) == []
    for final in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST):
        assert transitions([tracked(final, final=True)], [{"submission_id": "s1", "status": "RUNNING"}], {}) == []
        assert transitions([tracked(final, final=True)], [], {}, lost_after_misses=1) == []


def test_transitions_unknown_status_is_ignored() -> None:
    assert transitions([tracked()], [{"submission_id": "s1", "status": "WEIRD"}, "junk", None], {}) == []


def test_transitions_match_the_ray_submission_id_of_the_attempt() -> None:
    t = tracked(attempt=2)
    ray = [{"submission_id": "s1", "status": "FAILED"}, {"submission_id": "s1~2", "status": "RUNNING"}]
    assert states(transitions([t], ray, {})) == [JobState.RUNNING]


def test_transitions_lost_after_misses() -> None:
    misses: dict[str, int] = {}
    t = tracked(JobState.RUNNING, seen_running=True)
    assert transitions([t], [], misses, lost_after_misses=3) == []
    assert transitions([t], [{"submission_id": "other", "status": "RUNNING"}], misses, lost_after_misses=3) == []
    assert misses == {"s1": 2}
    changes = transitions([t], [], misses, lost_after_misses=3)
    assert states(changes) == [JobState.LOST]
    assert changes[0].message


def test_one_by_one_only_when_the_list_is_much_longer_than_the_jobs_followed() -> None:
    assert not one_by_one(1, None)  # never listed: list first
    assert not one_by_one(1, 0) and not one_by_one(4, 4 * LISTED_PER_FOLLOWED)
    assert one_by_one(4, 4 * LISTED_PER_FOLLOWED + 1) and one_by_one(1, 10_000)
    assert not one_by_one(400, 10_000)  # as many followed as a twenty-fifth of the list: list again


def test_transitions_seen_again_resets_misses() -> None:
    misses: dict[str, int] = {}
    t = tracked(JobState.RUNNING, seen_running=True)
    transitions([t], [], misses, lost_after_misses=3)
    transitions([t], [], misses, lost_after_misses=3)
    assert transitions([t], [{"submission_id": "s1", "status": "RUNNING"}], misses, lost_after_misses=3) == []
    assert "s1" not in misses
    assert transitions([t], [], misses, lost_after_misses=3) == []


# --- submit_body --------------------------------------------------------------------------------

CLUSTER = ClusterConfig("cpu_cluster", "http://127.0.0.1:8265",
                        runtime_env={"pip": ["numpy"], "env_vars": {"RMCS_CLUSTER": "cpu_cluster", "A": "cluster"}})


def test_submit_body_maps_resources_and_metadata() -> None:
    j = job("s1", resources={"CPU": 2.0, "GPU": 1.0, "memory": 1.5, "GPU_fake": 0.5, "A100": 1.0},
            metadata={"owner": "alice"}, runtime_env={"env_vars": {"A": "job"}, "working_dir": "/w"})
    body = submit_body(j, CLUSTER)
    assert body["entrypoint"] == "echo hi"
    assert body["submission_id"] == "s1"
    assert body["entrypoint_num_cpus"] == 2.0
    assert body["entrypoint_num_gpus"] == 1.0
    assert body["entrypoint_memory"] == int(1.5 * GIB) and isinstance(body["entrypoint_memory"], int)
    assert body["entrypoint_resources"] == {"GPU_fake": 0.5, "A100": 1.0}
    assert body["metadata"]["owner"] == "alice"
    assert body["metadata"]["rmcs_submission_id"] == "s1"
    assert body["metadata"]["rmcs_job_id"] == "job-s1"
    assert all(isinstance(v, str) for v in body["metadata"].values())
    assert body["runtime_env"] == {"pip": ["numpy"], "working_dir": "/w",
                                   "env_vars": {"RMCS_CLUSTER": "cpu_cluster", "A": "job"}}
    assert CLUSTER.runtime_env["env_vars"]["A"] == "cluster"  # the cluster default is not modified


def test_submit_body_minimal_and_retry() -> None:
    body = submit_body(job("s2", resources={"CPU": 1.0}, attempt=3), ClusterConfig("c", "http://h:8265"))
    assert body["submission_id"] == "s2~3"
    assert body["metadata"]["rmcs_submission_id"] == "s2"
    assert body["metadata"]["rmcs_attempt"] == "3"
    assert "runtime_env" not in body and "entrypoint_resources" not in body
    assert "entrypoint_num_gpus" not in body and "entrypoint_memory" not in body


# --- Journal ------------------------------------------------------------------------------------


async def test_journal_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    await journal.open()
    try:
        full = Job(submission_id="s1", job_id="j1", entrypoint="python /opt/x.py", runtime_env={"pip": ["a"]},
                   metadata={"k": "v"}, preferred_cluster="gpu_cluster", resources={"CPU": 1.0, "memory": 0.5},
                   tags=("a", "b"), cluster_tags=frozenset({"gpu"}), priority=7, max_retries=2,
                   queue_timeout_s=30.0, attempt=2, correlation_id="c", reply_to="r",
                   body=b'{"entrypoint": "python /opt/x.py"}')
        t1 = Tracked(full, "gpu_cluster", "n1", JobState.DISPATCHED)
        await journal.record(t1)
        assert await journal.get("s1") == t1
        assert await journal.get("nope") is None

        # Newer records replace older ones.
        t1b = t1.moved(JobState.RUNNING)
        assert t1b.seen_running and not t1b.published
        await journal.record(t1b)
        assert await journal.get("s1") == t1b

        done = Tracked(job("s2"), "cpu_cluster", "n2", JobState.SUCCEEDED, published=True, final=True,
                       seen_running=True)
        unconfirmed = Tracked(job("s3"), "cpu_cluster", "n2", JobState.FAILED, published=False, final=True)
        await journal.record(done)
        await journal.record(unconfirmed)
        open_ids = {t.job.submission_id for t in await journal.open_jobs()}
        assert open_ids == {"s1", "s3"}
        assert await journal.get("s2") == done

        # One lookup answers what get, ended and cancellation answer.
        await journal.end("s4", "EXPIRED", "too late")
        await journal.cancel("s5", "stop")
        await journal.cancel("s6", "mine", requester="alice")
        assert await journal.lookup("s1") == Lookup(t1b, None, None)
        assert await journal.lookup("s4") == Lookup(None, ("EXPIRED", "too late"), None)
        assert await journal.lookup("s5") == Lookup(None, None, ("stop", None))
        assert await journal.lookup("s6") == Lookup(None, None, ("mine", "alice"))
    finally:
        await journal.close()

    # Survives a restart.
    again = Journal(tmp_path / "state" / "journal.sqlite")
    await again.open()
    try:
        assert await again.get("s1") == t1b
    finally:
        await again.close()


def test_cluster_view_is_reused_until_something_changes() -> None:
    """Placement asks every cluster's view once per job: the view is computed again only
    after a probe, a health change or a ledger change."""
    from scheduler_daemon.clusters import Health, Node, Snapshot
    from scheduler_daemon.probing import ClusterState
    from scheduler_daemon.rayapi import RayDashboard

    config = ClusterConfig("c", "http://127.0.0.1:1")
    state = ClusterState(config, RayDashboard(config, 1.0), Health(3, 2))
    state.snapshot = Snapshot(1.0, (Node("n", {"CPU": 4.0}, {"CPU": 0.0}),))
    first = state.view()
    assert state.view() is first
    state.ledger.reserve("j1", "n", {"CPU": 1.0})
    second = state.view()
    assert second is not first and second.nodes[0].free("CPU") == 3.0
    state.ledger.started("j1", 2.0)
    state.ledger.prune(5.0, 0.25)  # a later snapshot shows the job: the reservation goes
    assert state.view().nodes[0].free("CPU") == 4.0
    state.health.record(True, False, 0.0)
    assert state.view().health.value == "up"
    state.snapshot = Snapshot(6.0, (Node("n", {"CPU": 4.0}, {"CPU": 2.0}),))
    assert state.view().nodes[0].free("CPU") == 2.0


async def test_journal_never_writes_over_a_later_attempt(tmp_path: Any) -> None:
    """Closing attempt 1 (final, published) can finish after attempt 2 was dispatched:
    the journal keeps attempt 2's record."""
    journal = Journal(tmp_path / "journal.sqlite")
    await journal.open()
    try:
        first = job("r1")
        second = replace(first, attempt=2)
        await journal.record(Tracked(second, "spare", "n", JobState.DISPATCHED))
        await journal.record(Tracked(first, "doomed", "n", JobState.LOST, published=True, final=True))
        kept = await journal.get("r1")
        assert kept is not None and kept.job.attempt == 2 and kept.cluster == "spare"
        assert [t.job.attempt for t in await journal.open_jobs()] == [2]
    finally:
        await journal.close()
