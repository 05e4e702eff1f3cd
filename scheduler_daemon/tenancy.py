"""The queues as the scheduler sees them in a pass: what each holds, whose turn it is, which
RabbitMQ queues to consume. The decisions are `fairshare`'s (pure); this object gathers their
inputs from the job book, the window and the placer's views (docs/queues.md).

With one plain `default` queue (no queues configured) it is off: the scheduler's pass is then
the single-queue pass of before, at the same cost.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from .admission import Held, Window
from .book import JobBook
from .clusters import HealthState
from .fairshare import Usage, dominant_share, fair_order, may_consume, never_fits, over_limit, usage_of
from .jobs import GIB, Job
from .placement import Placer
from .queueconf import QueueConfig
from .settings import Settings

TOTALS_EVERY_S = 1.0


class Tenancy:
    def __init__(self, settings: Settings, *, book: JobBook, window: Window, placer: Placer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queues: dict[str, QueueConfig] = {q.name: q for q in settings.queues}
        self.enabled = len(self.queues) > 1 or settings.queues[0].constrained
        self.book = book
        self.window = window
        self.placer = placer
        self.clock = clock
        self.usage: dict[str, Usage] = {}
        self._totals: dict[str, float] = {}
        self._totals_at = -1e18
        self.removed: set[str] = set()  # queues configured before, not now: their messages wait
        self.last_report: list[dict[str, Any]] = []  # what `report` said last (the metrics show it)
        self._state_file = Path(settings.state_dir) / "queues.json"

    async def remember(self) -> set[str]:
        """Note the queues configured now in the state directory; return those configured at the
        last start and not now (their RabbitMQ queues are kept, with their messages)."""
        def swap() -> set[str]:
            try:
                before = set(orjson.loads(self._state_file.read_bytes()))
            except (OSError, ValueError, TypeError):
                before = set()
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            self._state_file.write_bytes(orjson.dumps(sorted(set(self.queues) | before)))
            return before - set(self.queues)
        self.known_removed(await asyncio.to_thread(swap))
        return self.removed

    def known_removed(self, names: set[str]) -> None:
        self.removed |= names - set(self.queues)

    def refresh(self) -> None:
        """Count what every queue holds now (called at the start of each pass)."""
        holding: dict[str, Job] = {}
        for t in self.book.tracked.values():
            if not t.final:
                holding[t.job.submission_id] = t.job
        waiting: list[Job] = []
        for held in self.window:
            if held.in_flight:
                holding.setdefault(held.job.submission_id, held.job)
            else:
                waiting.append(held.job)
        self.usage = usage_of(self.queues, holding.values(), waiting)

    def totals(self) -> dict[str, float]:
        """The fleet's total of each resource, in job units (memory in GiB), over usable clusters."""
        now = self.clock()
        if now - self._totals_at >= TOTALS_EVERY_S or not self._totals:  # none yet: before the first probes
            totals: dict[str, float] = {}
            for view in self.placer.views:
                if view.health in (HealthState.UP, HealthState.DEGRADED):
                    for node in view.nodes:
                        for res, amount in node.total.items():
                            totals[res] = totals.get(res, 0.0) + (amount / GIB if res == "memory" else amount)
            self._totals, self._totals_at = totals, now
        return self._totals

    def order(self, waiting: Iterable[Held]) -> Iterator[Held]:
        return fair_order(waiting, self.queues, self.usage, self.totals())

    def blocked(self, job: Job) -> tuple[bool, str | None]:
        """(never, why): whether `job` must wait for its queue's limits, and whether it never fits them."""
        q = self.queues.get(job.queue)
        if q is None:
            return False, None
        why = never_fits(q, job)
        if why is not None:
            return True, why
        return False, over_limit(q, self.usage.setdefault(job.queue, Usage()), job)

    def charge(self, job: Job) -> None:
        """A job of the window was placed: its queue holds it from now on."""
        u = self.usage.setdefault(job.queue, Usage())
        u.charge(job)
        u.waiting = max(0, u.waiting - 1)

    def wanted(self, spare: bool) -> dict[str, bool]:
        """Per queue, whether to consume its RabbitMQ queue now."""
        return {name: may_consume(q, self.usage.setdefault(name, Usage()), spare) for name, q in self.queues.items()}

    def share(self, name: str) -> float:
        q = self.queues.get(name)
        u = self.usage.get(name)
        return dominant_share(u.held, self.totals(), q.weight if q else 1.0) if u else 0.0

    def report(self, depths: dict[str, int | None]) -> list[dict[str, Any]]:
        """Each queue as `GET /api/v1/queues` shows it (the status service reads this report)."""
        if not self.enabled:
            self.refresh()
        out = []
        for name in sorted(set(self.queues) | set(self.usage) | set(depths)):
            q = self.queues.get(name)
            u = self.usage.get(name, Usage())
            out.append({
                "name": name, "configured": q is not None,
                "weight": q.weight if q else None,
                "guaranteed": dict(q.guaranteed) if q else {},
                "limit": dict(q.limit) if q and q.limit is not None else None,
                "max_running": q.max_running if q else None,
                "publishers": sorted(q.publishers) if q and q.publishers is not None else None,
                "held": {k: v for k, v in u.held.items() if v}, "running": u.running,
                "waiting_in_daemon": u.waiting, "waiting_in_broker": depths.get(name),
                "dominant_share": round(self.share(name), 6),
            })
        self.last_report = out
        return out
