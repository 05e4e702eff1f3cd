"""A fake Ray cluster that grows on demand: Ray's autoscaler, modelled for the simulator.

`ScalingCluster` is a `FakeCluster` with a head node and worker node types (resources,
max_workers). Its autoscaler reads the resource demand as Ray's does: the entrypoint resources
of the jobs PENDING in its queue, packed first onto the free resources of the nodes up, then
onto nodes already being launched, and what is left starts new nodes of the first type that
fits, while the type has room (nodes up or launching < max_workers). A launch takes
`launch_delay_s`; a worker idle for `idle_timeout_s` is removed, and the logs of the jobs it
ran vanish with it (as Ray's do). `autoscalerReport` says what Ray's says: `activeNodes`,
`pendingLaunches` (camel-cased type names, as Ray writes them), `pendingNodes`.
`never_launch`: launches are started and never come. Records: `launches` per type, the most
nodes of each type ever up or launching (`max_nodes`).
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any, Mapping

from fakeray import FakeCluster


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class ScalingCluster(FakeCluster):
    def __init__(self, name: str, node_types: Mapping[str, tuple[Mapping[str, float], int]], *,
                 head: Mapping[str, float] | None = None, launch_delay_s: float = 2.0,
                 idle_timeout_s: float = 5.0, never_launch: bool = False, **kw: Any) -> None:
        self.head_id = f"head{uuid.uuid4().hex[:24]}"
        super().__init__(name, {self.head_id: head or {"CPU": 2.0}}, **kw)
        self.node_types = {t: ({k: float(v) for k, v in res.items()}, most) for t, (res, most) in node_types.items()}
        self.type_of: dict[str, str] = {}
        self.launching: list[tuple[str, float]] = []   # (type, ready at)
        self.idle_since: dict[str, float] = {}
        self.removed: set[str] = set()
        self.launch_delay_s = launch_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.never_launch = never_launch
        self.launches: Counter[str] = Counter()
        self.max_nodes: Counter[str] = Counter()

    def count(self, node_type: str) -> int:
        return sum(1 for t in self.type_of.values() if t == node_type) + \
            sum(1 for t, _ in self.launching if t == node_type)

    def advance(self, now: float | None = None) -> float:
        now = super().advance(now)
        for node_type, ready in list(self.launching):  # launches that came
            if ready <= now and not self.never_launch:
                self.launching.remove((node_type, ready))
                nid = uuid.uuid4().hex + uuid.uuid4().hex[:24]
                self.nodes[nid] = dict(self.node_types[node_type][0])
                self.type_of[nid] = node_type
                self.idle_since[nid] = ready
                self._start_waiting(ready)
        busy = {j.node_id for j in self._active}
        for nid in list(self.type_of):  # idle workers go
            if nid in busy:
                self.idle_since.pop(nid, None)
            elif now - self.idle_since.setdefault(nid, now) >= self.idle_timeout_s:
                del self.nodes[nid], self.type_of[nid], self.idle_since[nid]
                self.removed.add(nid)
        self._scale(now)
        return now

    def _scale(self, now: float) -> None:
        """Ray's resource demand scheduler, in small: pack the waiting demand onto what is up,
        then onto what is launching, then launch what is missing."""
        used = self._used()
        bins = [{k: v - used[nid].get(k, 0.0) for k, v in total.items()} for nid, total in self.nodes.items()]
        bins += [dict(self.node_types[t][0]) for t, _ in self.launching]
        for job in self._waiting:
            if job.stop_requested:
                continue
            if any(_take(b, job.need) for b in bins):
                continue
            for node_type, (res, most) in self.node_types.items():
                if self.count(node_type) < most and _fits(res, job.need):
                    self.launching.append((node_type, now + self.launch_delay_s))
                    self.launches[node_type] += 1
                    self.max_nodes[node_type] = max(self.max_nodes[node_type], self.count(node_type))
                    new = dict(res)
                    _take(new, job.need)
                    bins.append(new)
                    break

    def cluster_status(self) -> dict[str, Any]:
        body = super().cluster_status()
        active = Counter(camel(t) for t in self.type_of.values())
        active["headgroup"] = 1
        body["data"]["clusterStatus"]["autoscalerReport"] = {
            "activeNodes": dict(active),
            "pendingLaunches": dict(Counter(camel(t) for t, _ in self.launching)),
            "pendingNodes": [], "failedNodes": [],
        }
        return body

    def logs(self, sid: str) -> tuple[int, Any]:
        job = self.jobs.get(sid)
        if job is not None and job.node_id in self.removed:
            return 500, f"Failed to get logs: the node {job.node_id} of job {sid} is dead"
        return super().logs(sid)


def _fits(free: Mapping[str, float], need: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _take(free: dict[str, float], need: Mapping[str, float]) -> bool:
    if not _fits(free, need):
        return False
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v
    return True
