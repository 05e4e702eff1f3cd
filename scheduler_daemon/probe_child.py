"""One probe (`fetch`), and probing from a process of its own for fleets of many clusters
(`probe_process_from`).

With a thousand clusters probed every second, the HTTP work of probing costs the daemon more
than dispatching does, and the daemon's event loop runs on one core. Here the same probes
(`probing.fetch`) run in a child process, on the other core, and the daemon only reads what
they saw.

The daemon starts `python -m scheduler_daemon.probe_child` and writes one line of set-up to its
standard input (`setup_line`). The child then probes every cluster every interval, at most one
probe per cluster at a time, as the in-process prober does, and writes a JSON array per line to
its standard output: the results gathered over FLUSH_S, each

    [name, latency_s, error or null, snapshot time or null, nodes or null]

`nodes` is `[[node_id, {total}, {used}], ...]` when they differ from the last result sent for
that cluster, and null when they do not; a failed probe has an `error` and no snapshot time.
An autoscaling cluster's result has a sixth item, its nodes of each type: {type: [up, coming]}.
The child ends when its standard input closes, so it never outlives the daemon.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Iterable, Iterator, Sequence

import orjson

from .clusters import Node, ProbeError, Snapshot, parse_cluster_status
from .rayapi import RayDashboard, RayError
from .settings import ClusterConfig, Settings

FLUSH_S = 0.02  # results are sent in batches at most this old
PROBE_SLICES = 20  # after the first round, each interval's probes start in this many slices
SETUP_LIMIT = 64 * 1024 * 1024  # bytes in the set-up line

Result = tuple[str, Snapshot | None, str | None, float]  # name, snapshot, error, latency


def schedule(n: int, interval_s: float) -> Iterator[tuple[slice, float]]:
    """Which of `n` clusters to probe next (a slice of their list), and how long to wait after:
    forever. The first round probes all at once, since nothing is known of any cluster yet;
    later rounds start a slice of them at a time, evenly over the interval, so that answers,
    and the work of taking them in, arrive steadily instead of in one burst a round (a burst
    that a job dispatched at that moment would wait behind)."""
    slices = max(1, min(n, PROBE_SLICES))
    yield slice(None), interval_s
    while True:
        for j in range(slices):
            yield slice(j, None, slices), interval_s / slices


async def fetch(dashboard: RayDashboard, timeout_s: float | None) -> tuple[Snapshot | None, str | None, float]:
    """One probe: the cluster's snapshot, or None and why; and how long the answer took.
    `timeout_s` None: the caller limits the time (the probe process: `expire`)."""
    t0 = time.monotonic()
    snapshot: Snapshot | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
            body = await dashboard.cluster_status(caller_bounds_time=True)
        snapshot = parse_cluster_status(body)
        if not snapshot.nodes:
            snapshot, error = None, "cluster_status lists no nodes"
    except asyncio.TimeoutError:
        error = f"probe timed out after {timeout_s}s"
    except (RayError, ProbeError) as exc:
        error = str(exc)
    return snapshot, error, time.monotonic() - t0


def setup_line(settings: Settings, configs: Iterable[ClusterConfig]) -> bytes:
    """What the child needs: timing, and each cluster's dashboard (with its headers)."""
    clusters = [{"name": c.name, "dashboard_url": c.dashboard_url, "ca_file": c.ca_file,
                 "headers": c.revealed_headers()}
                for c in configs]
    return orjson.dumps({"interval_s": settings.probe_interval_s, "timeout_s": settings.probe_timeout_s,
                         "client_timeout_s": settings.dispatch_timeout_s, "clusters": clusters}) + b"\n"


def encode(name: str, snapshot: Snapshot | None, error: str | None, latency: float,
           last: dict[str, tuple[Node, ...]]) -> list[Any]:
    """One result; the nodes only if they changed since the last one sent for `name`."""
    if snapshot is None:
        return [name, latency, error, None, None]
    scaling = [dict(snapshot.scaling)] if snapshot.scaling else []
    if last.get(name) == snapshot.nodes:
        return [name, latency, None, snapshot.time, None, *scaling]
    last[name] = snapshot.nodes
    nodes = [[n.node_id, n.total, n.used] for n in snapshot.nodes]
    return [name, latency, None, snapshot.time, nodes, *scaling]


def decode(item: Sequence[Any], previous: Snapshot | None) -> Result:
    """A result as the prober takes it; unchanged nodes are `previous`'s own (the same objects,
    so nothing downstream sees a change)."""
    name, latency, error, when, nodes, *rest = item
    if when is None:
        return name, None, error, latency
    scaling = {k: (v[0], v[1]) for k, v in rest[0].items()} if rest else {}
    if nodes is None:
        if previous is None:
            raise ValueError(f"{name}: unchanged nodes, but none were sent before")
        return name, Snapshot(when, previous.nodes, scaling), None, latency
    return name, Snapshot(when, tuple(Node(n[0], n[1], n[2]) for n in nodes), scaling), None, latency


TIMED_OUT = "probe timed out"  # what `expire` cancels a probe with


def expire(probes: Iterable["asyncio.Task[None]"]) -> None:
    """Their deadline: each probe still waiting ends as timed out."""
    for task in probes:
        if not task.done():
            task.cancel(TIMED_OUT)


async def main() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=SETUP_LIMIT)  # a thousand clusters' set-up is one long line
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    setup = orjson.loads(await stdin.readline())
    interval, timeout = float(setup["interval_s"]), float(setup["timeout_s"])
    dashboards = [RayDashboard(ClusterConfig(c["name"], c["dashboard_url"], headers=c["headers"],
                                             ca_file=c["ca_file"]), float(setup["client_timeout_s"]))
                  for c in setup["clusters"]]
    out = sys.stdout.buffer
    batch: list[list[Any]] = []
    last: dict[str, tuple[Node, ...]] = {}

    def flush() -> None:
        out.write(orjson.dumps(batch) + b"\n")
        out.flush()
        batch.clear()

    async def probe(dashboard: RayDashboard) -> None:
        t0 = time.monotonic()
        try:
            snapshot, error, latency = await fetch(dashboard, None)  # `expire` limits the time
        except asyncio.CancelledError as exc:
            if exc.args != (TIMED_OUT,):
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            snapshot, error, latency = None, f"probe timed out after {timeout}s", time.monotonic() - t0
        if not batch:
            loop.call_later(FLUSH_S, flush)
        batch.append(encode(dashboard.config.name, snapshot, error, latency, last))

    async def rounds(running: dict[str, asyncio.Task[None]]) -> None:
        for which, wait_s in schedule(len(dashboards), interval):
            started = []
            for d in dashboards[which]:
                task = running.get(d.config.name)
                if task is None or task.done():
                    running[d.config.name] = task = asyncio.create_task(probe(d))
                    started.append(task)
            if started:  # one deadline for the probes started together, not a timer each
                loop.call_later(timeout, expire, started)
            await asyncio.sleep(wait_s)

    running: dict[str, asyncio.Task[None]] = {}
    prober = asyncio.create_task(rounds(running))
    try:
        while await stdin.read(65536):
            pass  # nothing more is sent; end of input is the signal to stop
    finally:
        for task in (prober, *running.values()):
            task.cancel()
        await asyncio.gather(prober, *running.values(), return_exceptions=True)
        await asyncio.gather(*(d.close() for d in dashboards), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
