"""What the daemon knows of each cluster: probe snapshots, health, and its own ledger.

- `parse_cluster_status` turns Ray's `/api/cluster_status` answer into a `Snapshot`.
- `Health` moves up / degraded / down with hysteresis; pure, time passed in.
- `Ledger` counts the daemon's own dispatches and the completions it observed, so the
  view is right between Ray's snapshots (refreshed only every few seconds).
- `ClusterView` is the immutable picture placement decides on.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .nodetypes import type_key
from .settings import ClusterConfig

# Resources that are bookkeeping, not capacity a job asks for.
_IGNORED_PREFIXES = ("node:",)


@functools.lru_cache(maxsize=4096)  # a few names, asked for on every placement
def ray_name(resource: str) -> str:
    """Ray's dashboard camel-cases resource names in usage reports (`GPU_fake` -> `GPUFake`)."""
    head, *rest = resource.split("_")
    return head + "".join(part.title() for part in rest)


class HealthState(str, enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class Node:
    node_id: str
    total: Mapping[str, float]
    used: Mapping[str, float]

    def free(self, resource: str) -> float:
        return self.total.get(resource, 0.0) - self.used.get(resource, 0.0)


@dataclass(frozen=True)
class Snapshot:
    """One probe's picture: Ray's snapshot time (its clock, seconds) and the nodes; for an
    autoscaling cluster, its nodes of each type up and coming (`scaling_counts`)."""

    time: float
    nodes: tuple[Node, ...]
    scaling: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def scaling_counts(report: Any) -> dict[str, tuple[int, int]]:
    """Nodes of each type (by `type_key`) from `autoscalerReport` of Ray's cluster_status:
    (up, coming), coming being pending or being launched."""
    counts: dict[str, tuple[int, int]] = {}
    if not isinstance(report, Mapping):
        return counts

    def add(name: Any, n: Any = 1, *, up: bool) -> None:
        if isinstance(name, str) and isinstance(n, int):
            have_up, coming = counts.get(type_key(name), (0, 0))
            counts[type_key(name)] = (have_up + n, coming) if up else (have_up, coming + n)

    for key in ("activeNodes", "idleNodes", "pendingLaunches"):
        value = report.get(key)
        if isinstance(value, Mapping):
            for name, n in value.items():
                add(name, n, up=key != "pendingLaunches")
    for entry in report.get("pendingNodes") or []:
        if isinstance(entry, (list, tuple)) and len(entry) >= 2:
            add(entry[1], up=False)
    return counts


class ProbeError(Exception):
    """A probe answer that cannot be used; the message says why."""


def parse_cluster_status(body: Any) -> Snapshot:
    try:
        status = body["data"]["clusterStatus"]
        report = status["loadMetricsReport"]
        by_node = report.get("usageByNode") or {}
        if not by_node and report.get("usage"):
            by_node = {"cluster": report["usage"]}
        nodes = []
        for node_id, usage in by_node.items():
            total: dict[str, float] = {}
            used: dict[str, float] = {}
            for name, pair in usage.items():
                if name.startswith(_IGNORED_PREFIXES):
                    continue
                u, t = float(pair[0]), float(pair[1])
                total[name] = t
                used[name] = u
            nodes.append(Node(str(node_id), total, used))
        return Snapshot(time=float(status.get("time") or 0.0), nodes=tuple(nodes),
                        scaling=scaling_counts(status.get("autoscalerReport")))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ProbeError(f"unexpected cluster_status answer: {type(exc).__name__}: {exc}") from None


@dataclass
class Health:
    """Hysteresis: one failure or a slow answer degrades, `down_after` failures in a row
    take the cluster down, `up_after` good answers in a row bring it back up."""

    down_after: int
    up_after: int
    state: HealthState = HealthState.UNKNOWN
    failures: int = 0
    successes: int = 0
    down_since: float | None = None

    def record(self, ok: bool, slow: bool, now: float) -> HealthState | None:
        """Feed one probe result; returns the new state when it changed."""
        old = self.state
        if ok:
            self.failures = 0
            self.successes += 1
            if slow:
                new = HealthState.DEGRADED if old != HealthState.DOWN else old
            elif old in (HealthState.UNKNOWN,) or self.successes >= self.up_after:
                new = HealthState.UP
            else:
                new = old
        else:
            self.successes = 0
            self.failures += 1
            if self.failures >= self.down_after or (old == HealthState.UNKNOWN and self.failures >= self.down_after):
                new = HealthState.DOWN
            elif old == HealthState.UP:
                new = HealthState.DEGRADED
            else:
                new = old
        if new == HealthState.DOWN and old != HealthState.DOWN:
            self.down_since = now
        elif new != HealthState.DOWN:
            self.down_since = None
        self.state = new
        return new if new != old else None


@dataclass
class LedgerEntry:
    """Resources the snapshot does not show yet: a dispatch (reserve) or a completion (release).
    `visible_after` is the snapshot time after which Ray's own numbers include it; None while
    unknown (a dispatched job Ray has not started)."""

    ray_id: str
    node_id: str
    resources: Mapping[str, float]
    release: bool
    visible_after: float | None = None


@dataclass
class Ledger:
    entries: dict[tuple[str, bool], LedgerEntry] = field(default_factory=dict)
    # Bumped on every change, so a view computed from the ledger can be reused until then.
    version: int = 0
    on_change: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def _bump(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def touch(self) -> None:
        """Something the views are made from, besides the ledger, changed."""
        self._bump()

    def reserve(self, ray_id: str, node_id: str, resources: Mapping[str, float]) -> None:
        self.entries[(ray_id, False)] = LedgerEntry(ray_id, node_id, resources, release=False)
        self._bump()

    def started(self, ray_id: str, at: float) -> None:
        entry = self.entries.get((ray_id, False))
        if entry is not None and entry.visible_after is None:
            entry.visible_after = at
            self._bump()

    def finished(self, ray_id: str, at: float, node_id: str | None = None,
                 resources: Mapping[str, float] | None = None, was_running: bool = True,
                 snapshot_time: float | None = None) -> None:
        """A job ended at `at`: drop its reservation; if Ray counted it as using resources,
        add them back until a snapshot after `at` shows them free (not when the last snapshot,
        taken at `snapshot_time`, is already after it: it shows them free, and a job may have
        been placed there since)."""
        self._bump()
        if self.entries.pop((ray_id, False), None) is not None:
            # Still reserved: no snapshot has been seen to count the job (prune drops the
            # reservation once one does), so dropping the reservation is all it takes. A
            # release would cancel another job's usage in the snapshot and overcommit.
            return
        if was_running and node_id is not None and resources and (snapshot_time is None or snapshot_time < at):
            self.entries[(ray_id, True)] = LedgerEntry(ray_id, node_id, resources, release=True, visible_after=at)

    def forget(self, ray_id: str) -> None:
        if self.entries.pop((ray_id, False), None) is not None:
            self._bump()
        if self.entries.pop((ray_id, True), None) is not None:
            self._bump()

    def prune(self, snapshot_time: float, margin: float) -> None:
        """Drop entries that a snapshot taken at `snapshot_time` already reflects."""
        for key, entry in list(self.entries.items()):
            if entry.visible_after is not None and snapshot_time > entry.visible_after + margin:
                del self.entries[key]
                self._bump()

    def reserved_on(self, prefix: str) -> dict[str, dict[str, float]]:
        """Resources reserved (not yet released) per node whose id starts with `prefix`."""
        out: dict[str, dict[str, float]] = {}
        for entry in self.entries.values():
            if not entry.release and entry.node_id.startswith(prefix):
                d = out.setdefault(entry.node_id, {})
                for res, amount in entry.resources.items():
                    d[res] = d.get(res, 0.0) + amount
        return out

    def adjust(self, nodes: tuple[Node, ...], remap: Mapping[str, str] | None = None) -> tuple[Node, ...]:
        """Nodes with this ledger applied: releases free what the snapshot counts (never below
        nothing used), then reservations use what is left (never beyond the node). A release is
        booked on the node rmcs chose, and Ray may have run the job on another, so a node can
        have more released than it uses: that surplus must not offset a new reservation. `remap`:
        node ids whose entries count on another node (a launch that landed on a node now up)."""
        released: dict[str, dict[str, float]] = {}
        reserved: dict[str, dict[str, float]] = {}
        for entry in self.entries.values():
            if entry.release and entry.node_id.startswith("+"):
                continue  # ended after a launch: Ray's node it ran on is not known here
            node_id = remap.get(entry.node_id, entry.node_id) if remap else entry.node_id
            d = (released if entry.release else reserved).setdefault(node_id, {})
            for res, amount in entry.resources.items():
                name = ray_name(res)
                d[name] = d.get(name, 0.0) + amount
        if not released and not reserved:
            return nodes
        out = []
        for node in nodes:
            freed, taken = released.get(node.node_id), reserved.get(node.node_id)
            if not freed and not taken:
                out.append(node)
                continue
            used = dict(node.used)
            for name, amount in (freed or {}).items():
                used[name] = max(0.0, used.get(name, 0.0) - amount)
            for name, amount in (taken or {}).items():
                used[name] = min(node.total.get(name, 0.0), used.get(name, 0.0) + amount)
            out.append(Node(node.node_id, node.total, used))
        return tuple(out)


@dataclass(frozen=True)
class ClusterView:
    """Immutable picture of one cluster for placement."""

    config: ClusterConfig
    health: HealthState
    nodes: tuple[Node, ...] = ()
    last_probe: float | None = None
    latency_s: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def summary(self) -> dict[str, Any]:
        total: dict[str, float] = {}
        free: dict[str, float] = {}
        up = [n for n in self.nodes if not n.node_id.startswith("+")]  # "+": yet to launch (autoscaling)
        for node in up:
            for name, amount in node.total.items():
                total[name] = total.get(name, 0.0) + amount
                free[name] = free.get(name, 0.0) + node.free(name)
        return {
            "name": self.name,
            "health": self.health.value,
            "dashboard_url": self.config.dashboard_url,
            "tags": sorted(self.config.tags),
            "total": total,
            "available": free,
            "nodes": [{"node_id": n.node_id, "total": dict(n.total),
                       "available": {k: n.free(k) for k in n.total}} for n in up],
            # Autoscaling: the nodes rmcs may still have launched ("+<type>#<n>"), those with a
            # launch counted for rmcs's jobs not available.
            **({"to_launch": [{"node_id": n.node_id, "total": dict(n.total),
                               "available": {k: n.free(k) for k in n.total}}
                              for n in self.nodes if n.node_id.startswith("+")]}
               if len(up) < len(self.nodes) else {}),
            "last_probe": self.last_probe,
            "latency_s": self.latency_s,
            "error": self.error,
        }
