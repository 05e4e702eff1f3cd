"""What the benchmarks share: a fleet of simulated Ray dashboards in a process of its own
(tests/fakeray.py, the simulator the test suite uses too), fast publishing with publisher
confirms in batches, percentiles, and the daemon's log set-up.

The fleet runs in its own process so that the daemon, or the bare loop it is compared
with, has the event loop of its process to itself, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Iterator

import aio_pika
import aiohttp
import orjson
import structlog

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
for _path in (TESTS, ROOT):  # this checkout's code, not whichever the environment has installed
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from scheduler_daemon import logs  # noqa: E402
from scheduler_daemon.settings import ClusterConfig  # noqa: E402


def pct(values: Iterable[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))]


def machine() -> str:
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, load {load:.1f} at start"


@contextlib.asynccontextmanager
async def state_url(kind: str) -> AsyncIterator[dict[str, str]]:
    """Settings for the daemon's state: {} for SQLite (the default, under its state_dir), or
    {"state_url": ...} for a PostgreSQL database of its own, dropped after the run."""
    if kind == "sqlite":
        yield {}
        return
    from pgkit import create_database, database_url, drop_database

    name = await create_database()
    try:
        yield {"state_url": database_url(name)}
    finally:
        await drop_database(name)


def quiet_logs(path: str | Path = "/tmp/rmcs-bench-daemon.log") -> None:
    """The daemon's logging as in production (JSON lines at info), written to a file."""
    logs.configure("info", stream=open(path, "wb"))


@dataclass
class SimFleet:
    """A fleet served by `python tests/fakeray.py` in a child process."""

    proc: subprocess.Popen[bytes]
    urls: dict[str, str]
    stats_urls: list[str]
    # With report_submissions=True: (submission id, wall time) of each POST /api/jobs/ received.
    posts: "asyncio.Queue[tuple[str, float]] | None" = None

    def configs(self, **kw: Any) -> tuple[ClusterConfig, ...]:
        return tuple(ClusterConfig(name, url, **kw) for name, url in self.urls.items())

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with aiohttp.ClientSession() as http:
            for url in self.stats_urls:
                async with http.get(url) as resp:
                    out.update(orjson.loads(await resp.read()))
        return out

    async def submissions(self) -> int:
        """How many POST /api/jobs/ the fleet has had (cheap: for polling during a run)."""
        n = 0
        async with aiohttp.ClientSession() as http:
            for url in self.stats_urls:
                async with http.get(url, params={"only": "submissions"}) as resp:
                    n += orjson.loads(await resp.read())["submissions"]
        return n

    async def submission_times(self) -> list[float]:
        return sorted(t for c in (await self.stats()).values() for t in c["submission_times"])


@contextlib.asynccontextmanager
async def sim_fleet(clusters: int, *, servers: int = 1, name: str = "sim", **opts: Any) -> AsyncIterator[SimFleet]:
    """Start a fleet process; options are fakeray's command-line flags (`latency_ms=20`)."""
    args = [sys.executable, str(TESTS / "fakeray.py"), "--clusters", str(clusters), "--servers", str(servers),
            "--name", name]
    for key, value in opts.items():
        if value is True:
            args.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            raise RuntimeError(f"fleet process exited: {proc.wait()}")
        info = orjson.loads(line)
        posts = _follow_posts(proc) if opts.get("report_submissions") else None
        yield SimFleet(proc, info["urls"], info["stats"], posts)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the fleet stops at end of input
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _follow_posts(proc: subprocess.Popen[bytes]) -> "asyncio.Queue[tuple[str, float]]":
    """The fleet's report lines, read on a thread of their own, into a queue of this loop."""
    loop = asyncio.get_running_loop()
    posts: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = orjson.loads(raw)
            loop.call_soon_threadsafe(posts.put_nowait, (line["posted"], line["t"]))

    threading.Thread(target=read, name="fleet-posts", daemon=True).start()
    return posts


async def publish_fast(amqp_url: str, exchange: str, routing_key: str, bodies: Iterable[bytes], *,
                       batch: int = 1000, priority: int | None = None) -> int:
    """Publish persistent messages with publisher confirms, `batch` of them in flight at once."""
    conn = await aio_pika.connect(amqp_url)
    n = 0
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(exchange) if exchange else ch.default_exchange
        pending: list[Any] = []
        for body in bodies:
            pending.append(ex.publish(aio_pika.Message(body, content_type="application/json", priority=priority,
                                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                      routing_key=routing_key))
            if len(pending) >= batch:
                await asyncio.gather(*pending)
                n += len(pending)
                pending = []
        if pending:
            await asyncio.gather(*pending)
            n += len(pending)
    return n


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process (all its threads) so far; 0 if there is none."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    """The local RabbitMQ's Erlang VM (`beam.smp` running rabbit), if there is one."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "beam.smp" \
                    and b"rabbit" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    return None


def machine_busy_seconds() -> float:
    """CPU time spent busy by the whole machine so far, all cores together (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle and iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def bare_post(http: aiohttp.ClientSession, cluster_url: str, message_body: bytes) -> None:
    """What a bare loop does for one message, no scheduling: POST the job to a cluster as is."""
    job = orjson.loads(message_body)
    body = {"entrypoint": job["entrypoint"], "submission_id": job["submission_id"],
            "entrypoint_num_cpus": 1.0, "metadata": {"rmcs_submission_id": job["submission_id"]}}
    async with http.post(cluster_url + "/api/jobs/", data=orjson.dumps(body),
                         headers={"Content-Type": "application/json"}) as resp:
        await resp.read()


class Cores:
    """Where the machine's CPU goes during part of a run: each named process (a pid, or None
    for one that is not there), the whole machine, and each process's CPU per job."""

    def __init__(self, **pids: int | None) -> None:
        self.pids = pids
        self.start = self._read()

    def _read(self) -> tuple[float, dict[str, float]]:
        return time.monotonic(), {**{k: cpu_seconds(p) for k, p in self.pids.items()},
                                  "machine": machine_busy_seconds()}

    def line(self, jobs: int) -> str:
        (t0, a), (t1, b) = self.start, self._read()
        jobs = max(1, jobs)
        return (f"cores busy over {jobs} jobs in {t1 - t0:.1f} s (of {os.cpu_count()}): "
                + ", ".join(f"{k} {(b[k] - a[k]) / (t1 - t0):.2f}" for k in a)
                + "; CPU per job: " + ", ".join(f"{k} {1000 * (b[k] - a[k]) / jobs:.2f} ms"
                                                for k in self.pids if self.pids[k] is not None))


BUSY_LOOP = """
import sys, time
share = float(sys.argv[1])
while True:  # each second, busy in bursts of 1 ms until `share` of it is spent, asleep between
    t0, c0 = time.monotonic(), time.process_time()
    while (elapsed := time.monotonic() - t0) < 1.0:
        if time.process_time() - c0 < share * elapsed:
            t = time.perf_counter()
            while time.perf_counter() - t < 0.001:
                pass
        else:
            time.sleep(0.001)
"""


@contextlib.contextmanager
def cpu_load(share: float) -> Iterator[int]:
    """A process that keeps `share` of a core busy and does nothing else; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(share)])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def sustained_rate(times: list[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Events per second between the `lo` and `hi` fractions of the run (ramp-up and tail cut)."""
    times = sorted(times)
    if len(times) < 10:
        return float("nan")
    a, b = times[int(lo * (len(times) - 1))], times[int(hi * (len(times) - 1))]
    return (hi - lo) * (len(times) - 1) / (b - a) if b > a else float("inf")
