"""Control: stop requests, from the broker (`control.stop`) and from the status service.

Stop requests arrive on a durable queue of their own on the event exchange (`control_queue`,
bound to `control.stop`), so none is missed while the daemon is down. A request speaks for the
broker user in its `user_id` (checked by RabbitMQ). The status service publishes the stops of its
HTTP API with the daemon's own broker user and names the API's caller in `x-rmcs-caller` (and
`x-rmcs-caller-admin`); those headers count only on a message from the daemon's own user.
Each answer is published as `control.stop.answer`, and to `reply_to` when the request set it and
names a queue the requester can own (server-named or exclusive), never one of rmcs's own.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import aio_pika
import aiormq
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from producers.wire import STOP_ANSWER_KEY, STOP_KEY

from .access import CALLER_ADMIN_HEADER, CALLER_HEADER, Caller, broker_caller, may_stop, refusal
from .book import JobBook
from .dependents import Dependents
from .jobs import JobState
from .leadership import leader_queue
from .permissions import reply_queues
from .probing import Prober
from .scheduling import Scheduler
from .settings import Settings
from .status.store import StatusStore
from .stopping import StopAnswer, stop_on_cluster

log = structlog.get_logger("rmcs.control")


def request_caller(message: AbstractIncomingMessage, daemon_user: str | None, settings: Settings) -> Caller:
    """Who a stop request speaks for (see the module's docstring)."""
    headers = message.headers or {}
    named = headers.get(CALLER_HEADER)
    if isinstance(named, bytes):
        named = named.decode("utf-8", "replace")
    if daemon_user is not None and message.user_id == daemon_user and isinstance(named, str) and named:
        return Caller(named, admin=headers.get(CALLER_ADMIN_HEADER) in (True, "true", b"true"))
    return broker_caller(message.user_id, settings)


class Control:
    def __init__(self, settings: Settings, *, scheduler: Scheduler, book: JobBook, dependents: Dependents,
                 prober: Prober, store: StatusStore, daemon_user: str | None) -> None:
        self.settings = settings
        self.dependents = dependents
        self.scheduler = scheduler
        self.book = book
        self.prober = prober
        self.store = store
        self.daemon_user = daemon_user
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._events: aio_pika.abc.AbstractExchange | None = None
        self._connection: AbstractRobustConnection | None = None

    async def start(self, connection: AbstractRobustConnection) -> None:
        s = self.settings
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=16)
        self._events = await channel.declare_exchange(s.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        self._channel = channel
        self._connection = connection
        control = await channel.declare_queue(s.control_queue, durable=True)
        await control.bind(self._events, STOP_KEY)
        await control.consume(self._on_request)

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        try:
            request = orjson.loads(message.body)
            sid = request["submission_id"]
            reason = request.get("reason") or "stop requested"
            if not isinstance(sid, str) or not isinstance(reason, str):
                raise TypeError("submission_id and reason must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            answer: Mapping[str, Any] = {"submission_id": None, "outcome": "invalid",
                                         "message": f"stop request not understood: {exc}"}
        else:
            caller = request_caller(message, self.daemon_user, self.settings)
            answer = (await self.stop_job(sid, reason, caller)).to_json()
        await self._answer(message, answer)
        await message.ack()

    async def _answer(self, request: AbstractIncomingMessage, answer: Mapping[str, Any]) -> None:
        assert self._events is not None and self._channel is not None
        body = orjson.dumps({"event": STOP_ANSWER_KEY, **answer})
        msg = aio_pika.Message(body, content_type="application/json", correlation_id=request.correlation_id)
        await self._events.publish(msg, routing_key=STOP_ANSWER_KEY)
        if request.reply_to:
            refused = await self._reply_refusal(request)
            if refused is None:
                await self._channel.default_exchange.publish(msg, routing_key=request.reply_to)
            else:
                log.warning("stop answer not sent to reply_to", reply_to=request.reply_to, why=refused,
                            requester=request.user_id)

    async def _reply_refusal(self, request: AbstractIncomingMessage) -> str | None:
        """Why the answer may not go to the request's `reply_to` (None: it may). The daemon
        publishes with its own broker rights, so a reply queue must be one the requester can
        own: server-named (`amq.gen-...`) or exclusive to a connection, never a queue of rmcs's."""
        s, name = self.settings, str(request.reply_to)
        if self.daemon_user is not None and request.user_id == self.daemon_user \
                and re.fullmatch(reply_queues(s), name):
            return None  # the status service's own reply queue
        if name in (s.intake_queue, s.dead_letter_queue, s.status_queue, s.control_queue, leader_queue(s)) \
                or name.startswith((s.intake_queue + ".", s.status_queue + ".", s.control_queue + ".")):
            return "reply_to names one of rmcs's own queues"
        if name.startswith("amq.gen-"):
            return None
        if self._connection is None:
            return "cannot check reply_to"
        channel = await self._connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelLockedResource:
            return None  # exclusive to another connection: its requester's
        except aiormq.exceptions.ChannelNotFoundEntity:
            return "reply_to names no queue"
        except aiormq.exceptions.AMQPError as exc:
            return f"reply_to cannot be checked: {exc}"
        finally:
            if not channel.is_closed:
                await channel.close()
        return "reply_to names a queue that is neither server-named nor exclusive"

    async def stop_job(self, submission_id: str, reason: str, caller: Caller) -> StopAnswer:
        """Stop a job wherever it is, if `caller` is its owner or an admin. Repeating it is harmless."""
        with structlog.contextvars.bound_contextvars(submission_id=submission_id, requester=caller.name):
            answer = await self._stop_job(submission_id, reason, caller)
            if answer.outcome == "refused":
                log.warning("stop refused", message=answer.message)
            return answer

    @staticmethod
    def _refused(submission_id: str, caller: Caller, owner: str | None) -> StopAnswer | None:
        if may_stop(caller, owner):
            return None
        return StopAnswer(submission_id, "refused", refusal(caller, owner))

    async def _stop_job(self, submission_id: str, reason: str, caller: Caller) -> StopAnswer:
        held = self.scheduler.window.get(submission_id)
        if held is not None:
            if (refused := self._refused(submission_id, caller, held.job.owner)) is not None:
                return refused
            if held.in_flight:
                self.scheduler.stop_after_dispatch(submission_id, reason)
                log.info("stop requested during dispatch; will stop it on its cluster")
                return StopAnswer(submission_id, "stopping", "being dispatched; it is stopped on its cluster next")
            await self.scheduler.finish_held(held, JobState.CANCELLED, reason)
            return StopAnswer(submission_id, "cancelled", "cancelled before dispatch; it never reaches a cluster")
        waiting = await self.dependents.store.get(submission_id)
        if waiting is not None:
            if (refused := self._refused(submission_id, caller, waiting.owner)) is not None:
                return refused
            await self.dependents.end(waiting, JobState.CANCELLED, reason)
            return StopAnswer(submission_id, "cancelled", "cancelled while waiting for its dependencies")
        t = self.book.get(submission_id)
        known = t or await self.book.journal.get(submission_id)
        if known is not None and (refused := self._refused(submission_id, caller, known.job.owner)):
            return refused
        running = next((r for r in (t, known) if r is not None and not r.final), None)
        if running is not None:
            await self.book.journal.fence()  # a deposed leader sends no stop (its epoch is refused)
            return await stop_on_cluster(self.prober, running, reason)
        status = await self.store.get(submission_id, history=False)
        if status is not None and (refused := self._refused(submission_id, caller, status.owner)):
            return refused
        # Between attempts (FAILED or LOST, retry queued) the job is not over: record the stop,
        # and the next attempt's message is dropped as CANCELLED when it arrives.
        between = (known is not None and known.state in (JobState.FAILED, JobState.LOST)
                   and known.job.attempt <= known.job.max_retries)
        if not between and ((known is not None and known.final) or (status is not None and status.final)):
            state = status.state if status is not None else known.state.value  # type: ignore[union-attr]
            return StopAnswer(submission_id, "already_final", f"the job already ended: {state}")
        if status is not None and status.state in ("DISPATCHED", "RUNNING"):
            return StopAnswer(submission_id, "unknown", "the job runs on a cluster this daemon does not follow")
        await self.book.journal.cancel(submission_id, reason, None if caller.admin else caller.name)
        log.info("stop recorded for a job not received yet")
        mine = "" if caller.admin else f" if it is {caller.name!r}'s"
        return StopAnswer(submission_id, "recorded",
                          f"no such job has reached the daemon; if one with this id arrives it is cancelled{mine}")
