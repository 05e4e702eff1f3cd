"""The ledger: reservations and releases between Ray's snapshots, and the free capacity they leave."""

from __future__ import annotations

from scheduler_daemon.clusters import Ledger, Node
from scheduler_daemon.jobs import GIB

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


def test_a_surplus_release_does_not_offset_a_new_reservation() -> None:
    """Releases are booked on the node rmcs chose; Ray may have run those jobs elsewhere, so a
    node can show more released than it uses. A job placed there then fills it all the same."""
    ledger = Ledger()
    ledger.finished("a", at=1.0, node_id="n1", resources={"GPU_fake": 2.0})  # n1 used no GPU
    ledger.finished("b", at=1.0, node_id="n1", resources={"CPU": 1.0})
    ledger.finished("c", at=1.0, node_id="n1", resources={"CPU": 1.0})  # one CPU more than n1 uses
    assert free(ledger)["CPU"] == 4.0 and free(ledger)["GPUFake"] == 2.0
    ledger.reserve("d", "n1", {"CPU": 3.0, "GPU_fake": 2.0})
    assert free(ledger)["CPU"] == 1.0 and free(ledger)["GPUFake"] == 0.0


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
