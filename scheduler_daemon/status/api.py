"""The HTTP API of the status service: health, jobs (status, logs, stop), clusters, a live
event stream, metrics and the OpenAPI document. JSON everywhere; every error is `{"error": message}`.

Requests are checked at this edge: an unknown, repeated or empty query parameter, a bad value
or a malformed body is a 400 naming the parameter; nothing a client sends can cause a 500, and
no answer carries a stack trace.

Mutating requests (POST) need `Authorization: Bearer <token>` when tokens are configured
(`api_tokens_file`); the token's user is the caller, whom the stop rule of `access` applies to.
Without tokens the API listens on loopback only and trusts its callers (docs/security.md).

What it serves comes from a `Backend` (the status service): the status store, the live event
hub, and the scheduler reached over the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Protocol

import orjson
import structlog
from aiohttp import web

from .. import access
from ..rayapi import RayError
from ..settings import Settings, parse_http_addr
from . import openapi
from .hub import EventHub
from .store import QUEUES_REPORT, BadQuery, ListQuery, StatusStore

log = structlog.get_logger("rmcs.api")

SUBMISSION_ID = re.compile(openapi.SUBMISSION_ID_PATTERN)
LIST_PARAMS = ("state", "cluster", "tag", "owner", "queue", "since", "until", "limit", "cursor")
MAX_PARAM_CHARS = 1024
MAX_BODY_BYTES = 64 * 1024
MAX_REASON_CHARS = 1024
PING_INTERVAL_S = 15.0     # SSE comment, keeps proxies from closing an idle stream
DISCONNECT_CHECK_S = 1.0   # how soon a stream notices its client went away
WRITE_TIMEOUT_S = 10.0     # a client that takes no bytes for this long is dropped
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Where a stop outcome puts the HTTP status: taken (202), refused by state (409), by the cluster (502).
# Refused for the caller (not the job's owner nor an admin): 403.
STOP_STATUS = {"cancelled": 202, "stopping": 202, "recorded": 202,
               "already_final": 409, "unknown": 409, "failed": 502, "refused": 403}
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class LogsUnavailable(Exception):
    """The job exists but its logs cannot be had; the message says why."""


class StopTimeout(Exception):
    """The scheduler did not answer a stop request in time; the message says what follows."""


class Backend(Protocol):
    settings: Settings
    tokens: Mapping[str, str]
    stopping: asyncio.Event
    store: StatusStore
    hub: EventHub

    async def readiness(self) -> dict[str, bool]: ...

    async def clusters(self) -> list[dict[str, Any]]: ...

    async def metrics_text(self) -> bytes: ...

    async def logs(self, submission_id: str) -> tuple[str, str]: ...

    async def request_stop(self, submission_id: str, reason: str | None,
                           caller: access.Caller) -> Mapping[str, Any]: ...


class ApiError(Exception):
    """An answer other than 200, with `{"error": message}` as its body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure as JSON: ours, aiohttp's (404, 405, 413) and unexpected ones (500, logged)."""
    try:
        return await handler(request)
    except ApiError as exc:
        answer = _json({"error": exc.message}, exc.status)
        answer.headers.update(exc.headers)
        return answer
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        elif exc.status == 413:
            message = f"request body larger than {MAX_BODY_BYTES // 1024} KiB"
        else:
            message = exc.reason
        answer = _json({"error": message}, exc.status)
        if "Allow" in exc.headers:
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return _json({"error": "internal error"}, 500)


