"""Receiving: an intake message becomes a held job, or gets its final intake outcome.

The message is parsed at the edge (`jobs.parse_job`), the facts about its id are gathered in
one trip to the journal, and `admit.admit` (pure) decides; this object carries it out.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage

from .admission import Held, Window
from .admit import Facts, Verdict, admit
from .book import JobBook
from .dependents import Dependents, is_release
from .events import EventPublisher, JobEvent
from .intake import Intake, message_meta
from .jobs import SUBMISSION_ID, InvalidJob, JobState, parse_job
from .queueconf import DEFAULT, queue_refusal
from .scheduling import VERIFY_ALL
from .settings import Settings
from .status.store import StatusStore

log = structlog.get_logger("rmcs.intake")


class Receiver:
    def __init__(self, settings: Settings, *, window: Window, book: JobBook, publisher: EventPublisher,
                 intake: Callable[[], Intake], stopping: asyncio.Event, wake: Callable[[], None],
                 clock: Callable[[], float], dependents: Dependents, store: StatusStore | None = None) -> None:
        self.settings = settings
        self.dependents = dependents
        self.store = store
        self.window = window
        self.book = book
        self.publisher = publisher
        self._intake = intake
        self._stopping = stopping
        self._wake = wake
        self.clock = clock
        self._queues = {q.name: q for q in settings.queues}

    async def on_message(self, message: AbstractIncomingMessage, queue: str = DEFAULT) -> None:
        intake = self._intake()
        if self._stopping.is_set():
            await intake.requeue(message)
            return
        meta = message_meta(message, intake.user, self.settings.default_owner, queue)
        try:
            job = parse_job(message.body, meta,
                            default_resources=self.settings.default_resources,
                            max_bytes=self.settings.max_message_bytes,
                            ceiling=self.settings.max_job_resources)
            refusal = queue_refusal(job, self._queues)
            if refusal is not None:
                raise InvalidJob(refusal, job.submission_id, job.job_id)
        except InvalidJob as exc:
            await self._reject(message, exc, meta.owner, queue)
            return
        with structlog.contextvars.bound_contextvars(submission_id=job.submission_id):
            # One trip to the journal's thread for all it knows of this id (the hot path).
            record = await self.book.journal.lookup(job.submission_id)
            known = self.book.get(job.submission_id) or record.tracked
            existing = self.window.get(job.submission_id)
            released = is_release(message, intake.user)
            decision = admit(job, Facts(
                released=released,
                redelivered=bool(message.redelivered),
                known_attempt=known.job.attempt if known is not None else None,
                ended=record.ended, cancellation=record.cancellation,
                held=existing is not None,
                held_delivery_live=existing is not None and intake.is_live(existing.delivery)))
            verdict = decision.verdict
            if verdict == Verdict.ALREADY_DISPATCHED:
                assert known is not None
                log.info("redelivered job already dispatched; acknowledging", cluster=known.cluster)
                if self.book.get(job.submission_id) is None and not (known.final and known.published):
                    log.info("following a job the previous leader journaled", cluster=known.cluster,
                             state=known.state.value)
                    self.book.follow(known)
                await intake.ack(message)
                return
            if verdict == Verdict.DUPLICATE:
                await intake.dead_letter(message, decision.reason)
                log.warning("duplicate submission rejected")
                return
            if verdict == Verdict.ALREADY_ENDED:
                log.info("redelivered job had already ended before dispatch; acknowledging", state=decision.state)
                await self.book.emit(job, JobState(decision.state), None, decision.reason, final=True)
                await intake.ack(message)
                return
            if verdict == Verdict.CANCELLED:
                log.info("job cancelled before it was received", reason=decision.reason)
                await self.book.emit(job, JobState.CANCELLED, None, decision.reason, final=True)
                await intake.ack(message)
                return
            if decision.foreign_stop:
                log.warning("a stop recorded before the job arrived is not its owner's; the job goes on",
                            owner=job.owner)
            if verdict == Verdict.COPY_OF_HELD:
                log.info("second message for a held job; acknowledging the copy")
                await intake.ack(message)
                return
            if verdict == Verdict.NEW_DELIVERY:
                assert existing is not None
                log.info("held job redelivered after a reconnect; keeping the new delivery")
                existing.delivery = message
                return
            if await self.dependents.take(job, message, released=released):
                return  # it waits for its dependencies, outside the window (or ended)
            held = Held(job, message, self.clock())
            if record.intent is not None and record.intent[1] == job.attempt:
                # Sent to a cluster, or about to be, and not journaled (write-ahead dispatch): it is
                # looked for there, and only there, before it may go anywhere.
                held.verify_on = record.intent[0]
            elif message.redelivered and not self.book.journal.intents_trusted:
                # Without an intent it was never sent (nothing is sent before its intent is journaled),
                # unless intents were lost with the machine: then it is looked for everywhere first.
                held.verify_on = VERIFY_ALL
            self.window.add(held)
            if held.verify_on != VERIFY_ALL and not released:  # a released job was ACCEPTED before it waited
                # Sent without waiting: the job is placed meanwhile; the outbox keeps its events in
                # order. (Consumers drop the duplicate ACCEPTED of a redelivered job.)
                self.book.send(job, JobState.ACCEPTED, None)
            log.info("job accepted", priority=job.priority, resources=dict(job.resources),
                     attempt=job.attempt, redelivered=message.redelivered)
        self._wake()

    async def on_unrouted(self, message: AbstractIncomingMessage) -> None:
        """A message routed to no queue (through the alternate exchange): REJECTED with the reason
        and dead-lettered, never dropped (docs/queues.md)."""
        reason = (f"routing key {message.routing_key!r} reaches no queue; publish with key submit (queue "
                  "default) or submit.<queue> for a configured queue")
        sid = job_id = None
        try:
            data = orjson.loads(message.body)
            if isinstance(data, dict):
                given = data.get("submission_id")
                sid = given if isinstance(given, str) and SUBMISSION_ID.fullmatch(given) else None
                job_id = data.get("job_id") if isinstance(data.get("job_id"), str) else None
        except orjson.JSONDecodeError:
            pass
        owner = message_meta(message, self._intake().user, self.settings.default_owner).owner
        await self._reject(message, InvalidJob(reason, sid, job_id), owner, None)

    async def _reject(self, message: AbstractIncomingMessage, exc: InvalidJob, owner: str | None,
                      queue: str | None) -> None:
        """Dead-letter an invalid message with its reason, and publish REJECTED under its id
        only when no job has that id: an invalid message naming someone else's job must not end
        it in everyone's eyes (the status cache, a waiting producer, the retention)."""
        sid = exc.submission_id or message.message_id
        if sid is not None and await self._taken(sid):
            log.warning("message rejected; its id belongs to a job, so no REJECTED event", submission_id=sid,
                        reason=exc.reason, sender=owner, queue=queue)
        else:
            log.warning("message rejected", submission_id=exc.submission_id, reason=exc.reason, queue=queue)
            event = JobEvent(JobState.REJECTED, sid, exc.job_id, None,
                             message=exc.reason, final=True, correlation_id=message.correlation_id,
                             reply_to=message.reply_to, owner=owner, queue=queue)
            await self.publisher.publish(event)
        await self._intake().dead_letter(message, exc.reason)

    async def _taken(self, submission_id: str) -> bool:
        """Whether a job has this id: held, followed, journaled, or in the status cache."""
        if self.window.get(submission_id) is not None or self.book.get(submission_id) is not None:
            return True
        record = await self.book.journal.lookup(submission_id)
        if record.tracked is not None or record.ended is not None:
            return True
        return self.store is not None and await self.store.get(submission_id, history=False) is not None
