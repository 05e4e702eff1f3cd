"""`rmcs`: one command per run; the exit code says how it went (docs/cli.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import IO, Awaitable, Callable, Sequence

import aio_pika.exceptions

from .context import Ctx
from .control import cmd_declare, cmd_delete, cmd_events, cmd_stop
from .output import INTERRUPTED, JOB_FAILED, OK, UNREACHABLE, USAGE, CliError, Io
from .parser import build_parser
from .recover import cmd_recover
from .submit import cmd_submit
from .queues import cmd_queues
from .views import cmd_clusters, cmd_list, cmd_logs, cmd_show

COMMANDS: dict[str, Callable[[Ctx], Awaitable[int]]] = {
    "submit": cmd_submit, "list": cmd_list, "show": cmd_show, "logs": cmd_logs, "stop": cmd_stop,
    "delete": cmd_delete, "clusters": cmd_clusters, "events": cmd_events, "declare": cmd_declare, "recover": cmd_recover,
    "queues": cmd_queues}


async def _run(ctx: Ctx) -> int:
    try:
        return await COMMANDS[ctx.args.command](ctx)
    finally:
        await ctx.close()


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    io = Io(stdout or sys.stdout, stderr or sys.stderr)
    if not logging.getLogger().handlers:  # a plain command line: no library log lines, only our messages
        for name in ("aio_pika", "aiormq", "asyncio", "producers"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad arguments (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE)
    try:
        return asyncio.run(_run(Ctx(args, io)))
    except CliError as exc:
        io.err(f"rmcs {args.command}: {'error: ' if exc.code != JOB_FAILED else ''}{exc.message}")
        return exc.code
    except KeyboardInterrupt:
        io.err("rmcs: interrupted")
        return INTERRUPTED
    except BrokenPipeError:  # `rmcs events | head`
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return OK
    except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:  # the broker went away mid-command
        io.err(f"rmcs {args.command}: error: lost the broker: {str(exc).strip().splitlines()[0][:300]}")
        return UNREACHABLE
    except Exception as exc:  # a bug: say what, without a traceback
        io.err(f"rmcs {args.command}: internal error: {type(exc).__name__}: {exc}")
        return JOB_FAILED
