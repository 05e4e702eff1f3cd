"""Waiting jobs' memory: the daemon's resident memory with 100 and with 10,000 jobs waiting for
their dependencies (`depends_on`, a dependency that never comes).

    .venv/bin/python bench/waiting_memory.py [--depths 100,10000]

As bench/backlog_memory.py: the daemon runs as a real process (`python -m scheduler_daemon`)
against two simulated clusters; the jobs are published first, then the daemon takes them all
in (each stored in waiting.db and acknowledged). RSS is read from /proc once the intake queue
is empty and every job is stored, after the daemon has settled (maximum of 10 samples over
5 s), with the peak (VmHWM) beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

import orjson

from backlog_memory import status_kb
from common import machine, publish_fast, sim_fleet, SimFleet
from scheduler_daemon.broker import declare
from support import daemon_launcher, delete_topology, make_settings, queue_depth


def stored(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM waiting").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


async def measure(fleet: SimFleet, depth: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="rmcs-bench-") as tmp:
        s = make_settings(Path(tmp), probe_interval_s=1.0, track_interval_s=0.5, status_service="off")
        await declare(s)
        proc = None
        try:
            tag = Path(tmp).name
            await publish_fast(s.amqp_url, s.intake_exchange, s.intake_routing_key,
                               (orjson.dumps({"submission_id": f"{tag}-{i}", "entrypoint": "/bin/sleep 1",
                                              "depends_on": [f"{tag}-never"]}) for i in range(depth)))
            proc = daemon_launcher(s, fleet.configs(), Path(tmp))()
            t0 = time.monotonic()
            db = Path(s.state_dir) / "waiting.db"
            while time.monotonic() - t0 < 600:
                if stored(db) >= depth and await queue_depth(s) == 0:
                    break
                await asyncio.sleep(0.5)
            took = time.monotonic() - t0
            await asyncio.sleep(5)
            samples = []
            for _ in range(10):
                samples.append(status_kb(proc.pid, "VmRSS"))
                await asyncio.sleep(0.5)
            return max(samples) / 1024, status_kb(proc.pid, "VmHWM") / 1024, took
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
    p.add_argument("--depths", default="100,10000")
    a = p.parse_args()
    print(f"machine: {machine()}")
    depths = [int(x) for x in a.depths.split(",")]
    results = {}
    for depth in depths:
        async with sim_fleet(2, cpus=4, duration=3600, name="wait") as fleet:
            rss, peak, took = await measure(fleet, depth)
            results[depth] = rss
        print(f"{depth:>7,} jobs waiting: daemon RSS {rss:.1f} MB (peak {peak:.1f} MB); "
              f"all stored in {took:.1f} s ({depth / took:,.0f} jobs/s)")
    lo, hi = results[depths[0]], results[depths[-1]]
    print(f"RSS with {depths[-1]:,} waiting is {100 * (hi / lo - 1):+.1f}% of that with {depths[0]:,}")


if __name__ == "__main__":
    asyncio.run(main())
