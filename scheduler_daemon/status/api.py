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
from typing import Any, Callable, Mapping, Protocol

import orjson
import structlog
from aiohttp import web

from producers import schema

from .. import access
from ..rayapi import RayError
from ..settings import Settings, parse_http_addr
from . import guard, openapi
from .packageapi import PackageRoutes
from .hub import EventHub
from .params import (CONTROL, ApiError, limit_param, params_of, pattern_param, stop_reason_of, submission_id_of,
                     time_param)
from .records import JobStatus
from .store import QUEUES_REPORT, BadQuery, ListQuery, StatusStore

log = structlog.get_logger("rmcs.api")

SUBMISSION_ID = schema.SUBMISSION_ID
LIST_PARAMS = ("state", "cluster", "tag", "owner", "queue", "since", "until", "limit", "cursor")
MAX_BODY_BYTES = 64 * 1024
PING_INTERVAL_S = 15.0     # SSE comment, keeps proxies from closing an idle stream
DISCONNECT_CHECK_S = 1.0   # how soon a stream notices its client went away
WRITE_TIMEOUT_S = 10.0     # a client that takes no bytes for this long is dropped
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

    async def readiness(self) -> dict[str, Any]: ...

    async def clusters(self) -> list[dict[str, Any]]: ...

    async def metrics_text(self) -> bytes: ...

    async def logs(self, submission_id: str, tail: int) -> tuple[str, str, bool]: ...

    async def request_stop(self, submission_id: str, reason: str | None,
                           caller: access.Caller) -> Mapping[str, Any]: ...

    async def delete_job(self, status: JobStatus) -> None: ...


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


