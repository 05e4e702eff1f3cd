"""Waiting jobs' memory: the daemon's resident memory with 100 and with 10,000 jobs waiting for
their dependencies (`depends_on`, a dependency that never comes).

    .venv/bin/python bench/waiting_memory.py [--depths 100,10000]

As bench/backlog_memory.py: the daemon runs as a real process (`python -m scheduler_daemon`)
against two simulated clusters; the jobs are published first, then the daemon takes them all
in (each stored in waiting.db and acknowledged). RSS is read from /proc once the intake queue
is empty and every job is stored, after the daemon has settled (5 s, `--settle-s`; then the
most of 10 samples over as long), with the peak (VmHWM) beside it. Depths may repeat
(`--depths 100,10000,10000,100`): each depth's median is compared.
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

from backlog_memory import compare, settled_rss, status_kb
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


async def measure(fleet: SimFleet, depth: int, settle_s: float) -> tuple[float, float, float]:
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
            return await settled_rss(proc.pid, settle_s), status_kb(proc.pid, "VmHWM") / 1024, took
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
    p.add_argument("--depths", default="100,10000", help="comma-separated; repeat them to alternate")
    p.add_argument("--settle-s", type=float, default=5.0, help="wait this long, then sample over as long")
    a = p.parse_args()
    print(f"machine: {machine()}")
    results: dict[int, list[float]] = {}
    for depth in (int(x) for x in a.depths.split(",")):
        async with sim_fleet(2, cpus=4, duration=3600, name="wait") as fleet:
            rss, peak, took = await measure(fleet, depth, a.settle_s)
            results.setdefault(depth, []).append(rss)
        print(f"{depth:>7,} jobs waiting: daemon RSS {rss:.1f} MB (peak {peak:.1f} MB); "
              f"all stored in {took:.1f} s ({depth / took:,.0f} jobs/s)")
    print(compare(results))


if __name__ == "__main__":
    asyncio.run(main())
