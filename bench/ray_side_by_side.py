"""Real Ray, side by side in one run on the same two local clusters: rmcs against a direct
`JobSubmissionClient` submission.

    .venv/bin/python bench/ray_side_by_side.py [--n 10] [--drain 40]

1. Submit-to-RUNNING, one job at a time with free capacity, alternating: published to rmcs
   (to RUNNING as Ray reports it), and submitted directly with `JobSubmissionClient`. Both sides
   poll Ray's `GET /api/jobs/<id>` every 20 ms, so they are timed the same way. Target: medians
   within 0.3 s. The time to rmcs's own RUNNING event (its tracker looks every
   `track_interval_s`) is printed beside it.
2. Drain: 40 short jobs (`/bin/sleep 0.5`, 1 CPU) over the two clusters (2 CPUs each), from the
   first publish to the last SUCCEEDED; and the same 40 submitted directly, alternating
   between the clusters, to the last SUCCEEDED.

Starts two local Ray heads of its own (dashboards 29365 and 29366, ports 29000-29299 and
29400-29699, temp dirs under /tmp/rmcs-b) and stops them by their own process ids.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from common import machine, pct, quiet_logs
from scheduler_daemon.localray import HeadSpec, LocalHead
from scheduler_daemon.settings import ClusterConfig
from support import Events, make_settings, publish, running_daemon

CPU = HeadSpec("cpu_cluster", dashboard_port=29365, port_base=29000, num_cpus=2, temp_root="/tmp/rmcs-b")
CPU2 = HeadSpec("cpu_cluster2", dashboard_port=29366, port_base=29400, num_cpus=2, temp_root="/tmp/rmcs-b")
POLL_S = 0.02


async def ray_status(http: aiohttp.ClientSession, url: str, ray_id: str) -> str | None:
    async with http.get(f"{url}/api/jobs/{ray_id}") as resp:
        if resp.status != 200:
            return None
        return str(orjson.loads(await resp.read()).get("status"))


async def wait_status(http: aiohttp.ClientSession, urls: list[str], ray_id: str, want: set[str],
                      timeout: float = 60.0) -> float:
    """Poll until the job shows one of `want` on any of the clusters; returns that time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for url in urls:
            if await ray_status(http, url, ray_id) in want:
                return time.time()
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"{ray_id} not {want} after {timeout}s")


def direct_submit(url: str, sid: str, entrypoint: str) -> float:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    t0 = time.time()
    client.submit_job(entrypoint=entrypoint, submission_id=sid, entrypoint_num_cpus=1)
    return t0


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--drain", type=int, default=40)
    a = p.parse_args()
    quiet_logs()
    print(f"machine: {machine()}")
    heads = [LocalHead.launch(CPU), LocalHead.launch(CPU2)]
    try:
        for h in heads:
            await asyncio.to_thread(h.wait_ready, 120)
        clusters = tuple(ClusterConfig(h.spec.name, h.spec.dashboard_url) for h in heads)
        urls = [h.spec.dashboard_url for h in heads]
        with tempfile.TemporaryDirectory() as tmp:
            s = make_settings(Path(tmp), track_interval_s=0.25, window_size=8)
            async with running_daemon(s, clusters), Events(s) as ev, aiohttp.ClientSession() as http:
                await asyncio.sleep(2.0)  # first probes
                rmcs_lat: list[float] = []
                rmcs_event_lat: list[float] = []
                direct_lat: list[float] = []
                for i in range(a.n):
                    sid = f"sbs-r-{uuid.uuid4().hex[:8]}"
                    t0 = time.time()
                    await publish(s, {"submission_id": sid, "entrypoint": "/bin/sleep 1",
                                      "resource_requirements": {"CPU": 1}})
                    rmcs_lat.append(await wait_status(http, urls, sid, {"RUNNING", "SUCCEEDED"}) - t0)
                    await ev.wait_for(lambda: "RUNNING" in ev.states(sid), 30)
                    rmcs_event_lat.append(next(e for e in ev.of(sid) if e["state"] == "RUNNING")["_recv"] - t0)
                    await ev.wait_final([sid], 60)

                    did = f"sbs-d-{uuid.uuid4().hex[:8]}"
                    t0 = await asyncio.to_thread(direct_submit, urls[i % 2], did, "/bin/sleep 1")
                    direct_lat.append(await wait_status(http, [urls[i % 2]], did, {"RUNNING", "SUCCEEDED"}) - t0)
                    await wait_status(http, [urls[i % 2]], did, {"SUCCEEDED", "FAILED", "STOPPED"})
                print(f"submit -> RUNNING on Ray, free capacity (n={a.n} each, polled every {POLL_S * 1000:.0f} ms):")
                print(f"  through rmcs:            median {statistics.median(rmcs_lat):.3f} s, "
                      f"p90 {pct(rmcs_lat, 90):.3f} s")
                print(f"  direct JobSubmissionClient: median {statistics.median(direct_lat):.3f} s, "
                      f"p90 {pct(direct_lat, 90):.3f} s")
                print(f"  difference of medians {statistics.median(rmcs_lat) - statistics.median(direct_lat):+.3f} s "
                      f"(target: within 0.3 s); rmcs's own RUNNING event after "
                      f"{statistics.median(rmcs_event_lat):.3f} s (median)")

                # Drain: 40 short jobs over both clusters.
                sids = [f"sbs-dr-{uuid.uuid4().hex[:8]}" for _ in range(a.drain)]
                t0 = time.time()
                for sid in sids:
                    await publish(s, {"submission_id": sid, "entrypoint": "/bin/sleep 0.5",
                                      "resource_requirements": {"CPU": 1}})
                await ev.wait_final(sids, 600)
                last = max(next(e["_recv"] for e in ev.of(sid) if e.get("final")) for sid in sids)
                states = {next(e["state"] for e in ev.of(sid) if e.get("final")) for sid in sids}
                rmcs_drain = last - t0

                dids = [f"sbs-dd-{uuid.uuid4().hex[:8]}" for _ in range(a.drain)]
                t0 = time.time()
                for i, did in enumerate(dids):
                    await asyncio.to_thread(direct_submit, urls[i % 2], did, "/bin/sleep 0.5")
                ends: list[Any] = []
                for i, did in enumerate(dids):
                    ends.append(await wait_status(http, [urls[i % 2]], did, {"SUCCEEDED", "FAILED", "STOPPED"}, 600))
                direct_drain = max(ends) - t0
                print(f"drain {a.drain} short jobs (sleep 0.5, 1 CPU) over two 2-CPU clusters:")
                print(f"  through rmcs: {rmcs_drain:.1f} s (final states {sorted(states)}); "
                      f"direct, alternating clusters: {direct_drain:.1f} s")
    finally:
        for h in heads:
            await asyncio.to_thread(h.stop)


if __name__ == "__main__":
    asyncio.run(main())
