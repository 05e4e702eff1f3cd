"""The status service as a process of its own: the daemon starts it, restarts it when it dies and
goes on scheduling meanwhile; the service ends with the daemon, even a SIGKILLed one; and it also
runs alone (`rmcs-status`) beside a daemon that does not start one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fakeray import FakeCluster, FakeServer
from scheduler_daemon.broker import declare
from support import Events, daemon_launcher, make_settings, publish, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def children(pid: int) -> list[int]:
    """The process ids whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def service_pid(daemon_pid: int) -> int | None:
    for pid in children(daemon_pid):
        try:
            if b"scheduler_daemon.status" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


async def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def ready(addr: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            async with http.get(f"http://{addr}/readyz") as r:
                return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def job_state(addr: str, job: str) -> str | None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(f"http://{addr}/api/v1/jobs/{job}") as r:
            return (await r.json())["state"] if r.status == 200 else None


async def test_the_daemon_restarts_a_dead_status_service_and_schedules_meanwhile(tmp_path: Any) -> None:
    s = make_settings(tmp_path, status_service="process")
    cluster = FakeCluster("solo", nodes={"n": {"CPU": 8, "memory": 16 * 2**30}}, duration_s=0.2)
    server = FakeServer([cluster])
    await server.start()
    await declare(s)
    proc = daemon_launcher(s, (cluster.config(),), tmp_path)()
    try:
        await wait_until(lambda: ready(s.http_addr), 30, "the status service to be ready")
        first = service_pid(proc.pid)
        assert first is not None
        async with Events(s, "job.#") as ev:
            os.kill(first, signal.SIGKILL)
            job = sid("meanwhile")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true"})
            await ev.wait_final([job], 30)  # scheduled while the service was down
            assert ev.states(job)[-1] == "SUCCEEDED"
        await wait_until(lambda: ready(s.http_addr), 30, "the restarted status service")
        second = service_pid(proc.pid)
        assert second is not None and second != first
        # The restarted service caught up from its durable queue: the job's history is there.
        await wait_until(lambda: _is(s.http_addr, job, "SUCCEEDED"), 15, "the job in the restarted service")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        await server.stop()


async def _is(addr: str, job: str, state: str) -> bool:
    return await job_state(addr, job) == state


async def test_the_status_service_ends_with_a_killed_daemon(tmp_path: Any) -> None:
    s = make_settings(tmp_path, status_service="process")
    cluster = FakeCluster("solo", nodes={"n": {"CPU": 8, "memory": 16 * 2**30}})
    server = FakeServer([cluster])
    await server.start()
    await declare(s)
    proc = daemon_launcher(s, (cluster.config(),), tmp_path)()
    try:
        await wait_until(lambda: ready(s.http_addr), 30, "the status service to be ready")
        child = service_pid(proc.pid)
        assert child is not None
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
        await wait_until(lambda: not alive(child), 10, "the orphaned status service to end")
    finally:
        if proc.poll() is None:
            proc.kill()
        await server.stop()


async def test_rmcs_status_runs_alone_beside_a_daemon_that_starts_none(tmp_path: Any) -> None:
    s = make_settings(tmp_path, status_service="off")
    cluster = FakeCluster("solo", nodes={"n": {"CPU": 8, "memory": 16 * 2**30}}, duration_s=0.2)
    server = FakeServer([cluster])
    await server.start()
    await declare(s)
    daemon = daemon_launcher(s, (cluster.config(),), tmp_path)
    env_proc = daemon()
    env = _env_of(env_proc.pid)
    assert env.get("RMCS_STATUS_SERVICE") == "off"
    script = Path(sys.executable).parent / "rmcs-status"  # the console script, as a deployment runs it
    assert script.exists(), f"{script} is missing: the project is not installed (make install)"
    status = subprocess.Popen([str(script), "--clusters", str(tmp_path / "clusters.yaml")], env=env,
                              stdout=open(tmp_path / "status.log", "ab"), stderr=subprocess.STDOUT)
    try:
        await wait_until(lambda: ready(s.http_addr), 30, "rmcs-status to be ready")
        assert service_pid(env_proc.pid) is None
        job = sid("alone")
        await publish(s, {"submission_id": job, "entrypoint": "/bin/true"})
        await wait_until(lambda: _is(s.http_addr, job, "SUCCEEDED"), 30, "the job through rmcs-status")
        # A stop through its API reaches the scheduler over the broker and comes back answered.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{s.http_addr}/api/v1/jobs/{job}/stop") as r:
                assert r.status == 409 and (await r.json())["outcome"] == "already_final"
    finally:
        for p in (status, env_proc):
            p.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(status.wait, 30) == 0
        assert await asyncio.to_thread(env_proc.wait, 30) == 0
        await server.stop()


def _env_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_settings_refuse_an_unknown_status_service_mode(tmp_path: Any) -> None:
    from scheduler_daemon.settings import ConfigError

    with pytest.raises(ConfigError, match="status_service"):
        replace(make_settings(tmp_path), status_service="elsewhere").validate()
