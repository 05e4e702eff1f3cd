"""An in-process fake Ray 2.60 dashboard: an aiohttp app speaking the Jobs REST API and
`/api/cluster_status` in the shapes real Ray uses (see /work/shared/FIELD-NOTES.md).

For policy, scale and fault tests that real clusters cannot show cheaply:

- `FakeCluster`: one cluster's state, clock-driven. A job is PENDING until its entrypoint
  resources fit on a node, then (after `start_delay_s`) RUNNING for its duration, then
  SUCCEEDED (FAILED if the entrypoint contains "fail"). Durations: `duration_of(entrypoint)`,
  by default the N of "sleep N", else `duration_s`. The capacity snapshot is live, or refreshed
  only every `snapshot_every_s` (Ray's autoscaler refreshes every 5 s). It records what the
  tests check: requests per route, submissions, the most resources ever demanded at once by
  unfinished jobs (`max_demand`, which exceeds the node totals when a scheduler overcommits and
  jobs queue inside Ray) and how long a freed slot stayed idle before a new submission took it
  (`reuse_delays`, `idle_slot_delays`).
- Fault knobs, settable at run time: `mode` "ok" | "dead" | "hang" | "error500" | "garbage",
  and `latency_s`. "dead" on a cluster with a port of its own stops its server (connection
  refused); use `await cluster.set_mode(...)` for it. On a shared server "dead" resets each
  connection instead.
- `FakeServer`: one aiohttp app on 127.0.0.1 port 0 serving one cluster at the root, or many
  under `/c/<name>` prefixes. `fake_fleet(n, ...)` starts n clusters and closes them cleanly,
  each on its own port, all on one (`shared=True`) or spread over a few (`servers=k`).
- Simulation knobs for the benchmarks (bench/): nodes of different sizes per cluster
  (`make_nodes`, `start_fleet(nodes_of=...)`), answer latency (`latency_s`), a compressed clock
  (`ScaledClock(scale)`: simulated seconds pass `scale` times faster than wall seconds, so a
  "sleep 60" job ends after 0.6 s at scale 100), and `GET /_sim/stats` on every server, for a
  fleet run in a process of its own (`python tests/fakeray.py --clusters N ...`, see `serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import signal
import sys
import re
import ssl
import time
import traceback
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from scheduler_daemon.clusters import ray_name
from scheduler_daemon.settings import ClusterConfig

RAY_VERSION = "2.60.0"
GIB = 1024 ** 3
MODES = ("ok", "dead", "hang", "error500", "garbage")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_NODE = {"CPU": 2.0, "memory": 4.0 * GIB, "object_store_memory": 1.0 * GIB}
_SLEEP = re.compile(r"\bsleep\s+(\d+(?:\.\d*)?)")
_NUMBER_FIELDS = {"entrypoint_num_cpus": "CPU", "entrypoint_num_gpus": "GPU", "entrypoint_memory": "memory"}
_BODY_FIELDS = {"entrypoint", "submission_id", "job_id", "runtime_env", "metadata", "entrypoint_resources",
                *_NUMBER_FIELDS}
_WEB_SERVERS: "weakref.WeakSet[Any]" = weakref.WeakSet()  # the fakes' aiohttp servers
_FAKE_TASKS: "weakref.WeakSet[asyncio.Task[Any]]" = weakref.WeakSet()  # their request tasks
PENDING_MESSAGE = ("Job has not started yet. It may be waiting for resources (CPUs, GPUs, memory, custom "
                   "resources) to become available. It may be waiting for the runtime environment to be set up.")


class ScaledClock:
    """Simulated unix time that runs `scale` times faster than the wall clock from the moment
    it is made. Give one to every cluster of a fleet so their snapshots and job times agree."""

    def __init__(self, scale: float = 1.0, wall: Callable[[], float] = time.time) -> None:
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.scale = scale
        self._wall = wall
        self.origin = wall()

    def __call__(self) -> float:
        return self.origin + (self._wall() - self.origin) * self.scale

    def wall_seconds(self, simulated: float) -> float:
        return simulated / self.scale


def node_id(seed: str) -> str:
    """A node id shaped like Ray's (56 hex characters), stable for a given seed."""
    return (uuid.uuid5(uuid.NAMESPACE_URL, seed).hex * 2)[:56]


