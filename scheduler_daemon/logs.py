"""structlog set-up: JSON lines on stdout via orjson, context bound with contextvars.

Called once by the application at start-up, never at import."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(level: str = "info") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    # Libraries that use the standard logging module: warnings and above, as plain lines on stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format='{"level":"%(levelname)s","logger":"%(name)s","event":"%(message)s"}')
