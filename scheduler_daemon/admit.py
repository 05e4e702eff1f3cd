"""The intake decision (pure): what to do with a job that arrived, given what the daemon
already knows of its id. The receiver gathers the facts and carries the verdict out."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .jobs import Job


class Verdict(str, enum.Enum):
    ALREADY_DISPATCHED = "already_dispatched"  # a redelivery or retry copy of a dispatched attempt: ack
    DUPLICATE = "duplicate"                    # a new message reusing an accepted id: dead-letter
    ALREADY_ENDED = "already_ended"            # redelivered after it ended before dispatch: ack
    CANCELLED = "cancelled"                    # a stop was recorded for it before it arrived: ack
    COPY_OF_HELD = "copy_of_held"              # a second message for a job in the window: ack it
    NEW_DELIVERY = "new_delivery"              # the held job's delivery died with a channel: keep this one
    HOLD = "hold"                              # into the window


@dataclass(frozen=True)
class Facts:
    """What the daemon knows of the job's id when its message arrives."""

    redelivered: bool
    known_attempt: int | None = None          # the attempt already dispatched, if any
    ended: tuple[str, str] | None = None       # (state, reason) of an end before dispatch
    cancellation: tuple[str, str | None] | None = None  # (reason, requester) of a recorded stop
    held: bool = False                         # the window holds a job with this id
    held_delivery_live: bool = False           # ... and the message that brought it is still live
    released: bool = False                     # a waiting job the daemon put back once its dependencies were met


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    state: str | None = None         # ALREADY_ENDED: the state it ended in
    verify_everywhere: bool = False  # HOLD: it may already be on a cluster; look before dispatching
    foreign_stop: bool = False       # a recorded stop was not the owner's and is ignored


def admit(job: Job, facts: Facts) -> Decision:
    retry_or_redelivery = facts.redelivered or job.attempt > 1
    if facts.known_attempt is not None and facts.known_attempt >= job.attempt:
        if retry_or_redelivery or facts.released:
            return Decision(Verdict.ALREADY_DISPATCHED)
        return Decision(Verdict.DUPLICATE,
                        f"duplicate submission_id {job.submission_id!r}: a job with this id was already accepted")
    if facts.ended is not None and (facts.redelivered or facts.released):
        state, reason = facts.ended
        return Decision(Verdict.ALREADY_ENDED, reason, state=state)
    foreign = False
    if facts.cancellation is not None:
        reason, requester = facts.cancellation
        if requester is None or requester == job.owner:
            return Decision(Verdict.CANCELLED, reason)
        foreign = True
    if facts.held:
        return Decision(Verdict.COPY_OF_HELD if facts.held_delivery_live else Verdict.NEW_DELIVERY)
    return Decision(Verdict.HOLD, verify_everywhere=retry_or_redelivery, foreign_stop=foreign)
