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

import heapq
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


# What one cluster can do for one shape of job (its resources), before the job's own
# exclusions: (kind, score or 0, spares GPUs, node id, note). Kinds, in the order checked:
# "never" probed, too "small" even idle, its "health" rules it out, "busy", "fits".
Verdict = tuple[str, float, bool, str, str]

EXPLAIN_EACH_UP_TO = 12  # clusters; beyond that the explanation groups them


def _verdict(view: ClusterView, need: Mapping[str, float], strategy: str) -> Verdict:
    name = view.name
    if not view.nodes:
        return ("never", 0.0, False, "", f"{name}: never probed ({view.health.value})")
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
            return ("small", 0.0, False, "", f"{name}: too small even idle ({idle_reasons[0]})")
    if view.health not in (HealthState.UP, HealthState.DEGRADED):
        return ("health", 0.0, False, "", f"{name}: {view.health.value}")
    if best is None:
        return ("busy", 0.0, False, "", f"{name}: busy ({_short(need, view.nodes[0], idle=False)})")
    spares_gpus, term, node_id = best
    score = _cluster_factor(view) * (0.1 + term)
    return ("fits", score, spares_gpus, node_id, f"{name}: fits, score {score:.3f}")


def choose(job: Job, views: Iterable[ClusterView], strategy: str = "spread",
           exclude: frozenset[str] = frozenset()) -> Placement | NoFit:
    need = needs(job)
    shape = f"{strategy} {sorted(need.items())}"  # a str: its hash is computed once
    noted: list[tuple[str, float, str]] = []  # (kind, rank, note) per cluster, in order
    candidates: list[tuple[bool, float, str, str]] = []  # (spares GPUs, score, cluster, node)
    ever_possible = False
    unknown = False
    refused = False
    preferred_hit: tuple[float, str, str] | None = None
    views = list(views)
    if job.preferred_cluster and job.preferred_cluster not in {v.name for v in views}:
        noted.append(("preferred", 0.0, f"preferred {job.preferred_cluster}: not configured"))
    for view in views:
        name = view.name
        config = view.config
        if job.cluster_tags and not job.cluster_tags <= config.tags:
            noted.append(("lacks tags", 0.0,
                          f"{name}: lacks tags {','.join(sorted(job.cluster_tags - config.tags))}"))
            continue
        if config.allowed_script_dirs or config.allowed_interpreters:
            refusal = entrypoint_refusal(job.command, config.allowed_script_dirs, config.allowed_interpreters)
            if refusal is not None:
                refused = True
                noted.append(("refuses it", 0.0, f"{name}: {refusal}"))
                continue
        # The same view answers for every job of the same shape until it changes: with many
        # clusters, placement then costs a look-up per cluster, not a computation.
        verdict = view.verdicts.get(shape)
        if verdict is None:
            verdict = view.verdicts[shape] = _verdict(view, need, strategy)
        kind, score, spares_gpus, node_id, text = verdict
        if kind == "fits" and name not in exclude:
            noted.append(("fits", score, text))
            candidates.append((spares_gpus, score, name, node_id))
            if name == job.preferred_cluster:
                preferred_hit = (score, name, node_id)
            ever_possible = True
        elif kind == "never":
            unknown = True
            noted.append(("never probed", 0.0, text))
        elif kind == "small":
            noted.append(("too small", 0.0, text))
        else:
            ever_possible = True
            if kind == "health":
                noted.append(("not up", 0.0, text))
            elif name in exclude:
                noted.append(("excluded", 0.0, f"{name}: excluded after a failed dispatch"))
            else:
                noted.append(("busy", 0.0, text))
    explained = "; ".join(t for _, _, t in noted) if len(views) <= EXPLAIN_EACH_UP_TO else _grouped(noted)
    if preferred_hit is not None:
        score, cluster, node_id = preferred_hit
        return Placement(cluster, node_id, score, f"chose preferred {cluster}; " + explained)
    if candidates:
        _, score, cluster, node_id = max(candidates)
        why = f"chose {cluster}"
        if job.preferred_cluster:
            why += f" (fell back from preferred {job.preferred_cluster})"
        return Placement(cluster, node_id, score, why + "; " + explained)
    infeasible = not ever_possible and not unknown
    if infeasible and refused:
        head = "infeasible: no configured cluster both admits its entrypoint and has a node it fits even when idle"
    elif infeasible:
        head = "infeasible: fits no node of any configured cluster even when idle"
    else:
        head = "no cluster fits now"
    return NoFit(infeasible, head + "; " + explained)


def _grouped(noted: list[tuple[str, float, str]], each: int = 3) -> str:
    """Many clusters: a count per kind of note and the first few of each, so a decision
    over a thousand clusters still fits on one readable line (the best that fit first)."""
    groups: dict[str, list[tuple[float, str]]] = {}
    for kind, rank, text in noted:
        groups.setdefault(kind, []).append((rank, text))
    parts = [text for _, text in groups.pop("preferred", [])]
    for kind, ranked in groups.items():
        texts = [text for _, text in (heapq.nlargest(each, ranked) if kind == "fits" else ranked[:each])]
        more = f", and {len(ranked) - each} more" if len(ranked) > each else ""
        parts.append(f"{kind} {len(ranked)}: " + ", ".join(texts) + more)
    return "; ".join(parts)


def has_spare_capacity(views: Iterable[ClusterView]) -> bool:
    """Whether any usable cluster has a whole free unit of CPU, GPU or a custom resource:
    the signal to take another job from the broker."""
    for view in views:
        spare = view.verdicts.get(_SPARE)
        if spare is None:
            spare = view.verdicts[_SPARE] = _has_spare(view)
        if spare:
            return True
    return False


_SPARE = "spare"  # the key of has_spare_capacity's answer among a view's verdicts


def _has_spare(view: ClusterView) -> bool:
    if view.health not in (HealthState.UP, HealthState.DEGRADED):
        return False
    for node in view.nodes:
        for name in node.total:
            if name in ("memory", "objectStoreMemory") or name.startswith(("accelerator", "acceleratorType")):
                continue  # not slots: memory is shared, an accelerator type is a label
            if node.free(name) >= 1.0 - _EPS:
                return True
    return False
