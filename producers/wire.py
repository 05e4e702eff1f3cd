"""The names on the wire that the daemon and its clients share: job states, routing keys, header
names, default exchange names and stop outcomes. Standard library only, so `producers` installs
alone and the daemon takes its names from here (the rules and limits are in `schema.py`).
"""

from __future__ import annotations

import enum
from typing import Any


class JobState(str, enum.Enum):
    ACCEPTED = "ACCEPTED"
    WAITING = "WAITING"  # held outside the window until its dependencies have SUCCEEDED
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    LOST = "LOST"
    RETRYING = "RETRYING"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    PREEMPTED = "PREEMPTED"  # stopped to give a queue its guarantee back; requeued as attempt + 1


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.REJECTED,
                      JobState.CANCELLED, JobState.EXPIRED, JobState.LOST})

# A Ray job's status -> the rmcs state the daemon records for it.
RAY_STATES = {"PENDING": JobState.DISPATCHED, "RUNNING": JobState.RUNNING,
              "SUCCEEDED": JobState.SUCCEEDED, "FAILED": JobState.FAILED, "STOPPED": JobState.STOPPED}

# An rmcs state -> the Ray-style status the producer helper reports (seed 000's API).
RAY_STATUS = {
    "ACCEPTED": "PENDING", "WAITING": "PENDING", "DISPATCHED": "PENDING", "RETRYING": "PENDING",
    "RUNNING": "RUNNING",
    "SUCCEEDED": "SUCCEEDED",
    "FAILED": "FAILED", "LOST": "FAILED", "REJECTED": "FAILED", "EXPIRED": "FAILED",
    "STOPPED": "STOPPED", "CANCELLED": "STOPPED", "PREEMPTED": "PENDING",
}


def ray_status(state: Any, final: Any = None) -> str:
    """Ray-style status of an rmcs state. FAILED or LOST with `final` false means a retry
    follows (max_retries), so the job is still PENDING as far as the caller is concerned."""
    if not isinstance(state, str):
        return "UNKNOWN"
    state = state.upper()
    if state in ("FAILED", "LOST") and final is False:
        return "PENDING"
    return RAY_STATUS.get(state, "UNKNOWN")


# ---- exchanges and routing keys -------------------------------------------------------------

INTAKE_EXCHANGE = "rmcs.jobs"          # direct; jobs are published here
SUBMIT_KEY = "submit"                   # the intake routing key (a setting, with this default)
EVENTS_EXCHANGE = "rmcs.events"        # topic; job and cluster events, stop requests and answers
STOP_KEY = "control.stop"               # {"submission_id", "reason"}, optional reply_to + correlation_id
STOP_ANSWER_KEY = "control.stop.answer"
JOB_EVENTS = "job.#"                    # job.<state>.<cluster>
CLUSTER_EVENTS = "cluster.#"            # cluster.<health>.<name>
NO_CLUSTER = "_"                        # the cluster word of a job event before placement


DEFAULT_QUEUE = "default"              # the v1 intake queue; every other queue Q has key submit.Q


def submit_key(queue: str | None, base: str = SUBMIT_KEY) -> str:
    """The routing key that reaches queue `queue` (`submit` for the default queue)."""
    return base if queue in (None, DEFAULT_QUEUE) else f"{base}.{queue}"


def job_event_key(state: str, cluster: str | None) -> str:
    """The routing key of a job event: `job.<state, lower case>.<cluster or _>`."""
    return f"job.{str(state).lower()}.{cluster or NO_CLUSTER}"


# ---- headers --------------------------------------------------------------------------------

REASON_HEADER = "x-rmcs-reason"    # on a dead-lettered job: why the daemon refused it
ATTEMPT_HEADER = "x-rmcs-attempt"  # on a retry the daemon publishes
OWNER_HEADER = "x-rmcs-owner"      # on retries the daemon publishes; trusted only from the daemon's user
# On a waiting job the daemon puts back in the intake queue once its dependencies have SUCCEEDED;
# trusted only from the daemon's user.
RELEASED_HEADER = "x-rmcs-released"
PREEMPTIONS_HEADER = "x-rmcs-preemptions"  # on requeues after preemption: attempts not counted as retries
# On a stop request the status service relays for an API caller; trusted only from the daemon's user.
CALLER_HEADER = "x-rmcs-caller"
CALLER_ADMIN_HEADER = "x-rmcs-caller-admin"

# ---- stop outcomes (the `outcome` of a stop answer, over HTTP or control.stop.answer) ---------

# The daemon took the request: cancelled (never dispatched), stopping (asked its cluster), or
# recorded (not received yet: cancelled when it arrives). Anything else is a refusal.
STOP_TAKEN = ("cancelled", "stopping", "recorded")
