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
- Nodes yet to launch (an autoscaling cluster's room, `autoscaling`) count only when no node
  that exists fits now: a cluster that fits only on one "fits after scale-up on <type>", and is
  chosen only when no cluster fits now.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping

from . import lockdown
from .autoscaling import is_virtual, type_of
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
# "never" probed, too "small" even idle, its "health" rules it out, "busy", "fits", and
# "scaleup" (fits only a node yet to launch).
Verdict = tuple[str, float, bool, str, str]

EXPLAIN_EACH_UP_TO = 12  # clusters; beyond that the explanation groups them


def _verdict(view: ClusterView, need: Mapping[str, float], strategy: str) -> Verdict:
    name = view.name
    if not view.nodes:
        return ("never", 0.0, False, "", f"{name}: never probed ({view.health.value})")
    # The best node that fits now (one that fits now fits idle too); ties go to the node id.
    best: tuple[bool, float, str] | None = None
    later: tuple[bool, float, str] | None = None  # the best node yet to launch
    for n in view.nodes:
        if _short(need, n, idle=False) is None:
            key = (not _wastes_gpu(need, n), _node_term(need, n, strategy), n.node_id)
            if is_virtual(n.node_id):
                later = key if later is None or key > later else later
            elif best is None or key > best:
                best = key
    if best is None:
        idle_reasons = [_short(need, n, idle=True) for n in view.nodes]
        if all(idle_reasons):
            return ("small", 0.0, False, "", f"{name}: too small even idle ({idle_reasons[0]})")
    if view.health not in (HealthState.UP, HealthState.DEGRADED):
        return ("health", 0.0, False, "", f"{name}: {view.health.value}")
    if best is None and later is not None:
        spares_gpus, term, node_id = later
        score = _cluster_factor(view) * (0.1 + term)
        return ("scaleup", score, spares_gpus, node_id, f"{name}: fits after scale-up on {type_of(node_id)}")
    if best is None:
        return ("busy", 0.0, False, "", f"{name}: busy ({_short(need, view.nodes[0], idle=False)})")
    spares_gpus, term, node_id = best
    score = _cluster_factor(view) * (0.1 + term)
    return ("fits", score, spares_gpus, node_id, f"{name}: fits, score {score:.3f}")


class _Ranked:
    """Names in the order of a key (smallest first) under constant change: a heap whose
    stale entries are dropped when they surface, so a change costs O(log n) and reading
    the first k costs O(k log n)."""

    def __init__(self) -> None:
        self._heap: list[tuple[Any, str]] = []
        self._key: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._key)

    def add(self, name: str, key: Any) -> None:
        self._key[name] = key
        heapq.heappush(self._heap, (key, name))
        if len(self._heap) > 2 * len(self._key) + 64:  # mostly stale: build it again
            self._heap = [(k, n) for n, k in self._key.items()]
            heapq.heapify(self._heap)

    def discard(self, name: str) -> None:
        self._key.pop(name, None)

    def first(self, k: int, skip: Collection[str] = ()) -> list[str]:
        """The first `k` names not in `skip`."""
        heap, current = self._heap, self._key
        out: list[str] = []
        keep: list[tuple[Any, str]] = []
        seen: set[str] = set()
        while heap and len(out) < k:
            entry = heapq.heappop(heap)
            key, name = entry
            if current.get(name) != key or name in seen:
                continue  # stale, or a second copy of a live entry
            seen.add(name)
            keep.append(entry)
            if name not in skip:
                out.append(name)
        for entry in keep:
            heapq.heappush(heap, entry)
        return out


class _Shape:
    """Every cluster's verdict for one shape of job (resources and cluster tags), ranked by kind."""

    def __init__(self, need: Mapping[str, float], tags: frozenset[str]) -> None:
        self.need = need
        self.tags = tags
        self.verdicts: dict[str, Verdict] = {}
        self.kinds: dict[str, _Ranked] = {kind: _Ranked() for kind in _KINDS}
        self.lacking: list[str] = []  # clusters without the tags, in configuration order
        self.dirty: set[str] = set()


# Verdict kinds and how an explanation names them; the grouped explanation keeps this order.
_KINDS = {"fits": "fits", "scaleup": "fits after scale-up", "busy": "busy", "health": "not up", "never": "never probed", "small": "too small"}
MAX_SHAPES = 256  # shapes of job remembered at once (the least recently used goes first)


