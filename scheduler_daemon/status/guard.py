"""What keeps the HTTP API from being used against its users (docs/security.md): a per-client
rate limit, tokens for reads when asked for, a cap on open event streams, and TLS.

`guard` is an aiohttp middleware of the `HttpServer`; the rest is pure or reads files at start.
"""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..settings import ConfigError, Settings

# Always answered, whoever asks how often: health checks, and nothing else.
UNGUARDED = frozenset({"/healthz", "/readyz"})
MAX_CLIENTS = 10_000  # buckets kept; the least recently seen client is forgotten first


class RateLimiter:
    """A token bucket per client: `rate` requests per second, bursts of `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def wait(self, client: str) -> float:
        """0 if `client` may go now (a token is taken), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


class StreamSlots:
    """At most `limit` event streams open at once; taken and given back synchronously, so
    clients that connect together cannot all slip past the cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


def client_of(request: web.Request) -> str:
    return request.remote or "unknown"


def guard(settings: Settings, limiter: RateLimiter, authenticate: Callable[[web.Request], Any],
          refuse: Callable[[int, str, dict[str, str]], Exception]) -> Any:
    """The middleware: the rate limit (429 with Retry-After), then, with `api_reads_need_token`,
    a valid token for every request but the health checks (401)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.path not in UNGUARDED:
            wait = limiter.wait(client_of(request))
            if wait > 0:
                raise refuse(429, f"too many requests from {client_of(request)}: at most "
                                  f"{settings.api_rate_limit:g} a second (bursts of {settings.api_rate_burst}); "
                                  f"try again in {wait:.1f} s", {"Retry-After": str(max(1, round(wait + 0.5)))})
            if settings.api_reads_need_token:
                authenticate(request)
        return await handler(request)

    return middleware


def server_tls(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP API's TLS context (TLS 1.2 at least), or None without `http_cert_file`."""
    if not settings.http_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.http_cert_file, settings.http_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid setting 'http_cert_file': cannot load {settings.http_cert_file} with "
                          f"{settings.http_key_file}: {getattr(exc, 'reason', None) or exc}") from None
    return context
