"""Probe every cluster concurrently and keep the live view.

Each tick starts a probe for every cluster whose previous probe has finished, so a slow
or dead cluster never delays the others. Results feed `Health` (hysteresis) and the
per-cluster snapshot; the `Ledger` adds what Ray's snapshot does not show yet.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

import structlog

from .clusters import ClusterView, Health, HealthState, Ledger, ProbeError, Snapshot, parse_cluster_status
from .rayapi import RayDashboard, RayError
from .settings import ClusterConfig, Settings

log = structlog.get_logger("rmcs.probing")


@dataclass
class ClusterState:
    config: ClusterConfig
    dashboard: RayDashboard
    health: Health
    ledger: Ledger = field(default_factory=Ledger)
    snapshot: Snapshot | None = None
    last_probe: float | None = None
    latency_s: float | None = None
    error: str | None = None
    probe_task: asyncio.Task[None] | None = None
    probes: int = 0
    _view: tuple[Snapshot | None, tuple[object, ...], ClusterView] | None = field(default=None, repr=False)

    def view(self) -> ClusterView:
        """The current view; the same object until a probe, the health or the ledger changes
        (placement asks for every cluster's view once per job, so this is the hot path)."""
        key = (self.ledger.version, self.health.state, self.last_probe, self.latency_s, self.error)
        cached = self._view
        if cached is not None and cached[0] is self.snapshot and cached[1] == key:
            return cached[2]
        nodes = self.ledger.adjust(self.snapshot.nodes) if self.snapshot else ()
        view = ClusterView(self.config, self.health.state, nodes, self.last_probe, self.latency_s, self.error)
        self._view = (self.snapshot, key, view)
        return view


HealthCallback = Callable[[ClusterState, HealthState], Awaitable[None]]


class Prober:
    def __init__(self, settings: Settings, configs: Iterable[ClusterConfig],
                 on_health: HealthCallback, on_probe: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clusters = {
            c.name: ClusterState(c, RayDashboard(c, settings.dispatch_timeout_s),
                                 Health(settings.down_after_failures, settings.up_after_successes))
            for c in configs
        }
        self._on_health = on_health
        self._on_probe = on_probe
        self._clock = clock
        self.rounds = 0
        # Every cluster's current view, in configuration order; a probe or a ledger change
        # marks its cluster, whose view alone is taken again (with a thousand clusters the
        # scheduler asks for all of them many times a second).
        self._views = {name: state.view() for name, state in self.clusters.items()}
        self._changed: set[str] = set()
        for name, state in self.clusters.items():
            state.ledger.on_change = functools.partial(self._changed.add, name)

    def view_map(self) -> dict[str, ClusterView]:
        """Each cluster's current view, by name (a copy the caller may change)."""
        while self._changed:
            name = self._changed.pop()
            self._views[name] = self.clusters[name].view()
        return dict(self._views)

    def views(self) -> list[ClusterView]:
        return list(self.view_map().values())

    @property
    def any_probed(self) -> bool:
        return any(c.snapshot is not None for c in self.clusters.values())

    async def run(self, stopping: asyncio.Event) -> None:
        interval = self.settings.probe_interval_s
        while not stopping.is_set():
            self.tick()
            try:
                await asyncio.wait_for(stopping.wait(), interval)
            except asyncio.TimeoutError:
                pass

    def tick(self) -> None:
        self.rounds += 1
        for state in self.clusters.values():
            if state.probe_task is None or state.probe_task.done():
                state.probe_task = asyncio.create_task(self.probe(state), name=f"probe-{state.config.name}")

    async def probe(self, state: ClusterState) -> None:
        t0 = time.monotonic()
        ok = False
        try:
            async with asyncio.timeout(self.settings.probe_timeout_s):  # no extra task, unlike wait_for
                body = await state.dashboard.cluster_status()
            snapshot = parse_cluster_status(body)
            if not snapshot.nodes:
                raise ProbeError("cluster_status lists no nodes")
            state.snapshot = snapshot
            state.ledger.prune(snapshot.time, self.settings.snapshot_margin_s)
            state.error = None
            ok = True
        except asyncio.TimeoutError:
            state.error = f"probe timed out after {self.settings.probe_timeout_s}s"
        except (RayError, ProbeError) as exc:
            state.error = str(exc)
        latency = time.monotonic() - t0
        state.latency_s = latency
        state.last_probe = self._clock()
        state.probes += 1
        changed = state.health.record(ok, latency > self.settings.degraded_latency_s, time.monotonic())
        self._changed.add(state.config.name)
        if changed is not None:
            log.info("cluster health changed", cluster=state.config.name, health=changed.value,
                     error=state.error, latency_s=round(latency, 4))
            await self._on_health(state, changed)
        self._on_probe()

    async def close(self) -> None:
        tasks = [c.probe_task for c in self.clusters.values() if c.probe_task and not c.probe_task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.dashboard.close() for c in self.clusters.values()), return_exceptions=True)
