"""Parsing Ray's cluster_status answer into a snapshot of nodes, and refusing anything else."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler_daemon.clusters import Node, ProbeError, Snapshot, parse_cluster_status

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
