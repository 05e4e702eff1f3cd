"""Cluster health changes as events: at most one publishing task per cluster, and changes that
pile up while one is being published collapse into the latest (with a thousand clusters
flapping under load, a task per change grew without bound)."""

from __future__ import annotations

from .clusters import HealthState
from .events import ClusterEvent, EventPublisher
from .probing import ClusterState
from .tasks import Work


class HealthEvents:
    def __init__(self, publisher: EventPublisher, work: Work) -> None:
        self._publisher = publisher
        self._work = work
        self._pending: dict[str, ClusterEvent] = {}
        self._publishing: set[str] = set()

    async def changed(self, state: ClusterState, health: HealthState) -> None:
        """The prober's callback. Not awaited there: a broker outage must not hold up the next
        probe of this cluster."""
        if health == HealthState.UNKNOWN:
            return
        name = state.config.name
        self._pending[name] = ClusterEvent(name, health.value, state.error)
        if name not in self._publishing:
            self._publishing.add(name)
            self._work.spawn(self._publish(name), f"health-{name}")

    async def _publish(self, name: str) -> None:
        try:
            while (event := self._pending.pop(name, None)) is not None:
                await self._publisher.publish(event)
        finally:
            self._publishing.discard(name)
