"""Dispatch throughput, queue to `POST /api/jobs/`, against simulated clusters with room, and
the same against a bare loop (aio-pika consume, one aiohttp POST each, ack; no scheduling),
in the same run, on the same fleet, with the same prefetch.

    .venv/bin/python bench/throughput.py                      # 100 clusters (target 1)
    .venv/bin/python bench/throughput.py --probe-clusters 1000  # also with 1,000 probed (target 3)
    .venv/bin/python bench/throughput.py --probe-clusters 1000 --rounds 3  # alternated, medians
    .venv/bin/python bench/throughput.py --probe-clusters 1000 --control-load 0.45  # and a control

The queue is filled first (`--jobs` messages), then the consumer starts; the rate is taken
between the 10th and 90th percentile of the POSTs the fleet received (ramp-up and tail cut).
Every simulated cluster answers `/api/cluster_status` after 20 ms. With `--probe-clusters N`
a further daemon run has N such clusters (all with room), to show what probing and
placing over that many costs dispatch. With `--control-load SHARE` a further run has the
first fleet again beside a busy loop that keeps SHARE of a core busy and does nothing else:
on two cores, what any extra load costs the daemon, to compare with what probing costs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson

from common import (SimFleet, Cores, bare_post, broker_pid, cpu_load, machine, publish_fast, quiet_logs, sim_fleet,
                    state_url, sustained_rate)
from scheduler_daemon.broker import declare
from scheduler_daemon.daemon import Daemon
from scheduler_daemon.settings import ClusterConfig
from support import AMQP_URL, delete_topology, make_settings


SETTINGS: dict[str, int] = {}  # daemon settings from the command line (--log-tail-bytes)


def bodies(n: int, prefix: str) -> list[bytes]:
    return [orjson.dumps({"submission_id": f"{prefix}-{i}", "entrypoint": "/bin/sleep 0.2"}) for i in range(n)]


async def wait_posts(fleet: SimFleet, n: int, timeout: float) -> int:
    """Wait until the fleet has had `n` POSTs in all (polling a count, which costs the process
    under test next to nothing); returns how many it has had."""
    deadline = time.monotonic() + timeout
    while (count := await fleet.submissions()) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return count


async def run_bare(fleet: SimFleet, n: int, prefetch: int) -> float:
    """aio-pika consume, one POST per message to the next cluster in turn, ack."""
    queue_name = f"bench.bare.{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=prefetch)
        q = await ch.declare_queue(queue_name, durable=True, arguments={"x-max-priority": 10})
        await publish_fast(AMQP_URL, "", queue_name, bodies(n, f"bare-{uuid.uuid4().hex[:6]}"))
        urls = itertools.cycle(list(fleet.urls.values()))
        done = asyncio.Event()
        count = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal count
                await bare_post(http, next(urls), message.body)
                await message.ack()
                count += 1
                if count >= n:
                    done.set()

            t0 = time.time()
            cores = Cores(**{"bare loop": os.getpid()}, fleet=fleet.proc.pid, broker=broker_pid())
            tag = await q.consume(on)
            await asyncio.wait_for(done.wait(), 600)
            print("  " + cores.line(n))
            await q.cancel(tag)
        times = [t for t in await fleet.submission_times() if t >= t0]
        await q.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
    return sustained_rate(times)


async def run_rmcs(fleet: SimFleet, n: int, window: int, clusters: tuple[ClusterConfig, ...] | None = None,
                   settle_s: float = 2.0, load: int | None = None, state: str = "sqlite") -> float:
    """The daemon's sustained rate; also prints where the machine's CPU went during the run."""
    async with state_url(state) as where:
        with tempfile.TemporaryDirectory(prefix="rmcs-bench-") as tmp:
            # The status service in its own process, as the daemon runs by default.
            s = make_settings(Path(tmp), window_size=window, probe_interval_s=1.0, track_interval_s=0.5,
                              status_service="process", **where, **SETTINGS)
            await declare(s)
            daemon: Daemon | None = None
            try:
                await publish_fast(s.amqp_url, s.intake_exchange, s.intake_routing_key,
                                   bodies(n, f"rmcs-{uuid.uuid4().hex[:6]}"))
                # The consumer waits for the first probes; give them time before the clock starts.
                daemon = Daemon(s, clusters or fleet.configs())
                before = await fleet.submissions()
                t0 = time.time()
                await daemon.start()
                await asyncio.sleep(settle_s)  # the probe process, if any, is up by now
                child = daemon.prober.child.pid if daemon.prober.child is not None else None
                status = daemon.service_process.process if daemon.service_process is not None else None
                cores = Cores(daemon=os.getpid(), **{"probe process": child},
                              **{"status service": status.pid if status is not None else None},
                              fleet=fleet.proc.pid, broker=broker_pid(),
                              **({"load": load} if load is not None else {}))
                c0 = await fleet.submissions()
                c1 = await wait_posts(fleet, before + n, 600)
                print("  " + cores.line(c1 - c0))
                # Sustained means the rest of each job's work kept up too: its events confirmed.
                print(f"  events confirmed by the last POST: {daemon.publisher.published:,} "
                      f"({daemon.publisher.published / max(1, c1 - before):.1f} per job); "
                      f"{daemon.publisher.unconfirmed:,} waiting in the outbox")
                times = [t for t in await fleet.submission_times() if t >= t0]
                if len(times) < n:
                    print(f"  (only {len(times)} of {n} dispatched within the time limit)")
                return sustained_rate(times)
            finally:
                if daemon is not None:
                    await daemon.stop()
                await delete_topology(s)


def change(rate: float, against: float) -> str:
    drop = 100 * (1 - rate / against)
    return f"{drop:.1f}% below" if drop >= 0 else f"{-drop:.1f}% above"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--log-tail-bytes", type=int, default=None,
                   help="the daemon's log_tail_bytes (default: its own, 65536; 0: keep no log tails)")
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--window", type=int, default=64, help="daemon window_size = the bare loop's prefetch")
    p.add_argument("--probe-clusters", type=int, default=0, help="also run with this many clusters probed")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the runs this many times and compare medians (runs vary by 10-20%%)")
    p.add_argument("--skip-bare", action="store_true", help="only the daemon (to profile it)")
    p.add_argument("--control-load", type=float, default=0.0, metavar="SHARE",
                   help="also run the daemon on the first fleet beside a busy loop keeping SHARE of a core "
                        "busy: the CPU the 1,000 clusters' fleet and probe process add to the machine, "
                        "without the probing")
    p.add_argument("--state", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the daemon's journal and status history: SQLite files, or a PostgreSQL database of its own")
    p.add_argument("--history", type=int, default=0,
                   help="past jobs each simulated cluster lists from the start (Ray keeps every job)")
    a = p.parse_args()
    if a.log_tail_bytes is not None:
        SETTINGS["log_tail_bytes"] = a.log_tail_bytes
    quiet_logs()
    print(f"machine: {machine()}")
    print(f"{a.jobs} jobs, {a.clusters} simulated clusters with room, window/prefetch {a.window}, "
          f"{a.rounds} round(s)")
    bare: list[float] = []
    few: list[float] = []
    many_: list[float] = []
    loaded: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        fleet = await stack.enter_async_context(
            sim_fleet(a.clusters, servers=2, cpus=100_000, duration=0.2, status_latency_ms=20, history=a.history))
        # The second fleet idles (unprobed, it costs nothing) while the first is measured.
        many = None if not a.probe_clusters else await stack.enter_async_context(
            sim_fleet(a.probe_clusters, servers=4, name="many", cpus=100_000, duration=0.2, status_latency_ms=20,
                      history=a.history))
        for r in range(1, a.rounds + 1):
            if not a.skip_bare:
                bare.append(await run_bare(fleet, a.jobs, a.window))
                print(f"[{r}] bare loop (consume, POST, ack): {bare[-1]:,.0f} jobs/s")
            few.append(await run_rmcs(fleet, a.jobs, a.window, state=a.state))
            print(f"[{r}] rmcs daemon, {a.clusters} clusters, queue -> POST /api/jobs/: {few[-1]:,.0f} jobs/s"
                  + (f"; ratio to the bare loop {few[-1] / bare[-1]:.2f}" if bare else ""))
            if many is not None:
                many_.append(await run_rmcs(many, a.jobs, a.window))
                print(f"[{r}] rmcs daemon, {a.probe_clusters} clusters probed every second: {many_[-1]:,.0f} jobs/s,"
                      f" {change(many_[-1], few[-1])} the {a.clusters}-cluster run before it")
            if a.control_load:
                with cpu_load(a.control_load) as load:
                    loaded.append(await run_rmcs(fleet, a.jobs, a.window, load=load))
                print(f"[{r}] rmcs daemon, {a.clusters} clusters beside a busy loop of {a.control_load:g} core: "
                      f"{loaded[-1]:,.0f} jobs/s, {change(loaded[-1], few[-1])} the run without it")
    rmcs = statistics.median(few)
    print(f"rmcs daemon, queue -> POST /api/jobs/: {rmcs:,.0f} jobs/s (target >= 1,000 jobs/s)"
          + (f"; ratio to the bare loop ({statistics.median(bare):,.0f} jobs/s) "
             f"{rmcs / statistics.median(bare):.2f} (target >= 0.50)" if bare else "")
          + (" [medians]" if a.rounds > 1 else ""))
    if many_:
        rmcs_many = statistics.median(many_)
        print(f"rmcs daemon with {a.probe_clusters} clusters probed every second: {rmcs_many:,.0f} jobs/s, "
              f"{change(rmcs_many, rmcs)} {a.clusters} clusters (target: at most 10% below)"
              + (" [medians]" if a.rounds > 1 else ""))
    if loaded:
        rmcs_loaded = statistics.median(loaded)
        print(f"rmcs daemon, {a.clusters} clusters beside a busy loop of {a.control_load:g} core: "
              f"{rmcs_loaded:,.0f} jobs/s, {change(rmcs_loaded, rmcs)} without it"
              + (" [medians]" if a.rounds > 1 else ""))

if __name__ == "__main__":
    asyncio.run(main())
