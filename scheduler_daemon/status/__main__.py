"""rmcs-status: the status service (HTTP API, event stream, status cache, log proxy).

On its own: `rmcs-status --clusters clusters.yaml [--config rmcs.yaml]`, settings as the
scheduler's (`RMCS_*` variables override the file). Started by the scheduler (`--from-parent`):
the settings and clusters arrive on standard input, and the service ends when that input
closes, so it never outlives the scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import signal
import struct
import sys

import structlog

from .. import logs
from ..access import check_exposure, load_api_tokens
from ..settings import ClusterConfig, ConfigError, Settings, load_clusters, load_settings
from .service import StatusService

log = structlog.get_logger("rmcs.status")

HEADER = struct.Struct("!Q")  # the length of the set-up that follows on standard input


def setup_bytes(settings: Settings, clusters: tuple[ClusterConfig, ...]) -> bytes:
    """What the scheduler writes to the service's standard input (trusted: its own child)."""
    body = pickle.dumps((settings, clusters))
    return HEADER.pack(len(body)) + body


async def _read_setup(stdin: asyncio.StreamReader) -> tuple[Settings, tuple[ClusterConfig, ...]]:
    size = HEADER.unpack(await stdin.readexactly(HEADER.size))[0]
    settings, clusters = pickle.loads(await stdin.readexactly(size))
    return settings, clusters


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def serve(settings: Settings | None, clusters: tuple[ClusterConfig, ...], from_parent: bool) -> int:
    stdin = await _stdin() if from_parent else None
    if stdin is not None:
        settings, clusters = await _read_setup(stdin)
        logs.configure(settings.log_level)
        os.nice(settings.status_service_nice)  # the scheduler, our parent, comes first
    assert settings is not None
    service = StatusService(settings, clusters)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stopping.set)
    watch = asyncio.create_task(_until_eof(stdin, service.stopping)) if stdin is not None else None
    try:
        await service.start()
        await service.stopping.wait()
    finally:
        if watch is not None:
            watch.cancel()
        await service.stop()
    return 0


async def _until_eof(stdin: asyncio.StreamReader, stopping: asyncio.Event) -> None:
    while await stdin.read(4096):
        pass
    log.info("the scheduler is gone; status service stopping")
    stopping.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rmcs-status", description="rmcs status service: HTTP API and event stream")
    parser.add_argument("--clusters", default="clusters.yaml", help="clusters file (default: clusters.yaml)")
    parser.add_argument("--config", default=None, help="settings file (YAML); RMCS_* variables override it")
    parser.add_argument("--from-parent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings: Settings | None = None
    clusters: tuple[ClusterConfig, ...] = ()
    if not args.from_parent:
        try:
            settings = load_settings(args.config)
            clusters = load_clusters(args.clusters)
            check_exposure(settings, load_api_tokens(settings.api_tokens_file))
        except ConfigError as exc:
            print(f"rmcs-status: configuration error: {exc}", file=sys.stderr)
            return 2
        logs.configure(settings.log_level)
    try:
        return asyncio.run(serve(settings, clusters, args.from_parent))
    except OSError as exc:  # e.g. the HTTP port is taken
        print(f"rmcs-status: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
