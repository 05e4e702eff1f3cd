"""Autoscaling-aware placement, pure parts: node types from clusters.yaml, nodes yet to launch,
the launches counted, and the placer preferring capacity that exists."""

from __future__ import annotations

import pytest

from scheduler_daemon.autoscaling import expand, landing, virtual_nodes
from scheduler_daemon.clusters import ClusterView, HealthState, Ledger, Node, scaling_counts
from scheduler_daemon.jobs import Job
from scheduler_daemon.nodetypes import AutoscalingError, parse_autoscaling
from scheduler_daemon.placement import NoFit, Placement, Placer
from scheduler_daemon.settings import ClusterConfig

GPU_TYPE = {"node_types": {"gpuworker": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2}}}
HEAD = Node("head", {"CPU": 2.0}, {})


def test_node_types_are_parsed_and_checked() -> None:
    scaling = parse_autoscaling(GPU_TYPE, "clusters.a.autoscaling")
    assert scaling is not None and scaling.node_types[0].max_workers == 2
    assert parse_autoscaling(None, "k") is None
    for bad, why in (({"node_types": {}}, "non-empty"), ({"x": 1}, "mapping with node_types"),
                     ({"node_types": {"w": {"resources": {"CPU": -1}, "max_workers": 1}}}, "numbers >= 0"),
                     ({"node_types": {"w": {"resources": {"CPU": 1}, "max_workers": 1.5}}}, "integer >= 0"),
                     ({"node_types": {"a_b": {"resources": {"CPU": 1}, "max_workers": 1},
                                      "aB": {"resources": {"CPU": 1}, "max_workers": 1}}}, "differ only")):
        with pytest.raises(AutoscalingError, match=why):
            parse_autoscaling(bad, "k")


def test_scaling_counts_read_every_stage_of_a_launch() -> None:
    """Per type: (nodes up, nodes coming)."""
    assert scaling_counts({"pendingLaunches": {"gpuWorker": 1}}) == {"gpuworker": (0, 1)}
    assert scaling_counts({"pendingNodes": [["1.2.3.4", "gpu_worker", "uninitialized"]]}) == {"gpuworker": (0, 1)}
    assert scaling_counts({"activeNodes": {"headgroup": 1, "gpuWorker": 2}, "idleNodes": {"gpuWorker": 1},
                           "pendingLaunches": {"gpuWorker": 1}}) == {"headgroup": (1, 0), "gpuworker": (3, 1)}
    assert scaling_counts(None) == {}


def test_room_counts_ray_and_rmcs_launches_once() -> None:
    scaling = parse_autoscaling(GPU_TYPE, "k")
    assert scaling is not None
    assert [n.node_id for n in virtual_nodes(scaling, {}, [])] == ["+gpuworker#0", "+gpuworker#1"]
    # One launch of rmcs's, not yet seen by Ray, then seen: room 1 either way.
    assert len(virtual_nodes(scaling, {}, ["+gpuworker#0"])) == 2
    assert len(virtual_nodes(scaling, {"gpuworker": (0, 1)}, ["+gpuworker#0"])) == 2
    # One up, and a launch of rmcs's Ray has not seen: no room left (the launch is not the node up).
    assert [n.node_id for n in virtual_nodes(scaling, {"gpuworker": (1, 0)}, ["+gpuworker#0"])] == ["+gpuworker#0"]
    # Two up (not rmcs's): no room; one busy node keeps GPU jobs feasible.
    full = virtual_nodes(scaling, {"gpuworker": (2, 0)}, [])
    assert len(full) == 1 and full[0].free("GPU") == 0
    held = virtual_nodes(scaling, {}, [], held_back=["gpuworker"])
    assert all(n.free("GPU") == 0 for n in held)


def test_a_launch_lands_on_the_node_that_came_up() -> None:
    scaling = parse_autoscaling(GPU_TYPE, "k")
    assert scaling is not None
    up = Node("abc123", {"CPU": 8.0, "GPU": 1.0}, {})
    assert landing((HEAD, up), scaling, {"+gpuworker#0": {"GPU": 1.0}}) == {"+gpuworker#0": "abc123"}
    ledger = Ledger()
    ledger.reserve("j0", "+gpuworker#0", {"GPU": 1.0})
    nodes = expand((HEAD, up), scaling, {"gpuworker": (1, 0)}, ledger)
    assert [n.node_id for n in nodes] == ["head", "abc123", "+gpuworker#0"]  # room for one more
    assert nodes[1].free("GPU") == 0  # the launch counts on the node it landed on


