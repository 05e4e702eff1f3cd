"""The command-line entry points: configuration errors, topology declaration, the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest

from support import make_settings

pytestmark = pytest.mark.usefixtures("rabbitmq")

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_bad_clusters_file_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "clusters.yaml"
    bad.write_text("clusters:\n  gpu:\n    dashboard_url: http://127.0.0.1:1\n    weight: -2\n")
    result = run("scheduler_daemon", "--clusters", str(bad))
    assert result.returncode == 2
    assert "clusters.gpu.weight" in result.stderr


def test_bad_setting_in_environment_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    result = run("scheduler_daemon", "--clusters", "clusters.yaml", env={"RMCS_WINDOW_SIZE": "many"})
    assert result.returncode == 2
    assert "RMCS_WINDOW_SIZE" in result.stderr
    settings = tmp_path / "rmcs.yaml"
    settings.write_text("placement_strategy: random\n")
    result = run("scheduler_daemon", "--clusters", "clusters.yaml", "--config", str(settings))
    assert result.returncode == 2 and "placement_strategy" in result.stderr


async def test_declare_command_declares_the_topology(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    env = {f"RMCS_{k.upper()}": str(v) for k, v in s.__dict__.items() if isinstance(v, str)}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from scheduler_daemon.__main__ import declare_main; sys.exit(declare_main([]))"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    conn = await aio_pika.connect(s.amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(s.intake_queue, passive=True)
        assert q.name == s.intake_queue
        await ch.declare_queue(s.dead_letter_queue, passive=True)
        await ch.get_exchange(s.events_exchange, ensure=True)
        await ch.queue_delete(s.intake_queue)
        await ch.queue_delete(s.dead_letter_queue)


def test_demo_runs_the_example_jobs_to_their_end(tmp_path: Path) -> None:
    """The README's first command: two local clusters, the daemon, example jobs, events."""
    result = run("rmcs_cli.demo", "--clusters", "clusters.yaml",
                 env={"RMCS_STATE_DIR": str(tmp_path / "state"), "RMCS_HTTP_ADDR": "127.0.0.1:18600"}, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "every example job reached its final state" in out
    assert "dashboard: open http://127.0.0.1:18600/ to watch the jobs live" in out
    for key in ("job.succeeded.gpu_cluster", "job.rejected._", "job.retrying.", "cluster.up.cpu_cluster"):
        assert key in out, out
