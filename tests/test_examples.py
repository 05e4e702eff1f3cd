"""The examples in examples/ (shell with amqp-tools, Node.js with amqplib) run as subprocesses
against the real RabbitMQ and a real daemon with fake clusters, on the test's own broker names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import aio_pika
import orjson
import pytest

from fakeray import FakeCluster, FakeServer
from scheduler_daemon.settings import Settings
from support import Events, make_settings, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

ROOT = Path(__file__).resolve().parent.parent
SHELL = ROOT / "examples" / "shell"
NODE = ROOT / "examples" / "node"
GIB = 1024 ** 3


@pytest.fixture(scope="session", autouse=True)
def example_deps() -> None:
    """amqp-publish and examples/node/node_modules, installed by the script `make install` runs."""
    if shutil.which("amqp-publish") is None or not (NODE / "node_modules" / "amqplib").is_dir():
        subprocess.run([str(ROOT / "scripts" / "install-example-deps")], check=True, timeout=600)
    assert shutil.which("amqp-publish") and shutil.which("node"), "amqp-tools and Node.js are needed"


def _env(s: Settings) -> dict[str, str]:
    return {**os.environ, "RMCS_AMQP_URL": s.amqp_url, "RMCS_INTAKE_EXCHANGE": s.intake_exchange,
            "RMCS_INTAKE_ROUTING_KEY": s.intake_routing_key, "RMCS_EVENTS_EXCHANGE": s.events_exchange}


async def run(s: Settings, *argv: str | Path, timeout: float = 20) -> str:
    """Run an example to its end (without blocking the daemon's event loop); its stdout."""
    proc = await asyncio.create_subprocess_exec(*map(str, argv), env=_env(s), stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {err.decode()}"
    return out.decode()


@contextlib.asynccontextmanager
async def dashboard(s: Settings, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec("node", str(NODE / "dashboard.js"), *args, env=_env(s),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 15)
        assert b"listening" in line, line  # bound: no event of ours can be missed now
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def intake_copies(s: Settings) -> AsyncIterator[asyncio.Queue[aio_pika.abc.AbstractIncomingMessage]]:
    """A second queue on the intake exchange and key: a copy of every submitted message, to
    look at its AMQP properties."""
    conn = await aio_pika.connect(s.amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(exclusive=True)
        await q.bind(s.intake_exchange, s.intake_routing_key)
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await q.consume(got.put, no_ack=True)
        yield got


@contextlib.asynccontextmanager
async def serving(*clusters: FakeCluster) -> AsyncIterator[None]:
    servers = [FakeServer([c]) for c in clusters]
    for server in servers:
        await server.start()
    try:
        yield
    finally:
        for server in servers:
            await server.stop()


async def test_shell_submit_job_runs_to_succeeded(tmp_path: Any) -> None:
    s = make_settings(tmp_path)  # its URL ends in "/": the script must mean the vhost "/"
    cluster = FakeCluster("shell_c", duration_s=0.3)
    entrypoint = """/bin/echo "it's" a \\back\\slash $HOME `x` ünïcødé €\ttab"""
    async with serving(cluster), running_daemon(s, (cluster.config(),)), Events(s) as ev, \
            intake_copies(s) as copies:
        job = sid("shell")
        out = await run(s, SHELL / "submit-job.sh", "--submission-id", job, "--priority", "7", "--cpus", "1",
                        "--tag", "demo", "--tag", 'two "words"', "--max-retries", "1", entrypoint)
        assert out == f"{job}\n"
        generated = (await run(s, SHELL / "submit-job.sh", "/bin/true")).strip()
        assert generated.startswith("sub_")
        await ev.wait_final([job, generated], timeout=20)

        assert ev.states(job) == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"], ev.of(job)
        assert ev.states(generated)[-1] == "SUCCEEDED", ev.of(generated)
        last = ev.of(job)[-1]
        assert last["tags"] == ["demo", 'two "words"'] and last["priority"] == 7
        assert last["resource_requirements"]["CPU"] == 1
        assert cluster.jobs[job].entrypoint == entrypoint, "the entrypoint arrives byte for byte"

        msg = await asyncio.wait_for(copies.get(), 5)
        assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert msg.content_type == "application/json"
        assert orjson.loads(msg.body)["submission_id"] == job


async def test_node_submit_job_and_dashboard(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    cluster = FakeCluster("node_c", duration_s=0.3)
    job = sid("node")
    async with serving(cluster), running_daemon(s, (cluster.config(),)), Events(s) as ev, \
            intake_copies(s) as copies, dashboard(s, "--count", "4", "job.#") as every, \
            dashboard(s, "--count", "1", "job.succeeded.#", "job.failed.#") as ends:
        out = await run(s, "node", NODE / "submit-job.js", "--submission-id", job, "--priority", "HIGH",
                        "--cpus", "1", "--tag", "node", "--correlation-id", "corr-1", "/bin/echo", "hello")
        assert out == f"{job}\n"
        await ev.wait_final([job], timeout=20)
        assert ev.states(job) == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"], ev.of(job)
        assert ev.of(job)[-1]["correlation_id"] == "corr-1" and ev.of(job)[-1]["priority"] == 9
        assert cluster.jobs[job].entrypoint == "/bin/echo hello"

        msg = await asyncio.wait_for(copies.get(), 5)
        assert (msg.priority, msg.message_id, msg.delivery_mode, msg.content_type) == (
            9, job, aio_pika.DeliveryMode.PERSISTENT, "application/json")

        lines = {}
        for name, proc in (("every", every), ("ends", ends)):
            out_b, _ = await asyncio.wait_for(proc.communicate(), 15)  # --count N: it exits by itself
            assert proc.returncode == 0
            lines[name] = out_b.decode().splitlines()
        assert [line.split()[2] for line in lines["every"]] == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
        assert all(job in line for line in lines["every"])
        assert lines["every"][0].split()[1] == "job.accepted._"
        assert "job.succeeded.node_c" in lines["every"][3] and "cluster=node_c" in lines["every"][3]
        assert len(lines["ends"]) == 1 and "SUCCEEDED" in lines["ends"][0] and "final" in lines["ends"][0]


async def test_stop_job_cancels_a_queued_job_and_stops_a_running_one(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    cluster = FakeCluster("stop_c", nodes={"n1": {"CPU": 1, "memory": 8 * GIB}})
    async with serving(cluster), running_daemon(s, (cluster.config(),)), Events(s) as ev:
        running, queued = sid("running"), sid("queued")
        await run(s, SHELL / "submit-job.sh", "--submission-id", running, "--cpus", "1", "/bin/sleep 30")
        await ev.wait_for(lambda: "RUNNING" in ev.states(running), 15, "the first job running")
        # No room left: the second job stays in RabbitMQ (or the daemon's window) until the first ends.
        await run(s, SHELL / "submit-job.sh", "--submission-id", queued, "--cpus", "1", "/bin/sleep 30")

        reason = 'not needed: "dup" \\ ü'
        await run(s, SHELL / "stop-job.sh", queued, reason)
        await ev.wait_for(lambda: ev.answers(queued), 10, "the stop answer")
        assert ev.answers(queued)[0]["outcome"] in ("recorded", "cancelled"), ev.answers(queued)

        await run(s, SHELL / "stop-job.sh", running)
        await ev.wait_final([running, queued], timeout=15)
        assert ev.answers(running)[0]["outcome"] == "stopping"
        assert ev.states(running)[-1] == "STOPPED"
        assert ev.of(queued)[-1]["state"] == "CANCELLED" and ev.of(queued)[-1]["message"] == reason
        assert queued not in cluster.jobs, "a cancelled job never reaches a cluster"