def _params(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters, each known, given once, non-empty and printable."""
    allowed = tuple(allowed)
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(400, f"unknown query parameter {name!r} (allowed: {known})")
        if name in out:
            raise ApiError(400, f"query parameter {name!r} given more than once")
        if not value:
            raise ApiError(400, f"query parameter {name!r} is empty")
        if len(value) > MAX_PARAM_CHARS or _CONTROL.search(value):
            raise ApiError(400, f"query parameter {name!r} is too long or has control characters")
        out[name] = value
    return out


def _submission_id(request: web.Request) -> str:
    sid = request.match_info["submission_id"]
    if not SUBMISSION_ID.fullmatch(sid):
        raise ApiError(400, "submission_id must match [A-Za-z0-9._-]{1,128}")
    return sid


def _time(value: str, name: str) -> str:
    """An RFC 3339 time (UTC when it has no offset), normalised to UTC with a Z."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError):
        raise ApiError(400, f"{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z") from None


def _limit(value: str | None) -> int:
    if value is None:
        return ListQuery.limit
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 1000:
        raise ApiError(400, "limit must be an integer between 1 and 1000")
    return int(value)


def _pattern(value: str) -> str:
    if len(value) > 255 or any(not word for word in value.split(".")):
        raise ApiError(400, "pattern must be an AMQP topic pattern of non-empty dot-separated words, "
                            "such as job.# or job.*.gpu (at most 255 characters)")
    return value


def _stop_reason(body: bytes) -> str | None:
    if not body.strip():
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body must be a JSON object such as {\"reason\": \"...\"}") from None
    if not isinstance(request, dict):
        raise ApiError(400, "the body must be a JSON object such as {\"reason\": \"...\"}")
    unknown = sorted(set(request) - {"reason"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} in the body (allowed: reason)")
    reason = request.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str) or not 1 <= len(reason) <= MAX_REASON_CHARS:
        raise ApiError(400, f"reason must be a string of 1 to {MAX_REASON_CHARS} characters")
    return reason


class HttpServer:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.tokens = backend.tokens  # token -> user; never logged
        self.app = web.Application(middlewares=[_errors, self._authenticate], client_max_size=MAX_BODY_BYTES)
        self.app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/api/v1/jobs", self.list_jobs),
            web.get("/api/v1/jobs/{submission_id}", self.job),
            web.get("/api/v1/jobs/{submission_id}/logs", self.logs),
            web.post("/api/v1/jobs/{submission_id}/stop", self.stop_job),
            web.get("/api/v1/clusters", self.clusters),
            web.get("/api/v1/queues", self.queues),
            web.get("/api/v1/events", self.events, allow_head=False),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
        ])
        self._runner: web.AppRunner | None = None
        self._ended: asyncio.Future[None] | None = None  # done when event streams must end
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        access.check_exposure(self.backend.settings, self.tokens)
        host, port = parse_http_addr(self.backend.settings.http_addr)
        self._ended = asyncio.get_running_loop().create_future()
        self._watch = asyncio.create_task(self._end_streams_when_stopping(), name="http-stop-watch")
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=3.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        self._end_streams()
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _end_streams_when_stopping(self) -> None:
        await self.backend.stopping.wait()
        self._end_streams()

    def _end_streams(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    # ---- access ------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With tokens configured, a mutating request needs a valid one; its user is the caller."""
        if request.method in MUTATING:
            self.caller(request)  # raises 401; handlers ask again for the identity they need
        return await handler(request)

    def caller(self, request: web.Request) -> access.Caller:
        if not self.tokens:
            return access.TRUSTED_LOCAL
        header = request.headers.get("Authorization")
        user = access.token_user(header, self.tokens)
        if user is None:
            why = "a bearer token is required" if not header else "the bearer token is not valid"
            raise ApiError(401, f"{why}: send Authorization: Bearer <token>",
                           {"WWW-Authenticate": 'Bearer realm="rmcs"'})
        return access.token_caller(user, self.backend.settings)

    # ---- health ------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self.backend.readiness()
        ready = checks["broker"] and checks["clusters_probed"] and not checks["stopping"]
        return _json({"ready": ready, **checks}, 200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        doc = openapi.document()
        doc["servers"] = [{"url": f"{request.scheme}://{request.host}"}]
        return _json(doc)

    # ---- jobs --------------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = _params(request, LIST_PARAMS)
        query = ListQuery(
            state=q.get("state"), cluster=q.get("cluster"), tag=q.get("tag"), owner=q.get("owner"),
            queue=q.get("queue"), since=_time(q["since"], "since") if "since" in q else None,
            until=_time(q["until"], "until") if "until" in q else None,
            limit=_limit(q.get("limit")), cursor=q.get("cursor"))
        try:
            page = await self.backend.store.list(query)
        except BadQuery as exc:
            raise ApiError(400, str(exc)) from None
        return _json({"jobs": [j.to_json() for j in page.jobs], "next_cursor": page.next_cursor})

    async def job(self, request: web.Request) -> web.Response:
        _params(request, ())
        sid = _submission_id(request)
        status = await self.backend.store.get(sid)
        if status is None:
            raise ApiError(404, f"no job {sid!r}")
        return _json(status.to_json())

    async def logs(self, request: web.Request) -> web.Response:
        _params(request, ())
        sid = _submission_id(request)
        try:
            cluster, text = await self.backend.logs(sid)
        except LogsUnavailable as exc:
            raise ApiError(409, str(exc)) from None
        except RayError as exc:
            status = await self.backend.store.get(sid, history=False)
            raise ApiError(502, f"cluster {status.cluster if status else None} did not give the logs: {exc}") from None
        except LookupError:
            raise ApiError(404, f"no job {sid!r}") from None
        return _json({"submission_id": sid, "cluster": cluster, "logs": text})

    async def stop_job(self, request: web.Request) -> web.Response:
        _params(request, ())
        sid = _submission_id(request)
        reason = _stop_reason(await request.read())
        caller = self.caller(request)
        try:
            answer = await self.backend.request_stop(sid, reason, caller)
        except StopTimeout as exc:
            raise ApiError(504, str(exc)) from None
        return _json(answer, STOP_STATUS.get(str(answer.get("outcome")), 500))

    # ---- clusters and events -------------------------------------------------------------

    async def clusters(self, request: web.Request) -> web.Response:
        _params(request, ())
        return _json({"clusters": await self.backend.clusters()})

    async def queues(self, request: web.Request) -> web.Response:
        """The queues as the scheduler last reported them (docs/queues.md)."""
        _params(request, ())
        report = await self.backend.store.report(QUEUES_REPORT)
        queues = orjson.loads(report[0]) if report is not None else []
        return _json({"queues": queues if isinstance(queues, list) else []})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: each lifecycle event as `event: <routing key>` and `data: <json>`.

        The hub gives each stream a bounded queue and drops its oldest events when the client
        reads slowly, so a stream never slows the daemon; a client that takes nothing for
        WRITE_TIMEOUT_S is disconnected."""
        pattern = _pattern(_params(request, ("pattern",)).get("pattern", "#"))
        ended = self._ended
        if ended is None or ended.done():
            raise ApiError(503, "the daemon is stopping")
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        stream = self.backend.hub.subscribe(pattern)
        upcoming: asyncio.Future[Mapping[str, Any]] = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # let the subscription register before the client hears "subscribed"
        loop = asyncio.get_running_loop()
        try:
            await response.prepare(request)
            await self._send(response, f"retry: 3000\n: subscribed to {pattern}\n\n".encode())
            next_ping = loop.time() + PING_INTERVAL_S
            while True:
                timeout = max(0.0, min(DISCONNECT_CHECK_S, next_ping - loop.time()))
                await asyncio.wait({upcoming, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if ended.done():
                    await self._send(response, b": the daemon is stopping\n\n", timeout=1.0)
                    break
                if request.transport is None or request.transport.is_closing():
                    break
                if upcoming.done():
                    event = upcoming.result()
                    upcoming = asyncio.ensure_future(anext(stream))
                    name = _CONTROL.sub("", str(event.get("event") or "message"))
                    await self._send(response, b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")
                elif loop.time() >= next_ping:
                    await self._send(response, b": ping\n\n")
                    next_ping = loop.time() + PING_INTERVAL_S
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the client went away or stopped reading
        except Exception:
            log.exception("event stream failed", pattern=pattern)
        finally:
            upcoming.cancel()
            await asyncio.gather(upcoming, return_exceptions=True)
            await stream.aclose()
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, chunk: bytes, timeout: float = WRITE_TIMEOUT_S) -> None:
        await asyncio.wait_for(response.write(chunk), timeout)

    # ---- metrics -----------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.backend.metrics_text(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
