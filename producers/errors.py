"""What goes wrong between a client and the broker or the daemon's HTTP API. Every error is a
RuntimeError (the helper's documented contract) whose text says where and why; the attributes
let a caller such as `rmcs` word it its own way. Standard library only.
"""

from __future__ import annotations

import asyncio


def describe(exc: BaseException, secret: str | None = None) -> str:
    """One line about `exc`, with `secret` (a password, a token) scrubbed."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        text = "timed out"
    if secret:
        text = text.replace(secret, "***")
    return text


class DaemonUnreachable(RuntimeError):
    """The daemon's HTTP API did not answer."""

    def __init__(self, base: str, reason: str, timed_out: bool = False) -> None:
        super().__init__(f"cannot reach the rmcs daemon's HTTP API at {base}: {reason}")
        self.base, self.reason, self.timed_out = base, reason, timed_out


class BrokerUnreachable(RuntimeError):
    """No connection to the broker could be made; the message says where and why. `refused`:
    the broker turned the credentials down."""

    def __init__(self, message: str, broker: str, reason: str, refused: bool = False) -> None:
        super().__init__(message)
        self.broker, self.reason, self.refused = broker, reason, refused


class MissingExchange(RuntimeError):
    """The exchange to publish to or to follow does not exist on the broker."""

    def __init__(self, exchange: str, broker: str) -> None:
        super().__init__(f"exchange {exchange!r} does not exist on the broker at {broker}: start the rmcs "
                         "daemon once, or run `rmcs-declare`, with the same names")
        self.exchange, self.broker = exchange, broker


class NotRouted(RuntimeError):
    """A mandatory publish came back: no queue is bound to the exchange with that key."""

    def __init__(self, exchange: str, routing_key: str, broker: str, what: str) -> None:
        super().__init__(f"no queue is bound to exchange {exchange!r} with key {routing_key!r} on {broker}, so "
                         f"{what} was dropped: start the rmcs daemon once, or run `rmcs-declare`, with the same names")
        self.exchange, self.routing_key = exchange, routing_key


class NotConfirmed(RuntimeError):
    """The broker refused a message or did not confirm it in time (it may or may not be queued)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DuplicateJob(RuntimeError):
    """A job with this submission id exists already (seed 002: Ray refuses a second one)."""

    def __init__(self, submission_id: str) -> None:
        super().__init__(f"a job with submission id {submission_id!r} already exists")
        self.submission_id = submission_id


class StreamBroken(RuntimeError):
    """An event stream ended: its channel or connection closed."""
