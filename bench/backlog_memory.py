"""Backpressure memory: the daemon's resident memory with 1,000 and with 100,000 jobs waiting in
RabbitMQ while every simulated cluster is full.

    .venv/bin/python bench/backlog_memory.py [--depths 1000,100000]

The daemon runs as a real process (`python -m scheduler_daemon`), against two simulated
clusters of 4 CPUs whose jobs run for an hour; each backlog is published first (publisher
confirms, 1,000 in flight) to a queue of its own, which is deleted afterwards. RSS is read from
/proc after the clusters have filled and the daemon has settled (maximum of 10 samples over
5 s), with the peak (VmHWM) beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

import orjson

from common import machine, publish_fast, sim_fleet, SimFleet
from scheduler_daemon.broker import declare
from support import daemon_launcher, delete_topology, make_settings, queue_depth


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def measure(fleet: SimFleet, depth: int, capacity: int) -> tuple[float, float, int]:
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
            await asyncio.sleep(5)
            samples = []
            for _ in range(10):
                samples.append(status_kb(proc.pid, "VmRSS"))
                await asyncio.sleep(0.5)
            peak = status_kb(proc.pid, "VmHWM")
            waiting = await queue_depth(s)
            return max(samples) / 1024, peak / 1024, waiting
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
    p.add_argument("--depths", default="1000,100000")
    a = p.parse_args()
    print(f"machine: {machine()}")
    depths = [int(x) for x in a.depths.split(",")]
    results = {}
    capacity = 8
    for depth in depths:
        async with sim_fleet(2, cpus=4, duration=3600, name="mem") as fleet:  # empty clusters each time
            rss, peak, waiting = await measure(fleet, depth, capacity)
            results[depth] = rss
        print(f"{depth:>7,} jobs published, {capacity} dispatched: daemon RSS {rss:.1f} MB (peak {peak:.1f} MB), "
              f"{waiting:,} still waiting in RabbitMQ")
    lo, hi = results[depths[0]], results[depths[-1]]
    print(f"RSS with {depths[-1]:,} waiting is {100 * (hi / lo - 1):+.1f}% of that with {depths[0]:,} "
          f"(targets: at most 150 MB, within 10%)")


if __name__ == "__main__":
    asyncio.run(main())
