"""Choose a cluster and node for a job. Pure: no I/O, no clock.

Rules:
- A job fits a cluster only if all its resources fit on one node, the cluster carries
  every tag in `cluster_tags`, its entrypoint allow-list (if any) admits the job's command,
  and it is up (degraded clusters are used, with a penalty).
- The preferred cluster wins whenever it fits now; otherwise the job falls back.
- Among the rest the highest score wins: `weight` x prefer bonus x health x capacity, where
  capacity favours the fullest node that still fits ("pack") or the emptiest ("spread").
  A job that needs no GPU avoids GPU nodes while other nodes fit.
- A job that fits no node of any configured cluster even when idle, or that no cluster's
  allow-list admits, is infeasible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from producers.schema import entrypoint_refusal

from .clusters import ClusterView, HealthState, Node, ray_name
from .jobs import Job

PREFER_BONUS = 1.2
DEGRADED_FACTOR = 0.5
GPU_AVOID_FACTOR = 0.5
_EPS = 1e-9


@dataclass(frozen=True)
class Placement:
    cluster: str
    node_id: str
    score: float
    explanation: str


@dataclass(frozen=True)
class NoFit:
    infeasible: bool
    explanation: str


def needs(job: Job) -> dict[str, float]:
    """The job's resources under the names Ray's usage report uses."""
    return {ray_name(k): v for k, v in job.ray_resources.items()}


def _short(need: Mapping[str, float], node: Node, *, idle: bool) -> str | None:
    """Why `need` does not fit on `node` (None if it fits)."""
    for name, amount in need.items():
        have = node.total.get(name, 0.0) if idle else node.free(name)
        if amount > have + _EPS:
            return f"{name} {amount:g} > {'total' if idle else 'free'} {have:g}"
    return None


def _node_term(need: Mapping[str, float], node: Node, strategy: str) -> float:
    dims = set(need) | {"CPU"}
    fracs = [max(0.0, node.free(d) - need.get(d, 0.0)) / node.total[d] for d in dims if node.total.get(d, 0.0) > 0]
    free_after = sum(fracs) / len(fracs) if fracs else 0.0
    term = free_after if strategy == "spread" else 1.0 - free_after
    if "GPU" not in need and node.total.get("GPU", 0.0) > 0:
        term *= GPU_AVOID_FACTOR
    return term


def _wastes_gpu(need: Mapping[str, float], node: Node) -> bool:
    return "GPU" not in need and node.total.get("GPU", 0.0) > 0


def _cluster_factor(view: ClusterView) -> float:
    factor = view.config.weight * (PREFER_BONUS if view.config.prefer else 1.0)
    return factor * (DEGRADED_FACTOR if view.health == HealthState.DEGRADED else 1.0)


def choose(job: Job, views: Iterable[ClusterView], strategy: str = "spread",
           exclude: frozenset[str] = frozenset()) -> Placement | NoFit:
    need = needs(job)
    notes: list[str] = []
    candidates: list[tuple[bool, float, str, str]] = []  # (spares GPUs, score, cluster, node)
    ever_possible = False
    unknown = False
    refused = False
    preferred_hit: tuple[float, str, str] | None = None
    views = list(views)
    if job.preferred_cluster and job.preferred_cluster not in {v.name for v in views}:
        notes.append(f"preferred {job.preferred_cluster}: not configured")
    for view in views:
        name = view.name
        if job.cluster_tags and not job.cluster_tags <= view.config.tags:
            notes.append(f"{name}: lacks tags {','.join(sorted(job.cluster_tags - view.config.tags))}")
            continue
        config = view.config
        refusal = (entrypoint_refusal(job.command, config.allowed_script_dirs, config.allowed_interpreters)
                   if config.allowed_script_dirs or config.allowed_interpreters else None)
        if refusal is not None:
            refused = True
            notes.append(f"{name}: {refusal}")
            continue
        if not view.nodes:
            unknown = True
            notes.append(f"{name}: never probed ({view.health.value})")
            continue
        # The best node that fits now (one that fits now fits idle too); ties go to the node id.
        best: tuple[bool, float, str] | None = None
        for n in view.nodes:
            if _short(need, n, idle=False) is None:
                key = (not _wastes_gpu(need, n), _node_term(need, n, strategy), n.node_id)
                if best is None or key > best:
                    best = key
        if best is None:
            idle_reasons = [_short(need, n, idle=True) for n in view.nodes]
            if all(idle_reasons):
                notes.append(f"{name}: too small even idle ({idle_reasons[0]})")
                continue
        ever_possible = True
        if view.health not in (HealthState.UP, HealthState.DEGRADED):
            notes.append(f"{name}: {view.health.value}")
            continue
        if name in exclude:
            notes.append(f"{name}: excluded after a failed dispatch")
            continue
        if best is None:
            notes.append(f"{name}: busy ({_short(need, view.nodes[0], idle=False)})")
            continue
        spares_gpus, term, node_id = best
        score = _cluster_factor(view) * (0.1 + term)
        notes.append(f"{name}: fits, score {score:.3f}")
        candidates.append((spares_gpus, score, name, node_id))
        if name == job.preferred_cluster:
            preferred_hit = (score, name, node_id)
    if preferred_hit is not None:
        score, cluster, node_id = preferred_hit
        return Placement(cluster, node_id, score, f"chose preferred {cluster}; " + "; ".join(notes))
    if candidates:
        _, score, cluster, node_id = max(candidates)
        why = f"chose {cluster}"
        if job.preferred_cluster:
            why += f" (fell back from preferred {job.preferred_cluster})"
        return Placement(cluster, node_id, score, why + "; " + "; ".join(notes))
    infeasible = not ever_possible and not unknown
    if infeasible and refused:
        head = "infeasible: no configured cluster both admits its entrypoint and has a node it fits even when idle"
    elif infeasible:
        head = "infeasible: fits no node of any configured cluster even when idle"
    else:
        head = "no cluster fits now"
    return NoFit(infeasible, head + "; " + "; ".join(notes))


def has_spare_capacity(views: Iterable[ClusterView]) -> bool:
    """Whether any usable cluster has a whole free unit of CPU, GPU or a custom resource:
    the signal to take another job from the broker."""
    for view in views:
        if view.health not in (HealthState.UP, HealthState.DEGRADED):
            continue
        for node in view.nodes:
            for name in node.total:
                if name in ("memory", "objectStoreMemory") or name.startswith(("accelerator", "acceleratorType")):
                    continue  # not slots: memory is shared, an accelerator type is a label
                if node.free(name) >= 1.0 - _EPS:
                    return True
    return False