class Placer:
    """Chooses a cluster and node for each job from every cluster's current view.

    With a thousand clusters a job cannot afford to look at each of them. The placer keeps,
    per shape of job, every cluster's verdict ranked by kind (the clusters that fit by score,
    the rest in configuration order); `update` marks a changed cluster, and the next job of
    each shape judges that cluster again. A decision then costs the changed clusters plus a
    look at the top of a heap, whatever the number of clusters. Pure: no I/O, no clock.
    """

    def __init__(self, strategy: str = "spread", views: Iterable[ClusterView] = ()) -> None:
        self.strategy = strategy
        self._views: dict[str, ClusterView] = {}
        self._order: dict[str, int] = {}  # configuration order
        self._rank: dict[str, int] = {}   # name order: equal scores go to the greatest name
        self._restricted: list[str] = []  # clusters with an entrypoint allow-list
        self._shapes: dict[tuple[str, frozenset[str]], _Shape] = {}
        self._spare: set[str] = set()
        self._spare_dirty: set[str] = set()
        for view in views:
            self.update(view)

    def update(self, view: ClusterView) -> None:
        """A cluster's view changed (or a cluster is new)."""
        name = view.name
        old = self._views.get(name)
        self._views[name] = view
        if old is None or (old.config is not view.config and old.config != view.config):
            self._order = {n: i for i, n in enumerate(self._views)}
            self._rank = {n: i for i, n in enumerate(sorted(self._views))}
            self._restricted = [n for n, v in self._views.items() if lockdown.locked(v.config)]
            self._shapes.clear()  # ranks moved: every shape is judged afresh
        elif old.health == view.health and old.nodes == view.nodes:
            return  # a probe that saw nothing new: every verdict stands
        tags = view.config.tags
        for shape in self._shapes.values():
            if shape.tags <= tags:
                shape.dirty.add(name)
        self._spare_dirty.add(name)

    @property
    def views(self) -> list[ClusterView]:
        return list(self._views.values())

    def has_spare(self) -> bool:
        """Whether any usable cluster has a whole free unit of CPU, GPU or a custom resource:
        the signal to take another job from the broker."""
        while self._spare_dirty:
            name = self._spare_dirty.pop()
            if _has_spare(self._views[name]):
                self._spare.add(name)
            else:
                self._spare.discard(name)
        return bool(self._spare)

    def _shape(self, need: Mapping[str, float], tags: frozenset[str]) -> _Shape:
        key = (repr(sorted(need.items())), tags)
        shape = self._shapes.pop(key, None)
        if shape is None:
            shape = _Shape(need, tags)
            shape.lacking = [n for n, v in self._views.items() if not tags <= v.config.tags]
            shape.dirty.update(n for n, v in self._views.items() if tags <= v.config.tags)
            if len(self._shapes) >= MAX_SHAPES:
                del self._shapes[next(iter(self._shapes))]
        self._shapes[key] = shape  # the most recently used last
        if shape.dirty:
            self._judge(shape)
        return shape

    def _judge(self, shape: _Shape) -> None:
        for name in shape.dirty:
            view = self._views[name]
            old = shape.verdicts.get(name)
            verdict = shape.verdicts[name] = _verdict(view, shape.need, self.strategy)
            if old is not None and old[0] != verdict[0]:
                shape.kinds[old[0]].discard(name)
            kind, score, spares_gpus = verdict[0], verdict[1], verdict[2]
            if kind in ("fits", "scaleup"):
                shape.kinds[kind].add(name, (not spares_gpus, -score, -self._rank[name]))
            elif old is None or old[0] != kind:
                shape.kinds[kind].add(name, self._order[name])
        shape.dirty.clear()

    def choose(self, job: Job, exclude: frozenset[str] = frozenset()) -> Placement | NoFit:
        shape = self._shape(needs(job), job.cluster_tags)
        verdicts = shape.verdicts
        # What this job's own command and past failures rule out, beyond its shape.
        refused: dict[str, str] = {}
        for name in self._restricted:
            config = self._views[name].config
            if name in verdicts:
                refusal = lockdown.refusal(job.command, job.runtime_env, config)
                if refusal is not None:
                    refused[name] = f"{name}: {refusal}"
        excluded = [n for n in exclude if n in verdicts and n not in refused and verdicts[n][0] in ("fits", "scaleup", "busy")]
        counts = {kind: len(ranked) for kind, ranked in shape.kinds.items()}
        for name in itertools.chain(refused, excluded):
            counts[verdicts[name][0]] -= 1
        skip = set(refused).union(excluded)

        preferred = job.preferred_cluster
        chosen: str | None = None
        if preferred in verdicts and preferred not in skip and verdicts[preferred][0] == "fits":
            chosen = preferred
        else:
            best = shape.kinds["fits"].first(1, skip)
            chosen = best[0] if best else None
        if chosen is None:  # capacity that exists first; then capacity yet to launch
            later = shape.kinds["scaleup"].first(1, skip)
            if preferred in verdicts and preferred not in skip and verdicts[preferred][0] == "scaleup":
                chosen = preferred
            elif later:
                chosen = later[0]

        if len(self._views) <= EXPLAIN_EACH_UP_TO:
            explained = self._each(shape, refused, skip)
        else:
            explained = self._grouped(shape, counts, refused, excluded, skip)
        if preferred and preferred not in self._views:
            explained = f"preferred {preferred}: not configured; " + explained
        if chosen is not None:
            _, score, _, node_id, _ = verdicts[chosen]
            if chosen == preferred:
                why = f"chose preferred {chosen}"
            else:
                why = f"chose {chosen}" + (f" (fell back from preferred {preferred})" if preferred else "")
            if is_virtual(node_id):
                why += f", fits after scale-up on {type_of(node_id)}"
            return Placement(chosen, node_id, score, why + "; " + explained)
        ever_possible = counts["fits"] + counts["scaleup"] + counts["busy"] + counts["health"] + len(excluded) > 0
        infeasible = not ever_possible and not counts["never"]
        if infeasible and refused:
            head = "infeasible: no configured cluster both admits its entrypoint and has a node it fits even when idle"
        elif infeasible:
            head = "infeasible: fits no node of any configured cluster even when idle"
        else:
            head = "no cluster fits now"
        return NoFit(infeasible, head + "; " + explained)

    def _note(self, shape: _Shape, name: str, refused: Mapping[str, str], skip: Collection[str]) -> str:
        if name in refused:
            return refused[name]
        verdict = shape.verdicts.get(name)
        if verdict is None:
            missing = shape.tags - self._views[name].config.tags
            return f"{name}: lacks tags {','.join(sorted(missing))}"
        if verdict[0] in ("fits", "scaleup", "busy") and name in skip:
            return f"{name}: excluded after a failed dispatch"
        return verdict[4]

    def _each(self, shape: _Shape, refused: Mapping[str, str], skip: Collection[str]) -> str:
        """A few clusters: every one of them, in configuration order."""
        return "; ".join(self._note(shape, name, refused, skip) for name in self._views)

    def _grouped(self, shape: _Shape, counts: Mapping[str, int], refused: Mapping[str, str],
                 excluded: list[str], skip: Collection[str], each: int = 3) -> str:
        """Many clusters: a count per kind and the first few of each (those that fit, the best
        first; the rest in configuration order), so a decision over a thousand stays one line."""
        groups: list[tuple[str, int, list[str]]] = []
        for kind, label in _KINDS.items():
            groups.append((label, counts[kind], shape.kinds[kind].first(each, skip)))
            if kind == "busy":
                groups.append(("excluded", len(excluded), sorted(excluded, key=self._order.__getitem__)[:each]))
        groups.append(("lacks tags", len(shape.lacking), shape.lacking[:each]))
        groups.append(("refuses it", len(refused), list(refused)[:each]))
        parts = []
        for label, count, names in groups:
            if count:
                more = f", and {count - len(names)} more" if count > len(names) else ""
                parts.append(f"{label} {count}: " + ", ".join(self._note(shape, n, refused, skip) for n in names) + more)
        return "; ".join(parts)


def choose(job: Job, views: Iterable[ClusterView], strategy: str = "spread",
           exclude: frozenset[str] = frozenset()) -> Placement | NoFit:
    """One decision over these views (a placer for a single job)."""
    return Placer(strategy, views).choose(job, exclude)


def has_spare_capacity(views: Iterable[ClusterView]) -> bool:
    """Placer.has_spare over these views."""
    return Placer("spread", views).has_spare()


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
