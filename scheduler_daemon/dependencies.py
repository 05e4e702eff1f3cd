"""Job dependencies (`depends_on`), the decisions. Pure.

A dependency is in one of three conditions: it SUCCEEDED (met), it ended any other way (the
waiting job is cancelled, naming it), or it is not over yet, or not known yet (the job waits;
its `queue_timeout_s` bounds the wait). `condition` reads what the daemon knows of one id;
`resolve` decides for a job from the conditions of all its dependencies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Mapping

from .jobs import TERMINAL, JobState


class Condition(str, enum.Enum):
    MET = "met"          # SUCCEEDED
    FAILED = "failed"    # ended any other way
    PENDING = "pending"  # on its way (waiting, held, dispatched, running, between attempts)
    UNKNOWN = "unknown"  # never seen


@dataclass(frozen=True)
class Known:
    """What one source says of a dependency: its last state, whether the daemon calls that
    final, and whether a retry follows (FAILED or LOST with attempts left: not over)."""

    state: str
    final: bool
    retry_follows: bool = False


def condition(known: Known | None) -> Condition:
    if known is None:
        return Condition.UNKNOWN
    try:
        state = JobState(known.state)
    except ValueError:
        return Condition.PENDING
    if not known.final or state not in TERMINAL or known.retry_follows:
        return Condition.PENDING
    return Condition.MET if state == JobState.SUCCEEDED else Condition.FAILED


class Verdict(str, enum.Enum):
    READY = "ready"    # every dependency SUCCEEDED: place it
    WAIT = "wait"      # some are not over (or not seen yet)
    CANCEL = "cancel"  # one ended otherwise


@dataclass(frozen=True)
class Resolution:
    verdict: Verdict
    reason: str = ""


def resolve(depends_on: Iterable[str], states: Mapping[str, tuple[Condition, str | None]]) -> Resolution:
    """`states`: per dependency its condition and last state. The first failed dependency, in
    the job's order, names the cancellation."""
    waiting = False
    for dep in depends_on:
        cond, state = states.get(dep, (Condition.UNKNOWN, None))
        if cond == Condition.FAILED:
            return Resolution(Verdict.CANCEL, f"dependency {dep} ended {state}, not SUCCEEDED")
        if cond != Condition.MET:
            waiting = True
    return Resolution(Verdict.WAIT if waiting else Verdict.READY)


def waiting_for(depends_on: Iterable[str], states: Mapping[str, tuple[Condition, str | None]]) -> str:
    """The WAITING event's message: which dependencies are not met yet."""
    left = [dep for dep in depends_on if states.get(dep, (Condition.UNKNOWN, None))[0] != Condition.MET]
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return f"waiting for {shown}"
