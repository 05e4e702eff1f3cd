"""Dispatch latency while the HTTP API is under load: many event streams and large logs.

    .venv/bin/python bench/api_load.py [--n 200] [--streams 500] [--log-workers 20] [--log-mb 8]

The real RabbitMQ, simulated Ray dashboards in a process of their own (tests/fakeray.py; one
job's log, the one the readers fetch, is `--log-mb` MB, the others a line: with every log that
big, the status service would read each one whole at its job's end to keep its tail, and the
"idle" figure would not be idle), the daemon in this process with failover on (so its leadership loop
runs and would step down on a stalled loop) and its status service in a process of its own, as
in production. The load comes from a client process of its own (this script with `--client`):
`--streams` event streams open and read (it stands for clients on other machines, so it runs
at a lower CPU priority here), and `--log-workers` loops each fetching a job's log
through the API again and again (the API answers its last `max_log_bytes`, reading the whole
log from the dashboard in bounded memory). Publish-to-POST latency is measured one job at a time
(as bench/latency_fake.py), first idle, then under the load. Target: p50 and p99 under load
within 2x of idle, and no leader step-down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import aiohttp
import orjson

from common import machine, pct, quiet_logs, sim_fleet
from latency_fake import one_at_a_time
from support import make_settings, running_daemon

# The clients stand for people on other machines: on this one they run below everything of rmcs.
CLIENT_NICE = 10
BIG_LOG_JOB = "logs-of-this-one"


async def client(a: argparse.Namespace) -> None:
    """The load: streams and log readers until standard input closes; then one line of figures."""
    base = f"http://{a.http_addr}"
    stats = {"events": 0, "streams_open": 0, "refused": 0, "logs": 0, "log_bytes": 0, "log_errors": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(),
                                          lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=None)) as http:
        async def stream() -> None:
            async with http.get(f"{base}/api/v1/events") as resp:
                if resp.status != 200:
                    stats["refused"] += 1
                    return
                stats["streams_open"] += 1
                async for line in resp.content:
                    if line.startswith(b"event:"):
                        stats["events"] += 1

        async def logs() -> None:
            while not stop.is_set():
                async with http.get(f"{base}/api/v1/jobs/{a.job}/logs") as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        stats["logs"] += 1
                        stats["log_bytes"] += len(body)
                    else:
                        stats["log_errors"] += 1
                        await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(stream()) for _ in range(a.streams)]
        tasks += [asyncio.create_task(logs()) for _ in range(a.log_workers)]
        while stats["streams_open"] + stats["refused"] < a.streams and not stop.is_set():
            await asyncio.sleep(0.1)
        print(orjson.dumps({"ready": True}).decode(), flush=True)
        t0 = time.monotonic()
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(orjson.dumps({**stats, "seconds": time.monotonic() - t0}).decode(), flush=True)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="jobs measured, idle and again under load")
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--log-workers", type=int, default=20)
    p.add_argument("--log-mb", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=1, help="idle and loaded runs, alternated; medians compared")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--http-addr", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.client:
        await client(a)
        return
    quiet_logs()
    print(f"machine: {machine()}")
    async with sim_fleet(a.clusters, servers=2, cpus=64, duration=0.05, report_submissions=True,
                         log_bytes=int(a.log_mb * 1e6), log_bytes_prefix=BIG_LOG_JOB) as fleet:
        with tempfile.TemporaryDirectory() as tmp:
            s = make_settings(Path(tmp), probe_interval_s=1.0, track_interval_s=0.5, status_service="process",
                              failover=True, max_event_streams=a.streams + 100, api_rate_limit=0.0)
            idle: list[list[float]] = []
            busy: list[list[float]] = []
            figures: dict[str, object] = {}
            async with running_daemon(s, fleet.configs()) as daemon:
                await asyncio.sleep(2.0)  # leadership, first probes, the status service up
                conn = await aio_pika.connect(s.amqp_url)
                async with conn:
                    ch = await conn.channel(publisher_confirms=True)
                    ex = await ch.get_exchange(s.intake_exchange)
                    await one_at_a_time(fleet, ex, s.intake_routing_key, 10, "warm")
                    job = BIG_LOG_JOB
                    await ex.publish(aio_pika.Message(orjson.dumps({"submission_id": job,
                                                                    "entrypoint": "/bin/true"})),
                                     routing_key=s.intake_routing_key)
                    await asyncio.sleep(2.0)
                    for r in range(1, a.rounds + 1):  # idle and loaded alternated
                        idle.append(await one_at_a_time(fleet, ex, s.intake_routing_key, a.n, f"idle{r}"))
                        load = subprocess.Popen([sys.executable, __file__, "--client", "--http-addr", s.http_addr,
                                                 "--job", job, "--streams", str(a.streams),
                                                 "--log-workers", str(a.log_workers)],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                preexec_fn=lambda: os.nice(CLIENT_NICE))
                        assert load.stdout is not None and load.stdin is not None
                        await asyncio.to_thread(load.stdout.readline)  # every stream open
                        busy.append(await one_at_a_time(fleet, ex, s.intake_routing_key, a.n, f"busy{r}"))
                        load.stdin.close()
                        figures = orjson.loads(await asyncio.to_thread(load.stdout.readline) or b"{}")
                        load.wait(30)
                        print(f"[{r}] idle p50 {pct(idle[-1], 50):.2f} ms, p99 {pct(idle[-1], 99):.2f} ms; "
                              f"under load p50 {pct(busy[-1], 50):.2f} ms, p99 {pct(busy[-1], 99):.2f} ms", flush=True)
                lost = daemon.lost_leadership
    i50, i99 = (statistics.median(pct(x, q) for x in idle) for q in (50, 99))
    b50, b99 = (statistics.median(pct(x, q) for x in busy) for q in (50, 99))
    print(f"idle: publish -> POST, n={a.n} a round, medians of {a.rounds}: p50 {i50:.2f} ms, p99 {i99:.2f} ms")
    print(f"under load ({figures.get('streams_open')} event streams open, {figures.get('refused')} refused; "
          f"{a.log_workers} log readers: {figures.get('logs')} logs of {a.log_mb:g} MB read through the API, "
          f"{figures.get('log_bytes', 0) / 1e6:.0f} MB answered, {figures.get('log_errors')} errors; "
          f"{figures.get('events')} events streamed; the last round): p50 {b50:.2f} ms, p99 {b99:.2f} ms")
    print(f"ratio under load / idle: p50 {b50 / i50:.2f}x, p99 {b99 / i99:.2f}x "
          f"(targets: within 2x with 20 log readers; p99 within 1.5x with 500 streams and one 200 MB log)")
    print(f"leader step-down: {'yes' if lost else 'none'}")


if __name__ == "__main__":
    asyncio.run(main())
