"""The status service as the scheduler's child process: started, restarted when it dies,
and ended with the scheduler.

The child gets its settings and clusters on standard input and ends when that input closes, so
it never outlives the scheduler, even one killed with SIGKILL. A child that dies is started
again after a pause that doubles up to RESTART_MAX_S; the scheduler goes on meanwhile. It runs
at a lower CPU priority (`status_service_nice`, set by the child itself) than the scheduler.
"""

from __future__ import annotations

import asyncio
import os
import sys

import structlog

from .settings import ClusterConfig, Settings, parse_http_addr
from .status.__main__ import setup_bytes
from .tasks import pause

log = structlog.get_logger("rmcs.supervisor")

COMMAND = (sys.executable, "-m", "scheduler_daemon.status", "--from-parent")
RESTART_MIN_S = 0.5
RESTART_MAX_S = 10.0
EXIT_S = 5.0  # a child whose input closed has this long to exit before it is terminated


class ServiceProcess:
    def __init__(self, settings: Settings, clusters: tuple[ClusterConfig, ...]) -> None:
        self.settings = settings
        self.clusters = clusters
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def run(self, stopping: asyncio.Event) -> None:
        delay = RESTART_MIN_S
        while not stopping.is_set():
            proc = await asyncio.create_subprocess_exec(*COMMAND, stdin=asyncio.subprocess.PIPE)
            self.process = proc
            self.starts += 1
            assert proc.stdin is not None
            proc.stdin.write(setup_bytes(self.settings, self.clusters))
            await proc.stdin.drain()
            log.info("status service started", pid=proc.pid)
            ended = asyncio.ensure_future(proc.wait())
            stop = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if stopping.is_set():
                ended.cancel()
                return
            log.error("status service exited; starting it again", pid=proc.pid, returncode=proc.returncode,
                      after_s=delay)
            if await pause(stopping, delay):
                return
            delay = min(RESTART_MAX_S, delay * 2)

    async def close(self) -> None:
        """Close the child's input (it stops by itself), then wait; terminate it if it lingers."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), EXIT_S)
        except asyncio.TimeoutError:
            log.warning("status service did not stop; terminating it", pid=proc.pid)
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), EXIT_S)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()

    async def wait_serving(self, timeout: float) -> bool:
        """Wait until the service's HTTP address takes connections (at start-up)."""
        host, port = parse_http_addr(self.settings.http_addr)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return True
        return False
