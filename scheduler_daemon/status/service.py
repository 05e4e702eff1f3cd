"""The status service: the status cache's event consumer, the HTTP API, the live event stream,
the log proxy and the web dashboard, in a process of its own.

It reaches the scheduler only through the broker (the event stream in, stop requests out) and
the status store (the job history, and the reports the scheduler writes there: its clusters and
its metrics). So a slow client, many event streams or a large log cost this process, never a
dispatch. By default the scheduler starts and supervises it (`supervisor.py`); it also runs on its
own (`rmcs-status`), for a deployment that wants several.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from typing import Any, Mapping

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from producers.config import broker_user
from producers.wire import STOP_KEY

from ..access import CALLER_ADMIN_HEADER, CALLER_HEADER, Caller, load_api_tokens
from ..metrics import ServiceMetrics
from ..jobs import attempt_ray_id
from ..rayapi import RayDashboard, RayError, RayNotFound
from ..settings import ClusterConfig, Settings
from .api import HttpServer, LogsUnavailable, StopTimeout
from .consumer import StatusConsumer
from .dashboard import Dashboard
from .hub import EventHub
from .backend import status_store
from .logtail import log_tail
from .tails import LogKeeper
from .records import JobStatus
from .store import CLUSTERS_REPORT, METRICS_REPORT, StatusStore

log = structlog.get_logger("rmcs.status")

STOP_ANSWER_TIMEOUT_S = 10.0
LOG_FETCHES = 4  # logs read from clusters at once; more wait their turn (each holds up to 6 x max_log_bytes)


def reports_fresh_for(settings: Settings) -> float:
    """How old the scheduler's last report may be before the service stops calling it ready."""
    return max(5.0, 5 * settings.probe_interval_s)


