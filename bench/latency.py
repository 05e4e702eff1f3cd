"""Publish-to-dispatch latency with free capacity, and how soon a freed slot is reused,
against the real RabbitMQ and real local Ray clusters.

    .venv/bin/python bench/latency.py

Prints the figures; asserts nothing.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import orjson

from common import machine, pct, quiet_logs
from scheduler_daemon.localray import HeadSpec, LocalHead
from scheduler_daemon.rayapi import RayDashboard
from scheduler_daemon.settings import ClusterConfig
from support import Events, make_settings, running_daemon  # on the path through common

CPU = HeadSpec("cpu_cluster", dashboard_port=29265, port_base=24000, num_cpus=2, temp_root="/tmp/rmcs-b")
GPU = HeadSpec("gpu_cluster", dashboard_port=29266, port_base=25000, num_cpus=2, num_gpus=2, temp_root="/tmp/rmcs-b")


async def main() -> None:
    quiet_logs()
    print(f"machine: {machine()}")
    heads = [LocalHead.launch(CPU), LocalHead.launch(GPU)]
    try:
        for h in heads:
            await asyncio.to_thread(h.wait_ready, 120)
        clusters = tuple(ClusterConfig(h.spec.name, h.spec.dashboard_url) for h in heads)
        with tempfile.TemporaryDirectory() as tmp:
            s = make_settings(Path(tmp), track_interval_s=0.25, window_size=8)
            async with running_daemon(s, clusters), Events(s) as ev:
                await asyncio.sleep(1.5)  # first probes
                conn = await aio_pika.connect(s.amqp_url)
                async with conn:
                    ch = await conn.channel(publisher_confirms=True)
                    ex = await ch.get_exchange(s.intake_exchange)

                    async def submit(body: dict[str, object]) -> float:
                        t0 = time.time()
                        await ex.publish(aio_pika.Message(orjson.dumps(body), content_type="application/json"),
                                         routing_key=s.intake_routing_key)
                        return t0

                    # 1. publish -> DISPATCHED with free capacity, one job at a time.
                    lat = []
                    for _ in range(20):
                        sid = f"lat-{uuid.uuid4().hex[:8]}"
                        t0 = await submit({"submission_id": sid, "entrypoint": "/bin/true"})
                        await ev.wait_for(lambda: "DISPATCHED" in ev.states(sid), 30)
                        t1 = next(e for e in ev.of(sid) if e["state"] == "DISPATCHED")["_recv"]
                        lat.append((t1 - t0) * 1000)
                        await ev.wait_final([sid], 60)
                    print(f"publish -> DISPATCHED event (free capacity, real Ray, n={len(lat)}): "
                          f"p50 {statistics.median(lat):.1f} ms, p90 {pct(lat, 90):.1f} ms, max {max(lat):.1f} ms")

                    # 2. Freed-slot reuse: both clusters full (4 CPUs), one more job waiting.
                    reuse = []
                    dash = {c.name: RayDashboard(c, 10) for c in clusters}
                    for _ in range(5):
                        blockers = [f"blk-{uuid.uuid4().hex[:8]}" for _ in range(4)]
                        for i, b in enumerate(blockers):
                            await submit({"submission_id": b, "entrypoint": f"/bin/sleep {1.5 + 0.5 * i}",
                                          "resource_requirements": {"CPU": 1}})
                        await ev.wait_for(lambda: all("RUNNING" in ev.states(b) for b in blockers), 60)
                        waiter = f"wait-{uuid.uuid4().hex[:8]}"
                        await submit({"submission_id": waiter, "entrypoint": "/bin/true",
                                      "resource_requirements": {"CPU": 1}})
                        await ev.wait_final(blockers + [waiter], 60)
                        ends = []
                        for b in blockers:
                            cluster = ev.of(b)[-1]["cluster"]
                            ends.append((await dash[cluster].job(b))["end_time"] / 1000)
                        waiter_cluster = ev.of(waiter)[-1]["cluster"]
                        started = (await dash[waiter_cluster].job(waiter))["start_time"] / 1000
                        reuse.append(started - min(ends))
                    for d in dash.values():
                        await d.close()
                    print(f"freed slot reused (first blocker's end on Ray -> waiting job submitted to Ray, n={len(reuse)}): "
                          f"median {statistics.median(reuse):.2f} s, max {max(reuse):.2f} s "
                          f"(Ray's own snapshot refreshes every 5 s)")
    finally:
        for h in heads:
            await asyncio.to_thread(h.stop)


if __name__ == "__main__":
    asyncio.run(main())
