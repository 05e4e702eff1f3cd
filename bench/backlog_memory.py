"""Backpressure memory: the daemon's resident memory with 1,000 and with 100,000 jobs waiting in
RabbitMQ while every simulated cluster is full.

    .venv/bin/python bench/backlog_memory.py [--depths 1000,100000]

The daemon runs as a real process (`python -m scheduler_daemon`), against two simulated
clusters of 4 CPUs whose jobs run for an hour; each backlog is published first (publisher
confirms, 1,000 in flight) to a queue of its own, which is deleted afterwards. RSS is read from
/proc after the clusters have filled and the daemon has settled (5 s, `--settle-s`; then the
most of 10 samples over as long), with the peak (VmHWM) beside it. Depths may repeat
(`--depths 100,10000,10000,100`): each depth's median is compared.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Mapping

import orjson

from common import machine, publish_fast, sim_fleet, SimFleet
from scheduler_daemon.broker import declare
from support import daemon_launcher, delete_topology, make_settings, queue_depth


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def settled_rss(pid: int, settle_s: float) -> float:
    """A process's resident memory (MB) once it has settled: the most of 10 samples over
    `settle_s`, taken after `settle_s` of waiting."""
    await asyncio.sleep(settle_s)
    samples = []
    for _ in range(10):
        samples.append(status_kb(pid, "VmRSS"))
        await asyncio.sleep(settle_s / 10)
    return max(samples) / 1024


def compare(results: Mapping[int, list[float]]) -> str:
    """The largest depth's median RSS against the smallest's (depths may repeat, alternated)."""
    lo, hi = min(results), max(results)
    a, b = statistics.median(results[lo]), statistics.median(results[hi])
    return (f"RSS with {hi:,} waiting is {100 * (b / a - 1):+.1f}% ({b - a:+.2f} MB) of that with {lo:,} "
            f"(medians of {len(results[hi])} and {len(results[lo])} runs)")


async def measure(fleet: SimFleet, depth: int, capacity: int, settle_s: float) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory(prefix="rmcs-bench-") as tmp:
        s = make_settings(Path(tmp), probe_interval_s=1.0, track_interval_s=0.5)
        await declare(s)
        proc = None
        try:
            t0 = time.monotonic()
            tag = Path(tmp).name
            await publish_fast(s.amqp_url, s.intake_exchange, s.intake_routing_key,
                               (orjson.dumps({"submission_id": f"{tag}-{i}", "entrypoint": "/bin/sleep 3600"})
                                for i in range(depth)))
            print(f"  published {depth:,} in {time.monotonic() - t0:.1f} s")
            before = sum(c["submissions"] for c in (await fleet.stats()).values())
            proc = daemon_launcher(s, fleet.configs(), Path(tmp))()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if sum(c["submissions"] for c in (await fleet.stats()).values()) - before >= capacity:
                    break
                await asyncio.sleep(0.5)
            rss = await settled_rss(proc.pid, settle_s)
            peak = status_kb(proc.pid, "VmHWM")
            waiting = await queue_depth(s)
            return rss, peak / 1024, waiting
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 30)
                except Exception:
                    proc.kill()
            await delete_topology(s)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="1000,100000", help="comma-separated; repeat them to alternate")
    p.add_argument("--settle-s", type=float, default=5.0, help="wait this long, then sample over as long")
    a = p.parse_args()
    print(f"machine: {machine()}")
    results: dict[int, list[float]] = {}
    capacity = 8
    for depth in (int(x) for x in a.depths.split(",")):
        async with sim_fleet(2, cpus=4, duration=3600, name="mem") as fleet:  # empty clusters each time
            rss, peak, waiting = await measure(fleet, depth, capacity, a.settle_s)
            results.setdefault(depth, []).append(rss)
        print(f"{depth:>7,} jobs published, {capacity} dispatched: daemon RSS {rss:.1f} MB (peak {peak:.1f} MB), "
              f"{waiting:,} still waiting in RabbitMQ")
    print(compare(results) + " (targets: at most 150 MB, within 10%)")


if __name__ == "__main__":
    asyncio.run(main())
