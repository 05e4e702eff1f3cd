"""Probe every cluster concurrently and keep the live view.

Each tick starts a probe for every cluster whose previous probe has finished, so a slow
or dead cluster never delays the others. Results feed `Health` (hysteresis) and the
per-cluster snapshot; the `Ledger` adds what Ray's snapshot does not show yet.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

import orjson
import structlog

from . import probe_child
from .autoscaling import expand
from .clusters import ClusterView, Health, HealthState, Ledger, Node, Snapshot
from .probe_child import fetch
from .rayapi import RayDashboard
from .settings import ClusterConfig, Settings

log = structlog.get_logger("rmcs.probing")

CHILD_COMMAND = (sys.executable, "-m", "scheduler_daemon.probe_child")
CHILD_LINE_LIMIT = 64 * 1024 * 1024  # bytes in one report of the probe process
CHILD_SILENCE_MARGIN_S = 5.0  # beyond an interval and a timeout, before a silent child is replaced
CHILD_EXIT_S = 2.0  # a child whose input closed has this long to exit before it is killed


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
    # Autoscaling: node types whose last launch for rmcs never came (offered as busy meanwhile).
    held_back: frozenset[str] = frozenset()
    _view: tuple[Snapshot | None, tuple[object, ...], ClusterView] | None = field(default=None, repr=False)

    def hold_back(self, types: frozenset[str]) -> None:
        if types != self.held_back:
            self.held_back = types
            self.ledger.touch()  # the view changes: placement judges this cluster again

    def view(self) -> ClusterView:
        """The current view; the same object until a probe, the health or the ledger changes
        (placement asks for every cluster's view once per job, so this is the hot path)."""
        key = (self.ledger.version, self.health.state, self.last_probe, self.latency_s, self.error, self.held_back)
        cached = self._view
        if cached is not None and cached[0] is self.snapshot and cached[1] == key:
            return cached[2]
        nodes: tuple[Node, ...] = ()
        if self.snapshot is not None:
            if self.config.autoscaling is not None:  # with the nodes yet to launch
                nodes = expand(self.snapshot.nodes, self.config.autoscaling, self.snapshot.scaling,
                               self.ledger, self.held_back)
            else:
                nodes = self.ledger.adjust(self.snapshot.nodes)
        view = ClusterView(self.config, self.health.state, nodes, self.last_probe, self.latency_s, self.error)
        self._view = (self.snapshot, key, view)
        return view


HealthCallback = Callable[[ClusterState, HealthState], Awaitable[None]]


class Prober:
    def __init__(self, settings: Settings, configs: Iterable[ClusterConfig],
                 on_health: HealthCallback, on_probe: Callable[[], None],
                 clock: Callable[[], float] = time.time,
                 on_view: Callable[[ClusterView], None] = lambda view: None) -> None:
        self.settings = settings
        self.clusters = {
            c.name: ClusterState(c, RayDashboard(c, settings.dispatch_timeout_s),
                                 Health(settings.down_after_failures, settings.up_after_successes))
            for c in configs
        }
        self._on_health = on_health
        self._on_probe = on_probe
        self._on_view = on_view
        self._clock = clock
        self.rounds = 0
        self._first_round_in = False
        self.child: asyncio.subprocess.Process | None = None  # the probe process, while one runs
        # A cluster whose nodes, health or ledger changed is marked; `refresh` passes its new
        # view to `on_view` (placement). A probe that saw nothing new marks nothing: with a
        # thousand clusters probed every second, most probes see nothing new.
        self._changed: set[str] = set()
        for name, state in self.clusters.items():
            state.ledger.on_change = functools.partial(self._changed.add, name)
            on_view(state.view())

    def refresh(self) -> None:
        """Pass on the views of the clusters that changed since the last call."""
        while self._changed:
            self._on_view(self.clusters[self._changed.pop()].view())

    def views(self) -> list[ClusterView]:
        """Every cluster's view as of now (with its last probe's time, latency and error)."""
        return [state.view() for state in self.clusters.values()]

    @property
    def first_round_in(self) -> bool:
        """Whether every cluster's first probe has answered or failed (within `probe_timeout_s`).
        Intake waits for it: a job placed before then would go to whichever cluster answered
        first, not to the one that fits it best."""
        if not self._first_round_in:  # once in, always in: asked on every scheduling pass
            self._first_round_in = all(c.probes > 0 for c in self.clusters.values())
        return self._first_round_in

    @property
    def in_child(self) -> bool:
        """Whether the probes run in a child process (`probe_process_from`)."""
        return len(self.clusters) >= self.settings.probe_process_from

    async def run(self, stopping: asyncio.Event) -> None:
        if self.in_child:
            return await self._run_child(stopping)
        states = list(self.clusters.values())
        for which, wait_s in probe_child.schedule(len(states), self.settings.probe_interval_s):
            if which.start in (None, 0):
                self.rounds += 1
            self.tick(states[which])
            try:
                await asyncio.wait_for(stopping.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
            if stopping.is_set():
                return

    def tick(self, states: Iterable[ClusterState]) -> None:
        """Start a probe of each of `states` whose last probe has ended."""
        for state in states:
            if state.probe_task is None or state.probe_task.done():
                state.probe_task = asyncio.create_task(self.probe(state), name=f"probe-{state.config.name}")

    async def probe(self, state: ClusterState) -> None:
        snapshot, error, latency = await fetch(state.dashboard, self.settings.probe_timeout_s)
        changed = self.probed(state, snapshot, error, latency)
        if changed is not None:
            await self._on_health(state, changed)
        self._on_probe()

    def probed(self, state: ClusterState, snapshot: Snapshot | None, error: str | None,
               latency: float) -> HealthState | None:
        """Take one probe's outcome (a snapshot, or why there is none); the new health if it changed."""
        if snapshot is not None:
            if state.snapshot is None or state.snapshot.nodes != snapshot.nodes \
                    or state.snapshot.scaling != snapshot.scaling:
                self._changed.add(state.config.name)
            state.snapshot = snapshot
            state.ledger.prune(snapshot.time, self.settings.snapshot_margin_s)
        state.error = error
        state.latency_s = latency
        state.last_probe = self._clock()
        state.probes += 1
        changed = state.health.record(snapshot is not None, latency > self.settings.degraded_latency_s,
                                      time.monotonic())
        if changed is not None:
            self._changed.add(state.config.name)
            log.info("cluster health changed", cluster=state.config.name, health=changed.value,
                     error=state.error, latency_s=round(latency, 4))
        return changed

    # ---- probing from a child process (probe_child.py) -----------------------------------

    async def _run_child(self, stopping: asyncio.Event) -> None:
        """Run the child and take its results; when it ends, every cluster counts a failed
        probe (nothing is known of them) and a new child starts after a probe interval."""
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *CHILD_COMMAND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE, limit=CHILD_LINE_LIMIT)
                except OSError as exc:
                    ended = f"could not start: {exc}"
                else:
                    self.child = proc
                    stderr = asyncio.ensure_future(_last_lines(proc.stderr))
                    try:
                        ended = await self._follow_child(proc, stop)
                    finally:
                        await self._end_child(proc)
                    if await stderr:
                        ended += ": " + " | ".join(stderr.result())
                if stopping.is_set():
                    return
                log.error("probe process ended; every cluster counts a failed probe until it is back",
                          reason=ended)
                for state in self.clusters.values():
                    changed = self.probed(state, None, f"probe process {ended}", 0.0)
                    if changed is not None:
                        await self._on_health(state, changed)
                self._on_probe()
                await asyncio.wait([stop], timeout=self.settings.probe_interval_s)
        finally:
            stop.cancel()

    async def _follow_child(self, proc: asyncio.subprocess.Process, stop: asyncio.Future[Any]) -> str:
        """Feed the child its set-up and apply what it reports; returns why it ended."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(probe_child.setup_line(self.settings, (c.config for c in self.clusters.values())))
            await proc.stdin.drain()
        except ConnectionError:
            pass  # it is gone already: its end of output and exit code say more, below
        # A live child reports at least once per probe timeout (a probe that fails is a result).
        silence = self.settings.probe_interval_s + self.settings.probe_timeout_s + CHILD_SILENCE_MARGIN_S
        while True:
            read = asyncio.ensure_future(proc.stdout.readline())
            done, _ = await asyncio.wait([read, stop], timeout=silence, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                return "stopping" if stop.done() else f"was silent for {silence:g}s"
            try:
                line = read.result()
            except ValueError as exc:  # a line over the limit
                return f"sent an unreadable line: {exc}"
            if not line:
                return f"exited with code {await proc.wait()}"
            try:
                results = [probe_child.decode(item, self.clusters[item[0]].snapshot) for item in orjson.loads(line)]
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                return f"sent an unreadable line: {type(exc).__name__}: {exc}"
            for name, snapshot, error, latency in results:
                state = self.clusters[name]
                changed = self.probed(state, snapshot, error, latency)
                if changed is not None:
                    await self._on_health(state, changed)
            self._on_probe()

    async def _end_child(self, proc: asyncio.subprocess.Process) -> None:
        """Close its input (the child's signal to stop); kill it if it lingers."""
        self.child = None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), CHILD_EXIT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        tasks = [c.probe_task for c in self.clusters.values() if c.probe_task and not c.probe_task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.dashboard.close() for c in self.clusters.values()), return_exceptions=True)


async def _last_lines(stream: asyncio.StreamReader | None, keep: int = 3) -> list[str]:
    """The last few lines a child wrote to its standard error (why it died, usually)."""
    lines: list[str] = []
    while stream is not None and (line := await stream.readline()):
        lines = (lines + [line.decode(errors="replace").strip()])[-keep:]
    return [line for line in lines if line]
