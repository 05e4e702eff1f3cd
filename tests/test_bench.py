"""Every benchmark under bench/ runs to its end, on a small scale, and prints its figures: the
scripts import the daemon's parts directly, and nothing else would notice when a change to
those parts breaks one. The figures themselves are not checked here (bench/README.md).
`bench/ray_side_by_side.py` is left out: it starts Ray clusters of its own, which the real-Ray
tests of this session already run on the same pinned ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("rabbitmq")

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "throughput": (["--jobs", "200", "--clusters", "4", "--probe-clusters", "8", "--control-load", "0.1"],
                   ["ratio to the bare loop", "8 clusters probed every second", "beside a busy loop of 0.1 core",
                    "events confirmed by the last POST"]),
    "latency_fake": (["--n", "30", "--clusters", "4"], ["bare loop (consume, POST, ack), n=30", "p99"]),
    "api_load": (["--n", "20", "--clusters", "4", "--streams", "30", "--log-workers", "3", "--log-mb", "1"],
                 ["30 event streams open, 0 refused", "ratio under load / idle", "leader step-down: none"]),
    "probe_fanout": (["--clusters", "20", "--rounds", "2"], ["later rounds: median"]),
    "broker_events": (["--seconds", "0.5"], ["bound on dispatch from the event path alone"]),
    "backlog_memory": (["--depths", "100,300", "--settle-s", "0.5"], ["RSS with 300 waiting is"]),
    "waiting_memory": (["--depths", "10,50", "--settle-s", "0.5"], ["RSS with 50 waiting is"]),
    "fair_share": (["--scale", "30", "--minutes", "2", "--cpus-per-node", "4", "--guaranteed", "4",
                    "--plot", "{tmp}/fair.png"], ["three queues, a minute after urgent", "got its guarantee"]),
    "placement_quality": (["--jobs-fraction", "0.1", "--png", "{tmp}/plot.png"],
                          ["target: mixed makespan", "target: fragmentation makespan"]),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_benchmark_runs_and_prints_its_figures(name: str, tmp_path: Path) -> None:
    args, expected = RUNS[name]
    run = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"),
                          *(a.format(tmp=tmp_path) for a in args)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    for text in expected:
        assert text in run.stdout, run.stdout[-3000:]


@pytest.mark.parametrize("name", ["throughput", "latency_fake"])
def test_the_benchmark_runs_with_the_state_in_postgresql(name: str) -> None:
    """The shared-state comparison (bench/shared_state.py) runs these with `--state postgresql`."""
    args = {"throughput": ["--jobs", "200", "--clusters", "4", "--skip-bare"],
            "latency_fake": ["--n", "20", "--clusters", "4", "--skip-bare"]}[name]
    run = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--state", "postgresql"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "p99" in run.stdout or "jobs/s" in run.stdout, run.stdout[-3000:]
