"""structlog set-up: JSON lines on stdout via orjson, context bound with contextvars.

Called once by the application at start-up, never at import. The daemon's own lines take
structlog's cheap path (orjson bytes straight to the stream). Records of the standard `logging`
module (libraries: asyncio, aiohttp, aio-pika) go through `structlog.stdlib.ProcessorFormatter`
to the same stream, one JSON object per line like the rest, their exceptions inside it."""

from __future__ import annotations

import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog


def configure(level: str = "info", stream: BinaryIO | None = None) -> None:
    """Log at `level` and above to `stream` (stdout by default); the standard library's records
    at WARNING and above (or `level`, if higher)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    out = sys.stdout.buffer if stream is None else stream
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.BytesLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=_dumps_str),
        ],
    )
    handler = _LineHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LineHandler)]:  # configured before
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(lvl, logging.WARNING))  # libraries: warnings and above, as before
    logging.captureWarnings(True)  # `warnings` too, as records of the logger py.warnings


def _dumps_str(obj: Any, **kw: Any) -> str:
    """ProcessorFormatter's renderer must return a str."""
    return orjson.dumps(obj, **kw).decode()


class _LineHandler(logging.Handler):
    """One formatted record per line, written with a single call to the binary stream that
    structlog writes to: lines of other threads never interleave with it, and the bytes are UTF-8
    whatever the locale makes of `sys.stdout`."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode() + b"\n"
            self.stream.write(line)  # under the handler's lock (Handler.handle)
            self.stream.flush()
        except Exception:
            self.handleError(record)