def _view(name: str, nodes: tuple[Node, ...], **kw) -> ClusterView:
    return ClusterView(ClusterConfig(name, f"http://{name}", **kw), HealthState.UP, nodes)


def _gpu_job(sid: str = "j") -> Job:
    return Job(sid, sid, "/bin/true", resources={"GPU": 1.0})


def test_placer_prefers_capacity_that_exists_and_explains_scale_up() -> None:
    scaling = parse_autoscaling(GPU_TYPE, "k")
    auto = _view("auto", (HEAD, *virtual_nodes(scaling, {}, [])), autoscaling=scaling)
    fixed = _view("fixed", (Node("g", {"CPU": 2.0, "GPU": 1.0}, {}),))
    decision = Placer("spread", [auto, fixed]).choose(_gpu_job())
    assert isinstance(decision, Placement) and decision.cluster == "fixed"
    assert "auto: fits after scale-up on gpuworker" in decision.explanation
    busy = _view("fixed", (Node("g", {"CPU": 2.0, "GPU": 1.0}, {"GPU": 1.0}),))
    decision = Placer("spread", [auto, busy]).choose(_gpu_job())
    assert isinstance(decision, Placement) and decision.cluster == "auto"
    assert decision.node_id == "+gpuworker#0" or decision.node_id == "+gpuworker#1"
    assert "fits after scale-up on gpuworker" in decision.explanation
    # Only the head: CPU jobs go there, never to a node yet to launch.
    cpu = Placer("spread", [auto]).choose(Job("c", "c", "/bin/true", resources={"CPU": 1.0}))
    assert isinstance(cpu, Placement) and cpu.node_id == "head"


def _place_gpu_jobs(n: int, nodes: tuple[Node, ...], counts: dict[str, tuple[int, int]]) -> list[str]:
    """Place `n` one-GPU jobs one after another on an autoscaling cluster, each reserved in its
    ledger as the daemon does; the nodes they went to. A job that does not fit waits (busy)."""
    scaling = parse_autoscaling(GPU_TYPE, "k")
    ledger = Ledger()
    placed = []
    for i in range(n):
        view = _view("auto", expand(nodes, scaling, counts, ledger), autoscaling=scaling)
        decision = Placer("spread", [view]).choose(_gpu_job(f"j{i}"))
        if isinstance(decision, Placement):
            ledger.reserve(f"j{i}", decision.node_id, {"GPU": 1.0})
            placed.append(decision.node_id)
        else:
            assert isinstance(decision, NoFit) and not decision.infeasible
            assert "busy" in decision.explanation
    return placed


def test_n_jobs_never_ask_for_more_launches_than_the_room() -> None:
    """The ledger's reservations on nodes yet to launch are the launches: with room for two
    nodes, two GPU jobs are placed and the third waits (busy, not infeasible)."""
    assert sorted(_place_gpu_jobs(3, (HEAD,), {})) == ["+gpuworker#0", "+gpuworker#1"]


def test_a_node_up_and_a_launch_of_rmcs_fill_a_room_of_two() -> None:
    """One node of the type up and idle, none coming: the first job goes to it, the second
    launches the other node, and the third waits. A launch Ray has not seen yet adds to the
    nodes up; it is not one of them, and it does not land where the first job went."""
    up = Node("abc123", {"CPU": 8.0, "GPU": 1.0}, {})
    assert _place_gpu_jobs(3, (HEAD, up), {"gpuworker": (1, 0)}) == ["abc123", "+gpuworker#0"]


def test_cluster_summary_lists_nodes_yet_to_launch_apart() -> None:
    scaling = parse_autoscaling(GPU_TYPE, "k")
    view = _view("auto", (HEAD, *virtual_nodes(scaling, {}, [])), autoscaling=scaling)
    summary = view.summary()
    assert [n["node_id"] for n in summary["nodes"]] == ["head"]
    assert summary["total"] == {"CPU": 2.0}  # what exists, not what may launch
    assert [n["node_id"] for n in summary["to_launch"]] == ["+gpuworker#0", "+gpuworker#1"]
    assert "to_launch" not in _view("fixed", (HEAD,)).summary()
