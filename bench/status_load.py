"""Does serving people slow dispatch? Publish-to-POST latency of the daemon, idle, and again
while a second process holds many event streams open on the status service and fetches a large
log through it, over and over. Target: the loaded p99 within 1.5x of the idle p99.

    .venv/bin/python bench/status_load.py [--n 300] [--streams 500] [--log-mb 200] [--fetchers 1]

The daemon runs in this process with its status service as a child process (its default); the
simulated dashboards run in a process of their own, every job's logs `--log-mb` MB there. The
load comes from a third process (`load` below): `--streams` open SSE streams on /api/v1/events,
and `--fetchers` loops each fetching the same job's logs through /api/v1/jobs/<id>/logs.
Latency: as bench/latency_fake.py, one job at a time, from just before the publish to the
moment a simulated dashboard receives the POST. The idle and loaded rounds alternate
(`--rounds`), and the medians of their p50 and p99 are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import aiohttp

from common import machine, pct, quiet_logs, sim_fleet
from latency_fake import one_at_a_time
from support import make_settings, running_daemon

LOAD = r'''
import asyncio, os, sys, time
import aiohttp

os.nice(10)  # the clients stand for people on other hosts: on this one, they come after rmcs

async def stream(http, url, opened):
    async with http.get(url + "/api/v1/events?pattern=%23") as r:
        opened.append(r.status)
        async for _ in r.content.iter_any():
            pass

async def fetch(http, url, job, fetched):
    while True:
        t0 = time.monotonic()
        async with http.get(url + f"/api/v1/jobs/{job}/logs") as r:
            size = 0
            async for chunk in r.content.iter_chunked(1 << 20):
                size += len(chunk)
        fetched.append((r.status, size, time.monotonic() - t0))

async def main(url, streams, fetchers, job):
    opened, fetched = [], []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task(stream(http, url, opened)) for _ in range(streams)]
        tasks += [asyncio.create_task(fetch(http, url, job, fetched)) for _ in range(fetchers)]
        while len(opened) < streams:
            await asyncio.sleep(0.1)
        print(f"ready {len(opened)} streams", flush=True)
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()  # until the benchmark closes our input
        ok = [f for f in fetched if f[0] == 200]
        print(f"done: {len(ok)} log fetches of {ok[0][1] / 1e6 if ok else 0:.0f} MB "
              f"({statistics.median(f[2] for f in ok) if ok else 0:.2f} s each), "
              f"other answers {sorted({f[0] for f in fetched if f[0] != 200})}", flush=True)
        for t in tasks:
            t.cancel()

import statistics
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
'''


async def start_load(url: str, streams: int, fetchers: int, job: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", LOAD, url, str(streams), str(fetchers), job],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
    if not line.startswith(b"ready"):
        raise RuntimeError(f"load process did not start: {line!r}")
    return proc


async def stop_load(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    out = await asyncio.to_thread(proc.stdout.read)
    await asyncio.to_thread(proc.wait, 30)
    return out.decode().strip()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="jobs per round")
    p.add_argument("--rounds", type=int, default=2, help="idle and loaded rounds, alternated")
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--fetchers", type=int, default=1, help="processes' loops fetching the large log")
    p.add_argument("--log-mb", type=float, default=200)
    a = p.parse_args()
    quiet_logs()
    print(f"machine: {machine()}")
    idle: list[list[float]] = []
    loaded: list[list[float]] = []
    async with sim_fleet(a.clusters, servers=2, cpus=64, duration=0.05, report_submissions=True,
                         log_bytes=int(a.log_mb * 1e6)) as fleet:
        with tempfile.TemporaryDirectory() as tmp:
            s = make_settings(Path(tmp), probe_interval_s=1.0, track_interval_s=0.5, status_service="process")
            url = f"http://{s.http_addr}"
            async with running_daemon(s, fleet.configs()):
                await asyncio.sleep(1.5)  # first probes
                conn = await aio_pika.connect(s.amqp_url)
                async with conn, aiohttp.ClientSession() as http:
                    ch = await conn.channel(publisher_confirms=True)
                    ex = await ch.get_exchange(s.intake_exchange)
                    await one_at_a_time(fleet, ex, s.intake_routing_key, 1, "biglog")
                    big = await _first_job(http, url)
                    for r in range(1, a.rounds + 1):
                        idle.append(await one_at_a_time(fleet, ex, s.intake_routing_key, a.n, f"idle{r}"))
                        print(f"[{r}] idle: {_summary(idle[-1])}")
                        load = await start_load(url, a.streams, a.fetchers, big)
                        t0 = time.monotonic()
                        loaded.append(await one_at_a_time(fleet, ex, s.intake_routing_key, a.n, f"load{r}"))
                        took = time.monotonic() - t0
                        print(f"[{r}] {a.streams} streams and {a.fetchers} loop(s) fetching a {a.log_mb:g} MB log: "
                              f"{_summary(loaded[-1])}; load over {took:.1f} s: {await stop_load(load)}")
    p99_idle = statistics.median(pct(x, 99) for x in idle)
    p99_load = statistics.median(pct(x, 99) for x in loaded)
    p50_idle = statistics.median(pct(x, 50) for x in idle)
    p50_load = statistics.median(pct(x, 50) for x in loaded)
    print(f"publish -> POST, medians of {a.rounds} rounds: idle p50 {p50_idle:.2f} ms, p99 {p99_idle:.2f} ms; "
          f"under load p50 {p50_load:.2f} ms, p99 {p99_load:.2f} ms; p99 ratio {p99_load / p99_idle:.2f} "
          f"(target <= 1.5)")


async def _first_job(http: aiohttp.ClientSession, url: str) -> str:
    """The id of the job whose logs the load fetches (the first one run), once the status
    service has it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.get(url + "/api/v1/jobs") as r:
            jobs = (await r.json())["jobs"] if r.status == 200 else []
        done = [j for j in jobs if j["submission_id"].startswith("biglog") and j["cluster"]]
        if done:
            return str(done[0]["submission_id"])
        await asyncio.sleep(0.2)
    raise RuntimeError("the first job never reached the status service")


def _summary(lat: list[float]) -> str:
    return f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms"


if __name__ == "__main__":
    asyncio.run(main())
