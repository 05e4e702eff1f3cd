"""Start and stop local Ray head nodes side by side, every port pinned.

Used by the demo and by the test suite. Each head gets its own short temp dir and
a block of ports derived from one base number, so several run on one machine without
clashing, and each is torn down by its own process ids (never `ray stop`, which would
kill every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HeadSpec:
    """One local head node: its name, the dashboard port and a base for its other ports."""

    name: str
    dashboard_port: int
    port_base: int
    num_cpus: int = 2
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    object_store_mb: int = 80
    temp_root: str = "/tmp/rmcs"

    @property
    def temp_dir(self) -> str:
        # Ray appends long socket names: keep this short (Unix socket paths max 107 bytes).
        return f"{self.temp_root}/{self.port_base}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_command(self, ray_bin: str) -> list[str]:
        b = self.port_base
        cmd = [
            ray_bin, "start", "--head", "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={b}",
            f"--ray-client-server-port={b + 1}",
            f"--node-manager-port={b + 2}",
            f"--object-manager-port={b + 3}",
            f"--dashboard-agent-listen-port={b + 4}",
            f"--dashboard-agent-grpc-port={b + 5}",
            f"--metrics-export-port={b + 6}",
            f"--runtime-env-agent-port={b + 7}",
            f"--min-worker-port={b + 100}",
            f"--max-worker-port={b + 299}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={self.num_cpus}",
            f"--num-gpus={self.num_gpus}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            "--include-log-monitor=false",
        ]
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        return cmd


class LocalHead:
    """A running local head node, owned by this process."""

    def __init__(self, spec: HeadSpec, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.spec = spec
        self.proc = proc
        self.log_path = log_path

    @classmethod
    def launch(cls, spec: HeadSpec, *, ray_bin: str | None = None) -> "LocalHead":
        ray_bin = ray_bin or shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        if Path(spec.temp_dir).exists():
            kill_processes_of(spec.temp_dir)
            shutil.rmtree(spec.temp_dir, ignore_errors=True)
        Path(spec.temp_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(spec.temp_root) / f"{spec.name}-{spec.port_base}.log"
        env = dict(os.environ)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                spec.start_command(ray_bin),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        return cls(spec, proc, log_path)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the dashboard answers and a job agent is up."""
        deadline = time.monotonic() + timeout
        url = f"{self.spec.dashboard_url}/api/cluster_status"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ray head {self.spec.name!r} exited with {self.proc.returncode}; "
                    f"see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = json.loads(resp.read())
                usage = body["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
                if "CPU" in usage:
                    return
            except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"ray head {self.spec.name!r} not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        kill_processes_of(self.spec.temp_dir, also=[self.proc.pid])
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.spec.temp_dir, ignore_errors=True)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry)] = (ppid, cmdline)
    return table


def processes_of(temp_dir: str, also: list[int] | None = None) -> set[int]:
    """Every process whose command line names temp_dir, plus all their descendants."""
    table = _process_table()
    roots = {pid for pid, (_, cmd) in table.items() if temp_dir in cmd}
    roots.update(p for p in (also or []) if p in table)
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    found.discard(os.getpid())
    return found


def kill_processes_of(temp_dir: str, also: list[int] | None = None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, the processes of one local head (gcs_server ignores SIGTERM)."""
    pids = processes_of(temp_dir, also)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)}
            if not pids:
                return
            time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True
