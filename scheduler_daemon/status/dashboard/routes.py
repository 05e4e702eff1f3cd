"""The dashboard's routes: gather what a view shows (the status store, the scheduler's reports,
a job's logs from its cluster) and render it with `pages`.

A request with the header `X-Rmcs-Live: 1` gets only the page's live region: that is what the
page's script fetches again when the dashboard's event stream (`/live`) says something changed.
The stream is the service's shared event hub, so a tab costs a bounded queue in this process and
never a thing in the scheduler's; the script fetches at most a few times a second however many
events arrive.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Mapping

import orjson
from aiohttp import web

from ... import access
from ...rayapi import RayError
from ..api import STOP_STATUS, Backend, HttpServer, LogsUnavailable, StopTimeout
from ..records import BadQuery, ListQuery, now_minus
from ..store import CLUSTERS_REPORT, QUEUES_REPORT, SCHEDULER_REPORT
from . import pages
from .layout import shell

STATIC = Path(__file__).with_name("static")
FILTERS = ("state", "queue", "owner", "cluster", "tag")
PAGE_SIZE = 50
LOG_TAIL_LINES = 200
LOG_TIMEOUT_S = 3.0
MAX_PARAM_CHARS = 256


def live_frame(event: Mapping[str, Any]) -> bytes:
    """What a page needs to know of an event: which job or cluster changed (an unnamed SSE event)."""
    slim = {k: event.get(k) for k in ("event", "submission_id", "state", "cluster")}
    return b"data: " + orjson.dumps(slim) + b"\n\n"


LOG_TAIL_CHARS = 64 * 1024  # what the job page asks of a log: its end, enough for LOG_TAIL_LINES


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Dashboard:
    def __init__(self, backend: Backend, server: HttpServer) -> None:
        self.backend = backend
        self.server = server

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self.overview),
            web.get("/jobs", self.jobs),
            web.get("/jobs/{submission_id}", self.job),
            web.post("/jobs/{submission_id}/stop", self.stop),
            web.get("/clusters", self.clusters),
            web.get("/live", self.live, allow_head=False),
            web.static("/static", STATIC, append_version=False),
        ]

    # ---- rendering ------------------------------------------------------------------------

    @staticmethod
    def _answer(request: web.Request, parts: pages.Parts) -> web.Response:
        if request.headers.get("X-Rmcs-Live") == "1":
            text = parts.live
        else:
            text = shell(parts.title, request.path.split("/")[1] or "overview", parts.before, parts.live,
                         parts.after, data=parts.data)
        return web.Response(text=text, status=parts.status, content_type="text/html", headers={
            "Cache-Control": "no-store", "Vary": "X-Rmcs-Live", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
            "Referrer-Policy": "same-origin"})

    async def _report(self, name: str) -> tuple[Any, float | None]:
        report = await self.backend.store.report(name)
        if report is None:
            return None, None
        return orjson.loads(report[0]), max(0.0, time.time() - report[1])

    async def _queues(self) -> list[dict[str, Any]]:
        """The queues as the scheduler last reported them (as GET /api/v1/queues)."""
        queues, _ = await self._report(QUEUES_REPORT)
        return [q for q in queues if isinstance(q, dict)] if isinstance(queues, list) else []

    def _queue_names(self, reported: list[dict[str, Any]]) -> list[str]:
        names = {"default", *(q.name for q in self.backend.settings.queues), *(str(q.get("name")) for q in reported)}
        return ["default", *sorted(names - {"default"})]

    async def _clusters(self) -> tuple[list[dict[str, Any]], float | None]:
        views, report_age = await self._report(CLUSTERS_REPORT)
        return (views if isinstance(views, list) else []), report_age

    async def _scheduler(self) -> dict[str, Any]:
        report, _ = await self._report(SCHEDULER_REPORT)
        return report if isinstance(report, dict) else {}

    # ---- views ----------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        store = self.backend.store
        views, report_age = await self._clusters()
        hour = await store.activity(now_minus(3600))
        recent = await store.activity(now_minus(300))
        data = pages.Overview(await store.counts_by_state(), await self._scheduler(), hour["finished"],
                              recent["dispatched"], views, report_age, await self._queues())
        return self._answer(request, pages.overview(data))

    async def jobs(self, request: web.Request) -> web.Response:
        given = {k: v for k, v in request.query.items() if v}
        filters = {k: given[k][:MAX_PARAM_CHARS] for k in FILTERS if k in given}
        cursor = given.get("cursor")
        views, _ = await self._clusters()
        names = [str(c.get("name")) for c in views]
        queues = self._queue_names(await self._queues())
        error = None
        unknown = sorted(set(given) - set(FILTERS) - {"cursor"})
        page = None
        if unknown:
            error = f"unknown filter {unknown[0]!r}; the filters are {', '.join(FILTERS)}"
        elif filters.get("queue") not in (None, *queues):
            error = f"no queue {filters['queue']!r}; the queues are {', '.join(queues)}"
        else:
            query = ListQuery(state=filters.get("state"), cluster=filters.get("cluster"), tag=filters.get("tag"),
                              owner=filters.get("owner"), queue=filters.get("queue"), limit=PAGE_SIZE, cursor=cursor,
                              newest_first=True)
            try:
                page = await self.backend.store.list(query)
            except BadQuery as exc:
                error = str(exc)
        view = pages.JobsView(filters, page.jobs if page else [], page.next_cursor if page else None,
                              cursor is not None, names, error, queues)
        return self._answer(request, pages.jobs(view))

    async def job(self, request: web.Request, notice: str | None = None, notice_ok: bool = True,
                  status: int = 200) -> web.Response:
        sid = request.match_info["submission_id"]
        record = await self.backend.store.get(sid) if len(sid) <= 128 else None
        if record is None:
            return self._answer(request, pages.not_found(f"No job {sid!r} is known."))
        scheduler = await self._scheduler()
        waiting = scheduler.get("waiting") or []
        held = next((w for w in waiting if w.get("submission_id") == sid), None)
        views, _ = await self._clusters()
        url = next((c.get("dashboard_url") for c in views if c.get("name") == record.cluster), None)
        logs, note = None, None
        if request.headers.get("X-Rmcs-Live") != "1":  # the live region has no logs: the script follows them
            logs, note = await self._logs(sid)
        view = pages.JobView(record, held, len(waiting), url, logs, note, bool(self.backend.tokens),
                             notice, notice_ok, status)
        return self._answer(request, pages.job(view))

    async def _logs(self, sid: str) -> tuple[str | None, str | None]:
        try:
            _, text, _ = await asyncio.wait_for(self.backend.logs(sid, LOG_TAIL_CHARS), LOG_TIMEOUT_S)
        except LogsUnavailable as exc:
            return None, str(exc)
        except (RayError, asyncio.TimeoutError) as exc:
            return None, f"the cluster did not give the logs: {exc or 'timed out'}"
        except LookupError:
            return None, "no such job"
        return tail(text), None if text else "No output yet."

    async def clusters(self, request: web.Request) -> web.Response:
        views, report_age = await self._clusters()
        history = await self.backend.store.cluster_history()
        return self._answer(request, pages.clusters(views, history, report_age))

    async def live(self, request: web.Request) -> web.StreamResponse:
        return await self.server.stream(request, "#", live_frame)

    # ---- the stop form (JavaScript off; with it, the page calls the API) ---------------------

    async def stop(self, request: web.Request) -> web.Response:
        sid = request.match_info["submission_id"]
        if not _same_origin(request):
            return await self.job(request, "Refused: the form was not sent from this dashboard.", False, 403)
        form = await request.post()
        token, reason = str(form.get("token") or ""), str(form.get("reason") or "")[:1024] or None
        if self.backend.tokens:
            user = access.token_user(f"Bearer {token}", self.backend.tokens)
            if user is None:
                return await self.job(request, "Refused: that API token is not valid.", False, 401)
            caller = access.token_caller(user, self.backend.settings)
        else:
            caller = access.TRUSTED_LOCAL
        try:
            answer = await self.backend.request_stop(sid, reason, caller)
        except StopTimeout as exc:
            return await self.job(request, str(exc), False, 504)
        status = STOP_STATUS.get(str(answer.get("outcome")), 500)
        message = str(answer.get("message") or answer.get("outcome"))
        return await self.job(request, message, status == 202, status)


def _same_origin(request: web.Request) -> bool:
    """A form post from this dashboard, not from another site the user has open."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        return origin == f"{request.scheme}://{request.host}"
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
