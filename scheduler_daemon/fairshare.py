"""Fair share across queues: weighted dominant resource share (DRF), limits and max_running.
Pure: the caller passes in what the queues hold and the fleet's totals (docs/queues.md).

A queue's dominant share is the largest, over the resources, of (what its dispatched, not-final
jobs hold / the fleet's total of that resource), divided by its weight. Among the queues with a
job that may be placed now, the next job comes from the queue with the smallest share; within a
queue, priority, then age (the window's order). Resources are in the job's units (memory in GiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Protocol

from .jobs import Job
from .queueconf import QueueConfig

_EPS = 1e-9


@dataclass
class Usage:
    """What one queue has now: resources held and jobs in flight (dispatched or being dispatched,
    not final), and jobs waiting in the daemon's window."""

    held: dict[str, float] = field(default_factory=dict)
    running: int = 0
    waiting: int = 0

    def charge(self, job: Job) -> None:
        for res, amount in job.resources.items():
            self.held[res] = self.held.get(res, 0.0) + amount
        self.running += 1


def usage_of(queues: Iterable[str], holding: Iterable[Job], waiting: Iterable[Job]) -> dict[str, Usage]:
    """Each queue's usage. `holding`: the jobs dispatched and not final, and those being dispatched
    (each once); `waiting`: the jobs in the window not being dispatched. A job of a queue no longer
    configured counts under its own name, so that it is still seen."""
    usage = {name: Usage() for name in queues}
    for job in holding:
        usage.setdefault(job.queue, Usage()).charge(job)
    for job in waiting:
        usage.setdefault(job.queue, Usage()).waiting += 1
    return usage


def dominant_share(held: Mapping[str, float], totals: Mapping[str, float], weight: float = 1.0) -> float:
    """max over resources of held / fleet total, divided by weight (a resource the fleet lacks is skipped)."""
    share = 0.0
    for res, amount in held.items():
        total = totals.get(res, 0.0)
        if total > _EPS and amount > 0:
            share = max(share, amount / total)
    return share / weight


def over_limit(q: QueueConfig, u: Usage, job: Job) -> str | None:
    """Why placing `job` now would take queue `q` past its limit or max_running (None: it may)."""
    if q.max_running is not None and u.running >= q.max_running:
        return f"queue {q.name} runs {u.running} jobs, its max_running"
    if q.limit:
        for res, amount in job.resources.items():
            if res in q.limit and u.held.get(res, 0.0) + amount > q.limit[res] + _EPS:
                return (f"queue {q.name} holds {u.held.get(res, 0.0):g} {res}; with this job's {amount:g} "
                        f"it would pass its limit of {q.limit[res]:g}")
    return None


def never_fits(q: QueueConfig, job: Job) -> str | None:
    """Why `job` can never run in queue `q` (it asks for more than the queue's limit)."""
    if q.limit:
        for res, amount in job.resources.items():
            if res in q.limit and amount > q.limit[res] + _EPS:
                return f"asks for {amount:g} {res}, more than queue {q.name}'s limit of {q.limit[res]:g}"
    return None


def may_consume(q: QueueConfig, u: Usage, spare: bool) -> bool:
    """Whether queue `q` may take a message from its RabbitMQ queue now: while it is below its
    limits, and the fleet has spare capacity, or the queue has no job waiting in the window (one
    job per queue waits there, so that a freed slot goes to the queue whose turn it is)."""
    if q.max_running is not None and u.running >= q.max_running:
        return False
    if q.limit and any(u.held.get(res, 0.0) >= amount - _EPS for res, amount in q.limit.items()):
        return False
    return spare or u.waiting == 0


class HasJob(Protocol):
    job: Job


def fair_order(waiting: Iterable[HasJob], queues: Mapping[str, QueueConfig], usage: Mapping[str, Usage],
               totals: Mapping[str, float]) -> Iterator[HasJob]:
    """`waiting` (already in priority-then-age order) in fair-share order: each next item comes from
    the queue with the smallest weighted dominant share that has one left. The caller charges a job
    it places to its queue's `usage` between items; the shares are read again at each step."""
    lanes: dict[str, list[HasJob]] = {}
    for item in waiting:
        lanes.setdefault(item.job.queue, []).append(item)
    heads = {name: 0 for name in lanes}
    while heads:
        best, best_share = "", math.inf
        for name in heads:
            q = queues.get(name)
            u = usage.get(name)
            share = dominant_share(u.held, totals, q.weight if q else 1.0) if u is not None else 0.0
            if share < best_share or (share == best_share and name < best):
                best, best_share = name, share
        lane = lanes[best]
        i = heads[best]
        if i + 1 >= len(lane):
            del heads[best]
        else:
            heads[best] = i + 1
        yield lane[i]
