"""A cluster's view for placement: computed once, again only after a probe, health or ledger change."""

from __future__ import annotations

from scheduler_daemon.clusters import Health, Node, Snapshot
from scheduler_daemon.probing import ClusterState
from scheduler_daemon.rayapi import RayDashboard
from scheduler_daemon.settings import ClusterConfig


def test_cluster_view_is_reused_until_something_changes() -> None:
    """Placement asks every cluster's view once per job: the view is computed again only
    after a probe, a health change or a ledger change."""
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
