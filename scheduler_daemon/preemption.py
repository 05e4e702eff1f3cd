"""Preemption: which running jobs to stop so that a queue gets its guaranteed resources back.
Pure: the caller passes in the jobs that run, each node's free room and what the queues hold
(docs/queues.md). Resources are in the job's units (memory in GiB).

A job of queue Q that waits and fits nowhere now may preempt when Q's holdings plus the job
stay within Q's `guaranteed` for every resource the job asks for. The victims are jobs of other
queues that hold more than their own `guaranteed` of a resource the victim frees: the queue most
over first, then within it the lowest priority, then the most recently started; all on one node
of one cluster (a job runs on one node), taken until the job fits there. A job held within its
queue's guarantee is never taken. The node needing the fewest victims wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .queueconf import QueueConfig

_EPS = 1e-9


@dataclass(frozen=True)
class Running:
    submission_id: str
    queue: str
    priority: int
    started: float   # larger: started more recently
    cluster: str
    node_id: str
    resources: Mapping[str, float]


@dataclass(frozen=True)
class Room:
    """One node a waiting job could run on (its tags allow it), with what is free there now."""

    cluster: str
    node_id: str
    free: Mapping[str, float]


@dataclass(frozen=True)
class Preemption:
    cluster: str
    node_id: str
    victims: tuple[Running, ...]
    explanation: str


def owed(q: QueueConfig, held: Mapping[str, float], need: Mapping[str, float]) -> bool:
    """Whether queue `q`, holding `held`, is owed `need` out of its guarantee."""
    asked = {r: a for r, a in need.items() if a > _EPS}
    if not asked or not q.guaranteed:
        return False
    return all(r in q.guaranteed and held.get(r, 0.0) + a <= q.guaranteed[r] + _EPS for r, a in asked.items())


def _over(q: QueueConfig | None, held: Mapping[str, float], totals: Mapping[str, float]) -> float:
    """How far a queue is over its guarantee: the largest excess, as a share of the fleet."""
    guaranteed = q.guaranteed if q is not None else {}
    most = 0.0
    for r, amount in held.items():
        excess = amount - guaranteed.get(r, 0.0)
        if excess > _EPS:
            most = max(most, excess / totals[r] if totals.get(r, 0.0) > _EPS else excess)
    return most


def _borrowing(q: QueueConfig | None, held: Mapping[str, float], victim: Running) -> bool:
    """Whether `victim` is held beyond its queue's guarantee (the queue is over in what it frees)."""
    guaranteed = q.guaranteed if q is not None else {}
    return any(a > _EPS and held.get(r, 0.0) > guaranteed.get(r, 0.0) + _EPS for r, a in victim.resources.items())


def choose_victims(queue: str, need: Mapping[str, float], queues: Mapping[str, QueueConfig],
                   held: Mapping[str, Mapping[str, float]], totals: Mapping[str, float],
                   running: Iterable[Running], rooms: Sequence[Room]) -> Preemption | None:
    """The jobs to stop for a job of `queue` needing `need`, or None (not owed, or no node works)."""
    q = queues.get(queue)
    if q is None or not owed(q, held.get(queue, {}), need):
        return None
    by_node: dict[tuple[str, str], list[Running]] = {}
    for r in running:
        if r.queue != queue:
            by_node.setdefault((r.cluster, r.node_id), []).append(r)
    best: Preemption | None = None
    for room in rooms:
        candidates = by_node.get((room.cluster, room.node_id), [])
        victims = _victims_on(room, candidates, need, queues, held, totals)
        if victims is not None and (best is None or len(victims) < len(best.victims)):
            best = Preemption(room.cluster, room.node_id, victims,
                              _explain(q, held.get(queue, {}), need, room, victims, held, queues))
    return best


def _victims_on(room: Room, candidates: list[Running], need: Mapping[str, float],
                queues: Mapping[str, QueueConfig], held: Mapping[str, Mapping[str, float]],
                totals: Mapping[str, float]) -> tuple[Running, ...] | None:
    free = dict(room.free)
    left = {name: dict(h) for name, h in held.items()}
    taken: list[Running] = []
    pool = list(candidates)

    def fits() -> bool:
        return all(free.get(r, 0.0) + _EPS >= a for r, a in need.items() if a > _EPS)

    while not fits():
        eligible = [v for v in pool if _borrowing(queues.get(v.queue), left.get(v.queue, {}), v)
                    and any(v.resources.get(r, 0.0) > _EPS and free.get(r, 0.0) + _EPS < a for r, a in need.items())]
        if not eligible:
            return None
        victim = min(eligible, key=lambda v: (-_over(queues.get(v.queue), left.get(v.queue, {}), totals),
                                              v.priority, -v.started, v.submission_id))
        pool.remove(victim)
        taken.append(victim)
        for r, a in victim.resources.items():
            free[r] = free.get(r, 0.0) + a
            left.setdefault(victim.queue, {})[r] = left.get(victim.queue, {}).get(r, 0.0) - a
    return tuple(taken) if taken else None


def _fmt(res: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items()) if v) or "nothing"


def _explain(q: QueueConfig, holds: Mapping[str, float], need: Mapping[str, float], room: Room,
             victims: tuple[Running, ...], held: Mapping[str, Mapping[str, float]],
             queues: Mapping[str, QueueConfig]) -> str:
    owners = sorted({v.queue for v in victims})
    over = "; ".join(f"queue {name} holds {_fmt(held.get(name, {}))} over its guaranteed "
                     f"{_fmt(queues[name].guaranteed) if name in queues else 'nothing'}" for name in owners)
    return (f"queue {q.name} is owed its guarantee ({_fmt(q.guaranteed)}; holds {_fmt(holds)}, "
            f"its job needs {_fmt(need)}); {over}: stopping {len(victims)} job(s) "
            f"[{', '.join(v.submission_id for v in victims)}] on {room.cluster} node {room.node_id[:12]}")
