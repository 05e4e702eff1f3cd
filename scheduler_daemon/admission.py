"""The bounded window of accepted jobs that wait for capacity. Pure: time is passed in.

The window is small on purpose: the backlog, and its priority order, stay in RabbitMQ.
Jobs leave it dispatched, rejected, cancelled or expired; only then is their message
acknowledged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

from .jobs import Job


@dataclass
class Held:
    job: Job
    delivery: Any
    accepted_at: float
    seq: int = 0
    # Clusters not to try again before a time (monotonic); math.inf when Ray refused the job.
    exclude_until: dict[str, float] = field(default_factory=dict)
    # A dispatch whose outcome is unknown (timeout): the cluster to check before going elsewhere.
    verify_on: str | None = None
    verify_get: bool = False  # look by GET (Ray answered a 500: it is done with the POST), not POST again
    in_flight: bool = False
    last_reason: str = ""     # why it waits (the last pass's explanation), or why a dispatch failed
    placed_because: str = ""  # the explanation of the placement being dispatched

    @property
    def deadline(self) -> float | None:
        t = self.job.queue_timeout_s
        return None if t is None else self.accepted_at + t


class Window:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: dict[str, Held] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, submission_id: str) -> bool:
        return submission_id in self._held

    @property
    def full(self) -> bool:
        return len(self._held) >= self.capacity

    def get(self, submission_id: str) -> Held | None:
        return self._held.get(submission_id)

    def add(self, held: Held) -> Held | None:
        """Hold a job. A second delivery of a held job (redelivered after a reconnect)
        replaces the first one's delivery handle; the old entry is returned."""
        old = self._held.get(held.job.submission_id)
        if old is not None:
            old.delivery = held.delivery
            return old
        held.seq = next(self._seq)
        self._held[held.job.submission_id] = held
        return None

    def remove(self, submission_id: str) -> Held | None:
        return self._held.pop(submission_id, None)

    def waiting(self) -> list[Held]:
        """Jobs not being dispatched right now, highest priority first, then oldest."""
        return sorted((h for h in self._held.values() if not h.in_flight),
                      key=lambda h: (-h.job.priority, h.seq))

    def expired(self, now: float) -> list[Held]:
        return [h for h in self._held.values()
                if not h.in_flight and h.deadline is not None and now >= h.deadline]

    def __iter__(self) -> Iterator[Held]:
        return iter(list(self._held.values()))
