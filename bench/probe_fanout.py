"""Probe fan-out: how long one full probe round over many simulated clusters takes, each
answering `/api/cluster_status` after 20 ms, with the daemon's own prober.

    .venv/bin/python bench/probe_fanout.py [--clusters 1000] [--rounds 10]

The first round opens a connection to every cluster; the later ones reuse them. The fleet
serves from a process of its own, over 4 ports.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

from common import machine, pct, quiet_logs, sim_fleet
from scheduler_daemon.probing import Prober
from support import make_settings


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--latency-ms", type=float, default=20.0)
    a = p.parse_args()
    quiet_logs()
    print(f"machine: {machine()}")
    async with sim_fleet(a.clusters, servers=4, status_latency_ms=a.latency_ms) as fleet:
        with tempfile.TemporaryDirectory() as tmp:
            s = make_settings(Path(tmp), probe_timeout_s=5.0, degraded_latency_s=5.0)

            async def on_health(state: object, health: object) -> None:
                return None

            prober = Prober(s, fleet.configs(), on_health, lambda: None)
            rounds = []
            cpu = []
            try:
                for _ in range(a.rounds):
                    r0 = resource.getrusage(resource.RUSAGE_SELF)
                    t0 = time.perf_counter()
                    prober.tick(prober.clusters.values())
                    await asyncio.gather(*(c.probe_task for c in prober.clusters.values() if c.probe_task))
                    rounds.append(time.perf_counter() - t0)
                    r1 = resource.getrusage(resource.RUSAGE_SELF)
                    cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
                    await asyncio.sleep(0.2)
                ok = sum(1 for c in prober.clusters.values() if c.snapshot is not None and c.error is None)
            finally:
                await prober.close()
    warm = rounds[1:]
    print(f"probe round over {a.clusters} clusters answering after {a.latency_ms:g} ms ({ok} probed fine):")
    print(f"  first round (connects to each): {rounds[0]:.3f} s")
    print(f"  later rounds: median {statistics.median(warm):.3f} s, max {max(warm):.3f} s "
          f"(target: at most 1 s); daemon CPU per round {pct(cpu[1:], 50):.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