def make_nodes(cluster: str, sizes: list[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Nodes of the given sizes (`{"CPU": 8, "GPU": 2}`; memory in GiB, like job requests),
    with Ray-shaped ids and Ray's default memory and object store when not given."""
    out: dict[str, dict[str, float]] = {}
    for i, size in enumerate(sizes):
        res = {k: float(v) * (GIB if k in ("memory", "object_store_memory") else 1) for k, v in size.items()}
        res.setdefault("memory", 4.0 * GIB)
        res.setdefault("object_store_memory", 1.0 * GIB)
        out[node_id(f"{cluster}/{i}")] = res
    return out


def sleep_rule(entrypoint: str) -> float | None:
    """Duration of "/bin/sleep N" (or "... sleep N ..."); None for other entrypoints."""
    m = _SLEEP.search(entrypoint)
    return float(m.group(1)) if m else None


class BadRequest(ValueError):
    pass


@dataclass
class FakeJob:
    submission_id: str
    entrypoint: str
    need: dict[str, float]            # raw Ray resource names
    metadata: dict[str, str]
    runtime_env: dict[str, Any]
    submitted_at: float
    duration: float
    fail: bool
    node_id: str | None = None
    reserved_at: float | None = None  # resources taken (Ray scheduled the supervisor)
    running_at: float | None = None
    end_at: float | None = None       # planned end, while active
    ended_at: float | None = None
    final: str | None = None          # SUCCEEDED / FAILED / STOPPED once ended
    stop_requested: bool = False
    release_at: float | None = None  # stopped, its resources still held until then (`stop_lag_s`)

    def status(self, now: float) -> str:
        if self.final is not None:
            return self.final
        if self.running_at is not None and now >= self.running_at:
            return "RUNNING"
        return "PENDING"


@dataclass
class Snapshot:
    time: float
    used: dict[str, dict[str, float]]  # node -> raw resource -> used
    waiting: list[dict[str, float]]


_STREAM_CHUNK = 1 << 20  # a larger answer goes out in pieces of this size


@functools.lru_cache(maxsize=2)
def big_log_body(size: int) -> bytes:
    """A logs answer of `size` bytes of log lines, encoded once and shared by every cluster."""
    line = "step 123456: loss 0.123456 accuracy 0.987654 (a long line of training output)\n"
    return orjson.dumps({"logs": (line * (size // len(line) + 1))[:size]})


class FakeCluster:
    """One fake Ray cluster: nodes, jobs, snapshot, fault knobs and records. Time comes from
    `clock` (wall seconds, like Ray's `clusterStatus.time`)."""

    def __init__(self, name: str, nodes: Mapping[str, Mapping[str, float]] | None = None, *,
                 duration_s: float = 0.5, duration_of: Callable[[str], float | None] = sleep_rule,
                 start_delay_s: float = 0.0, snapshot_every_s: float | None = None,
                 clock: Callable[[], float] = time.time, latency_s: float = 0.0,
                 status_latency_s: float = 0.0, stop_lag_s: float = 0.0) -> None:
        self.name = name
        if nodes is None:
            nodes = {uuid.uuid4().hex + uuid.uuid4().hex[:24]: DEFAULT_NODE}
        self.nodes = {nid: {k: float(v) for k, v in res.items()} for nid, res in nodes.items()}
        self.duration_s = duration_s
        self.duration_of = duration_of
        self.start_delay_s = start_delay_s
        self.snapshot_every_s = snapshot_every_s
        self.clock = clock
        self.latency_s = latency_s  # every answer waits this long (wall seconds)
        self.status_latency_s = status_latency_s  # and /api/cluster_status this much more
        # A stopped job's status says STOPPED at once; its resources come back this much later
        # (real Ray reports the stop before the worker is gone).
        self.stop_lag_s = stop_lag_s
        # Faults for the next job submissions, one popped per POST /api/jobs/:
        # "no_agent" (500, job not created), "refuse" (400), "hang_after_create", "created_then_504".
        self.submit_faults: list[str] = []
        self.log_bytes = 0  # > 0: every started job's logs are this many bytes (big_log_body)
        self.log_bytes_prefix = ""  # only the jobs whose submission id starts with this
        self.garbage_body = b"<html><body>502 Bad Gateway</body></html>"
        self._mode = "ok"
        self._release = asyncio.Event()
        self.jobs: dict[str, FakeJob] = {}
        self.packages: dict[str, bytes] = {}  # gcs://<name> uploads (PUT /api/packages/gcs/<name>)
        self._waiting: list[FakeJob] = []   # PENDING without resources, FIFO
        self._active: list[FakeJob] = []    # holding resources
        self._freed: list[float] = []       # times slots were freed and not yet reused
        self.server: FakeServer | None = None
        self.url = ""
        # Records for the tests.
        self.requests: Counter[str] = Counter()
        self.submissions: list[tuple[float, str]] = []
        self.max_demand: dict[str, float] = {}
        self.max_demand_jobs: dict[str, tuple[float | None, list[tuple[Any, ...]]]] = {}
        self.max_reserved: dict[str, float] = {}
        self.reuse_delays: list[float] = []
        self.snapshots_taken = 0
        now = clock()
        self.started_at = now
        self._snap = self._take_snapshot(now)
        self._next_snap = now + snapshot_every_s if snapshot_every_s else math.inf

    # ---- knobs ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        """Set a fault mode synchronously. "dead" here only resets connections; for a refused
        connection on a cluster with its own port, `await set_mode("dead")`."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._mode = mode
        self._release.set()  # hung requests look at the mode again
        self._release = asyncio.Event()

    async def set_mode(self, mode: str) -> None:
        """Set a fault mode; "dead" stops a server of its own (connection refused) and leaving
        "dead" starts it again on the same port."""
        self.mode = mode
        server = self.server
        if server is None or len(server.clusters) != 1:
            return
        if mode == "dead" and server.running:
            await server.stop()
        elif mode != "dead" and not server.running:
            await server.start()

    def config(self, **kw: Any) -> ClusterConfig:
        return ClusterConfig(self.name, self.url, **kw)

    # ---- the clock-driven model --------------------------------------------------------

    def advance(self, now: float | None = None) -> float:
        """Apply every job end and snapshot refresh due by `now`, in time order."""
        now = self.clock() if now is None else now
        while True:
            t_end = min(min((j.end_at for j in self._active if j.end_at is not None), default=math.inf),
                        min((j.release_at for j in self._active if j.release_at is not None), default=math.inf))
            t_snap = self._next_snap
            if min(t_end, t_snap) > now:
                break
            if t_end <= t_snap:
                for job in [j for j in self._active if j.end_at == t_end]:
                    self._end(job, "FAILED" if job.fail else "SUCCEEDED", t_end)
                for job in [j for j in self._active if j.release_at == t_end]:
                    self._active.remove(job)
                    job.release_at = None
                self._start_waiting(t_end)
            else:
                assert self.snapshot_every_s
                self._snap = self._take_snapshot(t_snap)
                self._next_snap = t_snap + self.snapshot_every_s
                if t_end > now and self._next_snap <= now:  # idle: skip to the last refresh due
                    skip = math.floor((now - self._next_snap) / self.snapshot_every_s)
                    self._next_snap += skip * self.snapshot_every_s
        return now

    def _used(self) -> dict[str, dict[str, float]]:
        used: dict[str, dict[str, float]] = {nid: {} for nid in self.nodes}
        for job in self._active:
            assert job.node_id is not None
            for res, amount in job.need.items():
                used[job.node_id][res] = used[job.node_id].get(res, 0.0) + amount
        return used

    def _fit(self, job: FakeJob) -> str | None:
        used = self._used()
        for nid, total in self.nodes.items():
            if all(amount <= total.get(res, 0.0) - used[nid].get(res, 0.0) + 1e-9
                   for res, amount in job.need.items()):
                return nid
        return None

    def _start_waiting(self, now: float) -> None:
        for job in list(self._waiting):  # FIFO, but a small job may pass a big one
            node = self._fit(job)
            if node is not None:
                self._waiting.remove(job)
                if self._freed:  # taken from Ray's own queue: not a reuse by the scheduler
                    self._freed.pop(0)
                self._reserve(job, node, now)

    def _reserve(self, job: FakeJob, node: str, now: float) -> None:
        job.node_id, job.reserved_at = node, now
        self._active.append(job)
        if job.stop_requested:
            self._end(job, "STOPPED", now)
            return
        job.running_at = now + self.start_delay_s
        job.end_at = job.running_at + job.duration
        for res, amount in self._used()[node].items():
            self.max_reserved[res] = max(self.max_reserved.get(res, 0.0), amount)

    def _end(self, job: FakeJob, final: str, now: float) -> None:
        job.final, job.ended_at, job.end_at = final, now, None
        if job in self._active:
            self._active.remove(job)
            if final != "STOPPED" or job.running_at is not None:
                self._freed.append(now)
        elif job in self._waiting:
            self._waiting.remove(job)

    def _note_demand(self) -> None:
        demand: dict[str, float] = {}
        for job in (*self._active, *self._waiting):
            for res, amount in job.need.items():
                demand[res] = demand.get(res, 0.0) + amount
        for res, amount in demand.items():
            if amount > self.max_demand.get(res, 0.0):
                self.max_demand[res] = amount
                # What Ray held then: each job's id, node (None: waiting), submitted and started
                # (Ray's clock) and the last snapshot's time, for a test's failure message.
                self.max_demand_jobs[res] = (self._snap.time if self._snap else None, [
                    (j.submission_id, j.node_id, round(j.submitted_at, 3), j.reserved_at and round(j.reserved_at, 3))
                    for j in (*self._active, *self._waiting) if res in j.need])

    def _take_snapshot(self, at: float) -> Snapshot:
        self.snapshots_taken += 1
        return Snapshot(at, self._used(), [dict(j.need) for j in self._waiting])

    def stats(self) -> dict[str, Any]:
        """What a benchmark reads from a fleet in another process (`GET /_sim/stats`)."""
        times = [t for t, _ in self.submissions]
        return {"requests": dict(self.requests), "submissions": len(times),
                "submission_times": times, "in_ray_queue": len(self._waiting),
                "max_demand": self.max_demand, "running": len(self._active)}

    def total(self, resource: str) -> float:
        return sum(n.get(resource, 0.0) for n in self.nodes.values())

    def in_ray_queue(self) -> int:
        return len(self._waiting)

    def idle_slot_delays(self, until: float) -> list[float]:
        """How long each slot freed by a finished job stayed idle until a new submission took
        it (oldest free slot first); slots still free count until `until` (e.g. the last
        submission anywhere: as long as jobs were still waiting to be placed)."""
        return self.reuse_delays + [until - t for t in self._freed if t < until]

    # ---- the Ray API, as plain (status, body) answers ------------------------------------

    def cluster_status(self) -> dict[str, Any]:
        now = self.advance()
        snap = self._snap if self.snapshot_every_s else self._take_snapshot(now)
        by_node: dict[str, dict[str, list[float]]] = {}
        usage: dict[str, list[float]] = {}
        for nid, total in self.nodes.items():
            entry: dict[str, list[float]] = {}
            for res, amount in total.items():
                pair = [snap.used[nid].get(res, 0.0), amount]
                entry[ray_name(res)] = pair
                agg = usage.setdefault(ray_name(res), [0.0, 0.0])
                agg[0] += pair[0]
                agg[1] += pair[1]
            entry["node:127.0.0.1"] = [0.0, 1.0]
            by_node[nid] = entry
        demand: list[list[Any]] = []
        for need in snap.waiting:  # raw names, grouped like Ray's [[shape, count]]
            for item in demand:
                if item[0] == need:
                    item[1] += 1
                    break
            else:
                demand.append([need, 1])
        return {
            "result": True,
            "msg": "Got cluster status.",
            "data": {"clusterStatus": {
                "time": snap.time,
                "monitorPid": 4242,
                "loadMetricsReport": {
                    "usage": usage,
                    "resourceDemand": demand,
                    "pgDemand": [],
                    "requestDemand": [],
                    "nodeTypes": [[{k: v for k, v in n.items()}, 1] for n in self.nodes.values()],
                    "headIp": "127.0.0.1",
                    "usageByNode": by_node,
                },
                "autoscalerReport": {"activeNodes": {"node": len(self.nodes)}, "pendingNodes": [],
                                     "pendingLaunches": {}, "failedNodes": []},
            }},
        }

    def _parse_submit(self, body: Any) -> tuple[str, str, dict[str, float], dict[str, str], dict[str, Any]]:
        if not isinstance(body, dict):
            raise BadRequest("TypeError: JobSubmitRequest() argument after ** must be a mapping")
        unknown = sorted(set(body) - _BODY_FIELDS)
        if unknown:
            raise BadRequest(f"TypeError: JobSubmitRequest.__init__() got an unexpected keyword argument '{unknown[0]}'")
        entrypoint = body.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint:
            raise BadRequest("TypeError: entrypoint must be a string, got " + type(entrypoint).__name__)
        sid = body.get("submission_id") or body.get("job_id") or f"raysubmit_{uuid.uuid4().hex[:16]}"
        if not isinstance(sid, str):
            raise BadRequest("TypeError: submission_id must be a string")
        need: dict[str, float] = {}
        for key, res in _NUMBER_FIELDS.items():
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise BadRequest(f"TypeError: {key} must be a number >= 0, got {value!r}")
            if value:
                need[res] = float(value)
        custom = body.get("entrypoint_resources") or {}
        if not isinstance(custom, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in custom.items()):
            raise BadRequest("TypeError: entrypoint_resources must be a dict of str to number")
        for res in custom:
            if res in ("CPU", "GPU", "memory"):
                raise BadRequest(f"ValueError: Use entrypoint_num_cpus/gpus/memory, not entrypoint_resources['{res}']")
        need.update({k: float(v) for k, v in custom.items() if v})
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise BadRequest("TypeError: metadata must be a dict of str to str")
        runtime_env = body.get("runtime_env") or {}
        if not isinstance(runtime_env, dict):
            raise BadRequest("TypeError: runtime_env must be a dict")
        return entrypoint, sid, need, metadata, runtime_env

    def add_history(self, n: int, entrypoint: str = "python train.py") -> None:
        """`n` jobs that ended before: other users' past jobs, which Ray keeps and lists."""
        now = self.clock()
        for i in range(n):
            sid = f"raysubmit_past{i:06d}"
            self.jobs[sid] = FakeJob(sid, entrypoint, {"CPU": 1.0}, {}, {}, now - 60, 1.0, False,
                                     reserved_at=now - 60, running_at=now - 60, ended_at=now - 59,
                                     final="SUCCEEDED")

    def submit(self, body: Any) -> tuple[int, Any]:
        fault = self.submit_faults.pop(0) if self.submit_faults else None
        if fault == "no_agent":  # what Ray answers when its job agent is not up
            return 500, _traceback("RuntimeError: No available agent to submit job, please try again later.")
        if fault == "refuse":
            return 400, "TypeError: runtime_env is not valid for this cluster"
        try:
            entrypoint, sid, need, metadata, runtime_env = self._parse_submit(body)
        except BadRequest as exc:
            return 400, str(exc)
        now = self.advance()
        if sid in self.jobs:
            return 500, _traceback(f"ValueError: Job with submission_id {sid} already exists. "
                                   "Please use a different submission_id.")
        duration = self.duration_of(entrypoint)
        # As Ray's runtime env agent: a job whose package is not on the cluster fails to set up.
        missing = any(isinstance(uri, str) and uri.startswith("gcs://") and uri[6:] not in self.packages
                      for uri in (runtime_env.get("working_dir"), *(runtime_env.get("py_modules") or ())))
        job = FakeJob(sid, entrypoint, need, dict(metadata), dict(runtime_env), now,
                      self.duration_s if duration is None else duration, "fail" in entrypoint or missing)
        self.jobs[sid] = job
        self.submissions.append((now, sid))
        node = self._fit(job) if not self._waiting else None
        if node is not None:
            if self._freed:
                self.reuse_delays.append(now - self._freed.pop(0))
            self._reserve(job, node, now)
        else:
            self._waiting.append(job)
        self._note_demand()
        if fault == "hang_after_create":  # the job exists, but the answer never comes
            return HANG, None
        if fault == "created_then_504":  # a gateway gave up waiting, after Ray created the job
            return 504, "<html><body><h1>504 Gateway Time-out</h1></body></html>"
        return 200, {"job_id": sid, "submission_id": sid}

    def job_info(self, job: FakeJob, now: float) -> dict[str, Any]:
        status = job.status(now)
        message = {
            "PENDING": PENDING_MESSAGE,
            "RUNNING": "Job is currently running.",
            "SUCCEEDED": "Job finished successfully.",
            "FAILED": "Job entrypoint command failed with exit code 1, last available logs "
                      f"(truncated to 20,000 chars):\n{job.entrypoint}: failed",
            "STOPPED": "Job was intentionally stopped.",
        }[status]
        exit_code = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": -15}.get(status)
        need = job.need
        return {
            "type": "SUBMISSION",
            "job_id": None if status == "PENDING" else f"{abs(hash(job.submission_id)) % 10**8:08x}",
            "submission_id": job.submission_id,
            "driver_info": None,
            "status": status,
            "entrypoint": job.entrypoint,
            "message": message,
            "error_type": "JOB_ENTRYPOINT_COMMAND_ERROR" if status == "FAILED" else None,
            "start_time": int(job.submitted_at * 1000),
            "end_time": int(job.ended_at * 1000) if job.ended_at is not None else None,
            "metadata": job.metadata,
            "runtime_env": job.runtime_env,
            "driver_agent_http_address": "http://127.0.0.1:52365",
            "driver_node_id": job.node_id,
            "driver_exit_code": exit_code,
            "entrypoint_num_cpus": need.get("CPU"),
            "entrypoint_num_gpus": need.get("GPU"),
            "entrypoint_memory": int(need["memory"]) if "memory" in need else None,
            "entrypoint_resources": {k: v for k, v in need.items() if k not in ("CPU", "GPU", "memory")} or None,
        }

    def list_jobs(self) -> tuple[int, Any]:
        now = self.advance()
        return 200, [self.job_info(j, now) for j in self.jobs.values()]

    def get_job(self, sid: str) -> tuple[int, Any]:
        now = self.advance()
        job = self.jobs.get(sid)
        if job is None:
            return 404, f"Job {sid} does not exist"
        return 200, self.job_info(job, now)

    def stop_job(self, sid: str) -> tuple[int, Any]:
        now = self.advance()
        job = self.jobs.get(sid)
        if job is None:
            return 404, f"Job {sid} does not exist"
        if job.final is not None:
            return 200, {"stopped": False}
        if job.reserved_at is None:
            job.stop_requested = True  # like Ray: stays PENDING until it gets a slot
        else:
            self._end(job, "STOPPED", now)
            if self.stop_lag_s > 0:  # STOPPED already, but still holding its resources a while
                job.release_at = now + self.stop_lag_s
                self._active.append(job)
            self._start_waiting(now)
        return 200, {"stopped": True}

    def logs(self, sid: str) -> tuple[int, Any]:
        now = self.advance()
        job = self.jobs.get(sid)
        if job is None:
            return 404, f"Job {sid} does not exist"
        if job.status(now) == "PENDING":
            return 200, {"logs": ""}
        if self.log_bytes and sid.startswith(self.log_bytes_prefix):
            return 200, big_log_body(self.log_bytes)
        return 200, {"logs": f"fake ray {self.name}: running {job.entrypoint}\n"}

    def delete_job(self, sid: str) -> tuple[int, Any]:
        now = self.advance()
        job = self.jobs.get(sid)
        if job is None:
            return 404, f"Job {sid} does not exist"
        status = job.status(now)
        if status not in TERMINAL:
            return 500, _traceback(f"RuntimeError: Attempted to delete job with id '{sid}', but it is in "
                                   f"a non-terminal state {status}.")
        del self.jobs[sid]
        return 200, {"deleted": True}

    def version(self) -> tuple[int, Any]:
        return 200, {"version": "4", "ray_version": RAY_VERSION, "ray_commit": "fake" * 10,
                     "session_name": f"session_fake_{self.name}"}

    def route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Answer one request (path without the cluster prefix)."""
        path = "/" + path.strip("/") + ("/" if path.endswith("/") and path.strip("/") else "")
        parts = [p for p in path.split("/") if p]
        if method == "GET" and path == "/api/version":
            return self.version()
        if method == "GET" and path == "/api/cluster_status":
            return 200, self.cluster_status()
        if parts[:2] == ["api", "jobs"]:
            rest = parts[2:]
            if not rest:
                if method == "GET":
                    return self.list_jobs()
                if method == "POST":
                    try:
                        data = orjson.loads(body) if body else None
                    except orjson.JSONDecodeError as exc:
                        return 400, f"JSONDecodeError: {exc}"
                    return self.submit(data)
            elif len(rest) == 1:
                if method == "GET":
                    return self.get_job(rest[0])
                if method == "DELETE":
                    return self.delete_job(rest[0])
            elif len(rest) == 2 and rest[1] == "stop" and method == "POST":
                return self.stop_job(rest[0])
            elif len(rest) == 2 and rest[1] == "logs" and method == "GET":
                return self.logs(rest[0])
        if parts[:3] == ["api", "packages", "gcs"] and len(parts) == 4:
            if method == "GET":
                return (200, "") if parts[3] in self.packages else \
                    (404, f"Package gcs://{parts[3]} does not exist")
            if method == "PUT":
                self.packages[parts[3]] = body
                return 200, ""
        return 404, "404: Not Found"


HANG = -1  # route() status meaning: never answer


def _traceback(last_line: str) -> str:
    return ("Traceback (most recent call last):\n"
            '  File "/usr/lib/python3/site-packages/ray/dashboard/modules/job/job_head.py", line 380, in submit_job\n'
            "    submission_id = await job_manager.submit_job(\n"
            '  File "/usr/lib/python3/site-packages/ray/dashboard/modules/job/job_manager.py", line 566, in submit_job\n'
            f"    raise {last_line.split(':', 1)[0]}(\n{last_line}\n")


class FakeServer:
    """One aiohttp app on 127.0.0.1: a single cluster at the root, or several under
    `/c/<name>`. `stop()` closes the port (connection refused); `start()` reopens it.
    With `ssl_context` it speaks https; with `token` it answers 401, as Ray's token
    authentication does, to any request without `Authorization: Bearer <token>`."""

    def __init__(self, clusters: list[FakeCluster], *, prefixed: bool | None = None,
                 ssl_context: ssl.SSLContext | None = None, token: str | None = None) -> None:
        self.prefixed = len(clusters) > 1 if prefixed is None else prefixed
        self.ssl_context = ssl_context
        self.token = token
        self.unauthorized = 0
        self.clusters = {c.name: c for c in clusters}
        self.port = 0
        self._runner: web.ServerRunner | None = None
        self._closing = False
        for c in clusters:
            c.server = self

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        # A bare server, no application or router: every path goes to `_handle`, and a
        # thousand clusters' probes a second cost the fleet's process less.
        server = web.Server(self._handle, request_factory=_big_requests, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        _WEB_SERVERS.add(runner.server)
        site = web.TCPSite(runner, "127.0.0.1", self.port, shutdown_timeout=0.5, ssl_context=self.ssl_context)
        await site.start()
        self._runner = runner
        self._closing = False
        if not self.port:
            self.port = runner.addresses[0][1]
        for c in self.clusters.values():
            scheme = "https" if self.ssl_context is not None else "http"
            c.url = f"{scheme}://127.0.0.1:{self.port}" + (f"/c/{c.name}" if self.prefixed else "")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        for c in self.clusters.values():  # let hung requests end so shutdown is quick
            c._release.set()
        await runner.cleanup()

    def _find(self, path: str) -> tuple[FakeCluster | None, str]:
        if not self.prefixed:
            return next(iter(self.clusters.values())), path
        m = re.match(r"^/c/([^/]+)(/.*)?$", path)
        if not m:
            return None, path
        return self.clusters.get(m.group(1)), m.group(2) or "/"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_sim/stats":
            if request.query.get("only") == "submissions":  # cheap enough to poll during a run
                stats: Any = {"submissions": sum(len(c.submissions) for c in self.clusters.values())}
            else:
                stats = {n: c.stats() for n, c in self.clusters.items()}
            return web.Response(body=orjson.dumps(stats), content_type="application/json")
        cluster, path = self._find(request.path)
        if cluster is None:
            return web.Response(status=404, text="404: Not Found")
        for task in (asyncio.current_task(), request.task):
            if task is not None:
                _FAKE_TASKS.add(task)
        body = await request.read()
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorized += 1
            return web.Response(status=401, text="401: Unauthorized: missing or invalid token")
        cluster.requests[f"{request.method} {_route_name(path)}"] += 1
        delay = cluster.latency_s + (cluster.status_latency_s if path.rstrip("/") == "/api/cluster_status" else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        while cluster.mode == "hang" and not self._closing:
            await cluster._release.wait()  # never answers while hanging
        mode = cluster.mode
        if self._closing or mode == "dead":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()  # no answer; aiohttp drops the connection
        if mode == "error500":
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if mode == "garbage":
            return web.Response(status=200, body=cluster.garbage_body,
                                content_type="application/json" if cluster.garbage_body[:1] in b"{[" else "text/html")
        try:
            status, answer = cluster.route(request.method, path, body)
        except Exception:  # a bug in the fake: answer like a crashing dashboard, but loudly
            return web.Response(status=500, text=traceback.format_exc())
        if status == HANG:
            while not self._closing:
                await asyncio.sleep(0.1)
            raise asyncio.CancelledError()
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        if isinstance(answer, bytes):  # already JSON (a large log, encoded once)
            if len(answer) <= _STREAM_CHUNK:
                return web.Response(status=status, body=answer, content_type="application/json")
            # In pieces, waiting for the socket between them: one write of 200 MB holds this
            # process's loop (a copy into the transport's buffer, then its sends) for 0.1-0.4 s,
            # and with it every other simulated cluster here, where a real cluster's dashboard
            # stalls only itself (bench/README.md, "Ninth round").
            resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
            resp.content_length = len(answer)
            await resp.prepare(request)
            view = memoryview(answer)
            for at in range(0, len(answer), _STREAM_CHUNK):
                await resp.write(view[at:at + _STREAM_CHUNK])
            await resp.write_eof()
            return resp
        return web.Response(status=status, body=orjson.dumps(answer), content_type="application/json")


def _big_requests(message: Any, payload: Any, protocol: Any, writer: Any, task: "asyncio.Task[None]") -> web.BaseRequest:
    return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                           client_max_size=4 * 1024 * 1024)


def _route_name(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "jobs"]:
        if len(parts) == 2:
            return "/api/jobs/"
        if len(parts) == 3:
            return "/api/jobs/{id}"
        return "/api/jobs/{id}/" + parts[3]
    if parts[:2] == ["api", "packages"]:
        return "/api/packages"
    return "/" + "/".join(parts)


@dataclass
class Fleet:
    clusters: list[FakeCluster]
    servers: list[FakeServer] = field(default_factory=list)

    def __getitem__(self, i: int) -> FakeCluster:
        return self.clusters[i]

    def __len__(self) -> int:
        return len(self.clusters)

    def by_name(self, name: str) -> FakeCluster:
        return next(c for c in self.clusters if c.name == name)

    def configs(self, **kw: Any) -> tuple[ClusterConfig, ...]:
        return tuple(c.config(**kw) for c in self.clusters)

    async def close(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)


async def start_fleet(n: int, *, name: str = "fake", shared: bool = False, servers: int | None = None,
                      nodes_of: Callable[[str], Mapping[str, Mapping[str, float]]] | None = None,
                      **cluster_kw: Any) -> Fleet:
    """Start n fake clusters named `<name>0..`: each on its own port, all on one (`shared`),
    or spread over `servers` ports. `nodes_of(cluster_name)` gives each cluster its nodes."""
    clusters = [FakeCluster(f"{name}{i}", nodes_of(f"{name}{i}") if nodes_of else None, **cluster_kw)
                for i in range(n)]
    if shared:
        servers = 1
    if servers:
        groups = [clusters[i::servers] for i in range(min(servers, n))]
        servers_ = [FakeServer(g, prefixed=True) for g in groups]
    else:
        servers_ = [FakeServer([c]) for c in clusters]
    return await _start(clusters, servers_)


async def _start(clusters: list[FakeCluster], servers: list[FakeServer]) -> Fleet:
    fleet = Fleet(clusters, servers)
    try:
        await asyncio.gather(*(s.start() for s in servers))
    except BaseException:
        await fleet.close()
        raise
    return fleet


@contextlib.asynccontextmanager
async def fake_fleet(n: int, **kw: Any) -> AsyncIterator[Fleet]:
    fleet = await start_fleet(n, **kw)
    try:
        yield fleet
    finally:
        await fleet.close()


def is_fake_task(task: asyncio.Task[Any]) -> bool:
    """Whether a task is a fake dashboard's request handler (a hung request, say), to tell it
    apart from the daemon's own tasks when looking for leaks."""
    if task in _FAKE_TASKS:
        return True
    frame = getattr(task.get_coro(), "cr_frame", None)
    handler = frame.f_locals.get("self") if frame is not None else None
    return isinstance(handler, RequestHandler) and getattr(handler, "_manager", None) in _WEB_SERVERS


# ---- a fleet in a process of its own -------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve a fleet of fake Ray 2.60 dashboards until SIGTERM "
                                "or end of standard input; prints one JSON line with the cluster URLs.")
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--servers", type=int, default=1, help="ports to spread the clusters over")
    p.add_argument("--name", default="sim")
    p.add_argument("--cpus", type=float, default=8.0, help="CPUs per node")
    p.add_argument("--nodes", type=int, default=1, help="nodes per cluster")
    p.add_argument("--duration", type=float, default=0.5, help="job duration, simulated seconds")
    p.add_argument("--scale", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--latency-ms", type=float, default=0.0, help="answer latency of every request")
    p.add_argument("--status-latency-ms", type=float, default=0.0, help="and of /api/cluster_status on top")
    p.add_argument("--snapshot-every", type=float, default=None, help="Ray snapshot period, simulated s")
    p.add_argument("--history", type=int, default=0, help="past jobs each cluster lists from the start")
    p.add_argument("--log-bytes", type=int, default=0, help="every job's logs are this many bytes")
    p.add_argument("--log-bytes-prefix", default="", help="only the jobs whose submission id starts with this")
    p.add_argument("--report-submissions", action="store_true",
                   help="print a JSON line (submission id, wall time) for every POST /api/jobs/ received")
    return p.parse_args(argv)


async def serve(argv: list[str] | None = None) -> None:
    a = _parse_args(argv)
    clock = ScaledClock(a.scale)
    fleet = await start_fleet(a.clusters, name=a.name, servers=a.servers, duration_s=a.duration,
                              clock=clock, latency_s=a.latency_ms / 1000, snapshot_every_s=a.snapshot_every,
                              status_latency_s=a.status_latency_ms / 1000,
                              nodes_of=lambda c: make_nodes(c, [{"CPU": a.cpus}] * a.nodes))
    for cluster in fleet.clusters:
        cluster.add_history(a.history)
        cluster.log_bytes = a.log_bytes
        cluster.log_bytes_prefix = a.log_bytes_prefix
    if a.report_submissions:
        for cluster in fleet.clusters:
            def submit(body: Any, _submit: Callable[[Any], tuple[int, Any]] = cluster.submit) -> tuple[int, Any]:
                sid = body.get("submission_id") if isinstance(body, dict) else None
                sys.stdout.write(orjson.dumps({"posted": sid, "t": time.time()}).decode() + "\n")
                sys.stdout.flush()
                return _submit(body)
            cluster.submit = submit  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    print(orjson.dumps({"urls": {c.name: c.url for c in fleet.clusters},
                        "stats": sorted({f"http://127.0.0.1:{s.port}/_sim/stats" for s in fleet.servers})}).decode(),
          flush=True)
    try:
        await stop.wait()
    finally:
        await fleet.close()


if __name__ == "__main__":
    asyncio.run(serve())
