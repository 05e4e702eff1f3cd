"""Autoscaling clusters: the node types a cluster may grow by, and the capacity yet to launch.

A cluster in clusters.yaml may say what it can grow to:

    autoscaling:
      node_types:
        gpuworker: {resources: {CPU: 8, GPU: 1}, max_workers: 4}

`virtual_nodes` (pure) turns that, Ray's autoscaler report (nodes of each type up, pending and
being launched) and the launches rmcs has counted itself into nodes yet to launch, which the
placer judges like any node but after every node that exists. A job placed on one is dispatched
with its resources declared to Ray, whose autoscaler then starts the node. The ledger's
reservation on the node yet to launch is that launch, counted: N jobs never ask for more nodes
than the room. Once a node of the type is up, a reservation on a node yet to launch moves to an
up node of that type where it fits (`landing`), as Ray places the job there.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .clusters import Ledger, Node, ray_name
from .nodetypes import Autoscaling, NodeType, type_key

GIB = 1024 ** 3
VIRTUAL = "+"  # node ids of nodes yet to launch: "+<type>#<n>" (a Ray node id is hex)


def virtual_id(node_type: str, n: int) -> str:
    return f"{VIRTUAL}{node_type}#{n}"


def is_virtual(node_id: str) -> bool:
    return node_id.startswith(VIRTUAL)


def type_of(node_id: str) -> str:
    return node_id[len(VIRTUAL):].rpartition("#")[0]


def ray_resources(t: NodeType) -> dict[str, float]:
    """A node type's resources as Ray's usage report names them (memory in bytes)."""
    return {ray_name(k): v * (GIB if k == "memory" else 1.0) for k, v in t.resources.items()}


def virtual_nodes(scaling: Autoscaling, counts: Mapping[str, tuple[int, int]], launched: Iterable[str],
                  held_back: Iterable[str] = ()) -> tuple[Node, ...]:
    """Nodes yet to launch: per type, the launches rmcs counted (`launched`: the virtual node
    ids its reservations are on, not landed yet) and the room left: max_workers minus the nodes
    Ray has up, minus the nodes coming (`counts`: up, coming) or rmcs's own launches when those
    are more (Ray may not have seen them yet; its count includes them once it has). A launch of
    rmcs's is never one of the nodes up: a node up is counted once, whatever runs on it (a
    launch that landed there is counted twice until Ray's snapshot shows its job, which errs
    on the side of room left unused). A type `held_back` (its last launch never came) shows its
    room as busy: it still makes a job feasible, but takes none."""
    mine: dict[str, set[str]] = {}
    for node_id in launched:
        mine.setdefault(type_of(node_id), set()).add(node_id)
    held = set(held_back)
    out: list[Node] = []
    for t in scaling.node_types:
        ours = mine.get(t.name, set())
        up, coming = counts.get(type_key(t.name), (0, 0))
        room = max(0, t.max_workers - up - max(coming, len(ours)))
        ids, n = sorted(ours), 0
        while len(ids) < len(ours) + room:
            if virtual_id(t.name, n) not in ours:
                ids.append(virtual_id(t.name, n))
            n += 1
        total = ray_resources(t)
        busy = dict(total) if t.name in held else {}
        out += [Node(i, total, {} if i in ours else busy) for i in ids]
    if not out and scaling.node_types:
        # No room at all: one busy node per type keeps jobs that only it can run feasible.
        out = [Node(virtual_id(t.name, 0), ray_resources(t), ray_resources(t)) for t in scaling.node_types]
    return tuple(out)


def landing(nodes: Iterable[Node], scaling: Autoscaling, reservations: Mapping[str, Mapping[str, float]]
            ) -> dict[str, str]:
    """Where reservations on nodes yet to launch have landed: for each virtual node id (with the
    resources reserved on it), an up node of its type (the node's totals are the type's) with
    room for them, if there is one. Ray places the job there once the node is up."""
    types = {t.name: ray_resources(t) for t in scaling.node_types}
    real = [n for n in nodes if not is_virtual(n.node_id)]
    free = {n.node_id: {k: n.free(k) for k in n.total} for n in real}
    out: dict[str, str] = {}
    for vid, reserved in sorted(reservations.items()):
        want = types.get(type_of(vid))
        if want is None:
            continue
        need = {ray_name(k): v for k, v in reserved.items()}
        for n in real:
            room = free[n.node_id]
            if all(abs(n.total.get(k, 0.0) - v) < 1e-6 for k, v in want.items()) and \
                    all(room.get(k, 0.0) + 1e-9 >= v for k, v in need.items()):
                for k, v in need.items():
                    room[k] = room.get(k, 0.0) - v
                out[vid] = n.node_id
                break
    return out


def expand(nodes: tuple[Node, ...], scaling: Autoscaling, counts: Mapping[str, tuple[int, int]],
           ledger: Ledger, held_back: Iterable[str] = ()) -> tuple[Node, ...]:
    """A snapshot's nodes with the nodes yet to launch after them, and the ledger applied. A
    launch lands on an up node with room once the ledger's reservations there are counted: the
    room a job of rmcs's has just been given is not room for a launch too."""
    reservations = ledger.reserved_on(VIRTUAL)
    landed = landing(ledger.adjust(nodes), scaling, reservations)
    launched = [vid for vid in reservations if vid not in landed]
    return ledger.adjust(nodes + virtual_nodes(scaling, counts, launched, held_back), landed)