class StatusService:
    def __init__(self, settings: Settings, clusters: tuple[ClusterConfig, ...]) -> None:
        self.settings = settings
        self.tokens = load_api_tokens(settings.api_tokens_file)
        self.configs = {c.name: c for c in clusters}
        self.stopping = asyncio.Event()
        self.store: StatusStore = status_store(settings)
        self.hub = EventHub()
        self.log_keeper = LogKeeper(settings, self.dashboard, self.store)
        self.consumer = StatusConsumer(settings, self.store, self.hub, self.log_keeper.event)
        self.http = HttpServer(self)
        self.http.app.add_routes(Dashboard(self, self.http).routes())  # GET /: the web dashboard
        self.metrics = ServiceMetrics()
        self.user = broker_user(settings.amqp_url)
        self._connection: AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._events: aio_pika.abc.AbstractExchange | None = None
        self._reply_queue: aio_pika.abc.AbstractQueue | None = None
        self._answers: dict[str, asyncio.Future[Mapping[str, Any]]] = {}
        self._dashboards: dict[str, RayDashboard] = {}
        self._log_fetches = asyncio.Semaphore(LOG_FETCHES)
        self._keeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.open()
        self._keeping = asyncio.create_task(self.log_keeper.run(self.stopping), name="log-tails")
        self._connection = await aio_pika.connect_robust(self.settings.amqp_url, client_properties={
            "connection_name": f"rmcs-status {socket.gethostname()}:{os.getpid()}"},
            **self.settings.amqp_connect_kwargs())
        await self.consumer.start(self._connection)
        channel = await self._connection.channel(publisher_confirms=True)
        self._channel = channel
        self._events = await channel.declare_exchange(self.settings.events_exchange, aio_pika.ExchangeType.TOPIC,
                                                      durable=True)
        # Ours alone (exclusive), under a name the daemon's broker user may declare (permissions.py).
        replies = await channel.declare_queue(f"{self.settings.status_queue}.reply.{uuid.uuid4().hex}",
                                              exclusive=True, auto_delete=True)
        self._reply_queue = replies
        await replies.consume(self._on_answer, no_ack=True)
        await self.http.start()
        log.info("status service started", http_addr=self.settings.http_addr)

    async def stop(self) -> None:
        self.stopping.set()
        await _quietly(self.http.stop())
        if self._keeping is not None:
            await _quietly(self._keeping)
        for dashboard in self._dashboards.values():
            await _quietly(dashboard.close())
        if self._connection is not None:
            await _quietly(self._connection.close())
        await _quietly(self.store.close())
        log.info("status service stopped")

    # ---- what the HTTP API asks ---------------------------------------------------------

    @property
    def broker_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def role(self) -> str:
        """"leader" or "standby": the role of the daemon this service serves (its parent, or its
        own process inline). Without failover, or with it on one host, it serves the leader."""
        if not (self.settings.failover and self.settings.shared_state):
            return "leader"
        daemon = os.getpid() if self.settings.status_service == "inline" else os.getppid()
        return "leader" if await self.store.leader() == f"{socket.gethostname()}:{daemon}" else "standby"

    async def readiness(self) -> dict[str, Any]:
        views = await self.clusters()
        report = await self.store.report(CLUSTERS_REPORT)
        fresh = report is not None and time.time() - report[1] < reports_fresh_for(self.settings)
        return {"role": await self.role(), "broker": self.broker_connected, "scheduler": fresh,
                "clusters_probed": fresh and any(v.get("last_probe") is not None for v in views),
                "stopping": self.stopping.is_set()}

    async def clusters(self) -> list[dict[str, Any]]:
        report = await self.store.report(CLUSTERS_REPORT)
        if report is None:
            return []
        views = orjson.loads(report[0])
        return views if isinstance(views, list) else []

    async def metrics_text(self) -> bytes:
        scheduler = await self.store.report(METRICS_REPORT)
        return self.metrics.render(await self.store.counts_by_state(), len(self.hub),
                                   scheduler[0] if scheduler is not None else None)

    async def logs(self, submission_id: str, tail: int) -> tuple[str, str, bool]:
        """The job's cluster, the last `tail` characters of its log from that cluster, and
        whether the log was longer. A few fetches at a time (LOG_FETCHES), each in bounded memory."""
        status = await self.store.get(submission_id, history=False)
        if status is None:
            raise LookupError(f"no job {submission_id!r}")
        cluster = status.cluster
        if cluster is None:
            raise LogsUnavailable(f"job {submission_id!r} has not been dispatched to a cluster")
        if status.deleted_from_cluster or cluster not in self.configs:
            kept = await self._kept_logs(submission_id)
            if kept is not None:
                return kept
        if status.deleted_from_cluster:
            raise LogsUnavailable(f"job {submission_id!r} was deleted from {cluster} after its retention")
        dashboard = self.dashboard(cluster)
        if dashboard is None:
            raise LogsUnavailable(f"cluster {cluster} is not configured")
        try:
            async with self._log_fetches:
                text, truncated = await log_tail(dashboard, attempt_ray_id(submission_id, status.attempt), tail)
            return cluster, text, truncated
        except RayError:
            kept = await self._kept_logs(submission_id, tail)
            if kept is None:
                raise
            return kept

    async def delete_job(self, status: JobStatus) -> None:
        """Delete a final job (seed 004's `job delete`): each attempt's Ray job from its cluster,
        unless retention did already, then the job's record, history and kept log tail."""
        if not status.deleted_from_cluster:
            sent = {(t.attempt, t.cluster) for t in status.transitions if t.state == "DISPATCHED" and t.cluster}
            for attempt, cluster in sorted(sent):
                dashboard = self.dashboard(cluster)
                if dashboard is None:
                    continue  # a cluster removed from the clusters file: nothing to ask
                try:
                    await dashboard.delete(attempt_ray_id(status.submission_id, attempt))
                except RayNotFound:
                    pass  # gone already
        await self.store.forget(status.submission_id)

    def dashboard(self, cluster: str) -> RayDashboard | None:
        """This service's client for a configured cluster (made on first use), None for another."""
        dashboard = self._dashboards.get(cluster)
        if dashboard is None:
            config = self.configs.get(cluster)
            if config is None:
                return None
            dashboard = self._dashboards[cluster] = RayDashboard(config, self.settings.dispatch_timeout_s)
        return dashboard

    async def _kept_logs(self, submission_id: str, tail: int) -> tuple[str, str, bool] | None:
        """The log tail kept when the job ended (`tails.py`), with a first line
        saying so: the cluster no longer has the logs (its node removed, the job deleted)."""
        kept = await self.store.log_tail(submission_id)
        if kept is None:
            return None
        what = "the end of its logs" if kept.cut else "its logs"
        note = f"[rmcs: {kept.cluster} no longer has this job's logs; {what}, kept when attempt {kept.attempt} ended]\n"
        text = kept.text[-tail:] if tail else kept.text
        return kept.cluster, note + text, kept.cut or len(kept.text) > len(text)

    async def request_stop(self, submission_id: str, reason: str | None, caller: Caller) -> Mapping[str, Any]:
        """Ask the scheduler over the broker, as `control.stop` with this service's reply queue,
        naming the API's caller; wait for its answer."""
        assert self._events is not None and self._reply_queue is not None
        correlation_id = uuid.uuid4().hex
        answer: asyncio.Future[Mapping[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[correlation_id] = answer
        body = {"submission_id": submission_id, **({"reason": reason} if reason is not None else {})}
        try:
            await self._events.publish(aio_pika.Message(
                orjson.dumps(body), content_type="application/json", correlation_id=correlation_id,
                reply_to=self._reply_queue.name, user_id=self.user, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={CALLER_HEADER: caller.name, CALLER_ADMIN_HEADER: "true" if caller.admin else "false"}),
                routing_key=STOP_KEY)
            return await asyncio.wait_for(asyncio.shield(answer), STOP_ANSWER_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise StopTimeout(f"the scheduler did not answer within {STOP_ANSWER_TIMEOUT_S:g} s; the request "
                              "stays queued and is carried out when the scheduler takes it") from None
        finally:
            self._answers.pop(correlation_id, None)

    async def _on_answer(self, message: AbstractIncomingMessage) -> None:
        waiting = self._answers.get(message.correlation_id or "")
        if waiting is None or waiting.done():
            return
        try:
            answer = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return
        if isinstance(answer, dict):
            answer.pop("event", None)
            waiting.set_result(answer)


async def _quietly(aw: Any) -> None:
    try:
        await asyncio.wait_for(aw, 5)
    except Exception as exc:
        log.error("status service shutdown step failed", error=repr(exc))