def named_frame(event: Mapping[str, Any]) -> bytes:
    """An event as the API streams it: `event: <routing key>` and `data: <json>`."""
    name = CONTROL.sub("", str(event.get("event") or "message"))
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class HttpServer:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.tokens = backend.tokens  # token -> user; never logged
        s = backend.settings
        self.limiter = guard.RateLimiter(s.api_rate_limit, s.api_rate_burst)
        self.slots = guard.StreamSlots(s.max_event_streams)
        self.app = web.Application(middlewares=[_errors, guard.guard(s, self.limiter, self.caller, ApiError),
                                                self._authenticate], client_max_size=MAX_BODY_BYTES)
        self.app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/api/v1/jobs", self.list_jobs),
            web.get("/api/v1/jobs/{submission_id}", self.job),
            web.get("/api/v1/jobs/{submission_id}/logs", self.logs),
            web.post("/api/v1/jobs/{submission_id}/stop", self.stop_job),
            web.delete("/api/v1/jobs/{submission_id}", self.delete_job),
            web.get("/api/v1/clusters", self.clusters),
            web.get("/api/v1/queues", self.queues),
            web.get("/api/v1/events", self.events, allow_head=False),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
            *PackageRoutes(s, backend.store).routes(),
        ])
        self._runner: web.AppRunner | None = None
        self._ended: asyncio.Future[None] | None = None  # done when event streams must end
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        access.check_exposure(self.backend.settings, self.tokens)
        tls = guard.server_tls(self.backend.settings)
        host, port = parse_http_addr(self.backend.settings.http_addr)
        self._ended = asyncio.get_running_loop().create_future()
        self._watch = asyncio.create_task(self._end_streams_when_stopping(), name="http-stop-watch")
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=3.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=tls).start()

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
        if request.method in MUTATING and request.path.startswith("/api/"):
            self.caller(request)  # raises 401; handlers ask again for the identity they need
            # (the dashboard's stop form, outside /api/, reads its token from the form itself)
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
        doc = openapi.document(self.backend.settings.max_log_bytes)
        doc["servers"] = [{"url": f"{request.scheme}://{request.host}"}]
        return _json(doc)

    # ---- jobs --------------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = params_of(request, LIST_PARAMS)
        query = ListQuery(
            state=q.get("state"), cluster=q.get("cluster"), tag=q.get("tag"), owner=q.get("owner"),
            queue=q.get("queue"), since=time_param(q["since"], "since") if "since" in q else None,
            until=time_param(q["until"], "until") if "until" in q else None,
            limit=limit_param(q.get("limit")), cursor=q.get("cursor"))
        try:
            page = await self.backend.store.list(query)
        except BadQuery as exc:
            raise ApiError(400, str(exc)) from None
        return _json({"jobs": [j.to_json() for j in page.jobs], "next_cursor": page.next_cursor})

    async def job(self, request: web.Request) -> web.Response:
        params_of(request, ())
        sid = submission_id_of(request)
        status = await self.backend.store.get(sid)
        if status is None:
            raise ApiError(404, f"no job {sid!r}")
        return _json(status.to_json())

    async def logs(self, request: web.Request) -> web.Response:
        """The job's log, its last `tail` characters at most (default and most: max_log_bytes).
        With tokens for reads, only the job's owner or an admin reads it."""
        limit = self.backend.settings.max_log_bytes
        tail = params_of(request, ("tail",)).get("tail")
        if tail is not None and not (tail.isascii() and tail.isdigit() and 1 <= int(tail) <= limit):
            raise ApiError(400, f"tail must be an integer between 1 and {limit}")
        sid = submission_id_of(request)
        if self.backend.settings.api_reads_need_token:
            caller = self.caller(request)
            status = await self.backend.store.get(sid, history=False)
            if status is not None and not access.may_stop(caller, status.owner):
                raise ApiError(403, f"{caller.name!r} may not read the logs of this job: only its owner "
                                    f"{status.owner!r} or an admin may")
        try:
            cluster, text, truncated = await self.backend.logs(sid, int(tail) if tail else limit)
        except LogsUnavailable as exc:
            raise ApiError(409, str(exc)) from None
        except RayError as exc:
            status = await self.backend.store.get(sid, history=False)
            raise ApiError(502, f"cluster {status.cluster if status else None} did not give the logs: {exc}") from None
        except LookupError:
            raise ApiError(404, f"no job {sid!r}") from None
        return _json({"submission_id": sid, "cluster": cluster, "logs": text, "truncated": truncated})

    async def stop_job(self, request: web.Request) -> web.Response:
        params_of(request, ())
        sid = submission_id_of(request)
        reason = stop_reason_of(await request.read())
        caller = self.caller(request)
        try:
            answer = await self.backend.request_stop(sid, reason, caller)
        except StopTimeout as exc:
            raise ApiError(504, str(exc)) from None
        return _json(answer, STOP_STATUS.get(str(answer.get("outcome")), 500))

    async def delete_job(self, request: web.Request) -> web.Response:
        """Forget a final job, and delete it from its cluster; only its owner or an admin."""
        params_of(request, ())
        sid = submission_id_of(request)
        caller = self.caller(request)
        status = await self.backend.store.get(sid)
        if status is None:
            raise ApiError(404, f"no job {sid!r}")
        if not access.may_stop(caller, status.owner):
            raise ApiError(403, f"{caller.name!r} may not delete this job: only its owner {status.owner!r} or an admin may")
        if not status.final:
            raise ApiError(409, f"job {sid!r} is {status.state}: stop it first")
        try:
            await self.backend.delete_job(status)
        except RayError as exc:
            raise ApiError(502, f"cluster {status.cluster} did not delete the job: {exc}") from None
        return _json({"submission_id": sid, "deleted": True})

    # ---- clusters and events -------------------------------------------------------------

    async def clusters(self, request: web.Request) -> web.Response:
        params_of(request, ())
        return _json({"clusters": await self.backend.clusters()})

    async def queues(self, request: web.Request) -> web.Response:
        """The queues as the scheduler last reported them (docs/queues.md)."""
        params_of(request, ())
        report = await self.backend.store.report(QUEUES_REPORT)
        queues = orjson.loads(report[0]) if report is not None else []
        return _json({"queues": queues if isinstance(queues, list) else []})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: each lifecycle event as `event: <routing key>` and `data: <json>`.

        The hub gives each stream a bounded queue and drops its oldest events when the client
        reads slowly, so a stream never slows the daemon; a client that takes nothing for
        WRITE_TIMEOUT_S is disconnected."""
        pattern = pattern_param(params_of(request, ("pattern",)).get("pattern", "#"))
        return await self.stream(request, pattern, named_frame)

    async def stream(self, request: web.Request, pattern: str,
                     frame: Callable[[Mapping[str, Any]], bytes]) -> web.StreamResponse:
        """A server-sent event stream of the hub's events matching `pattern`, each written as
        `frame` makes it (the API names each event; the dashboard's stream does not)."""
        ended = self._ended
        if ended is None or ended.done():
            raise ApiError(503, "the daemon is stopping")
        if not self.slots.take():
            raise ApiError(503, f"{self.slots.limit} event streams are open, the most this service serves "
                                "(max_event_streams); try again later", {"Retry-After": "10"})
        try:
            return await self._stream(request, pattern, ended, frame)
        finally:
            self.slots.give_back()

    async def _stream(self, request: web.Request, pattern: str, ended: asyncio.Future[None],
                      frame: Callable[[Mapping[str, Any]], bytes]) -> web.StreamResponse:
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
                    await self._send(response, frame(event))
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
