"""Follow dispatched jobs to their end from what each cluster says of them. Pure.

`transitions` compares what the daemon last said of each job with the cluster's job list
and returns the state changes to publish, in order. `one_by_one` says whether to ask for
each followed job instead of reading the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from .jobs import RAY_STATES, TERMINAL, Job, JobState

@dataclass(frozen=True)
class Tracked:
    """A dispatched job: where it went and the last state the daemon gave it."""

    job: Job
    cluster: str
    node_id: str
    state: JobState
    published: bool = False
    final: bool = False
    seen_running: bool = False
    # Unix time the daemon first saw it RUNNING: its run_timeout_s counts from here (journaled).
    running_since: float | None = None

    def moved(self, state: JobState, *, final: bool = False, at: float | None = None) -> "Tracked":
        since = at if self.running_since is None and state == JobState.RUNNING else self.running_since
        return replace(self, state=state, published=False, final=final, running_since=since,
                       seen_running=self.seen_running or state == JobState.RUNNING)



_ORDER = {JobState.DISPATCHED: 1, JobState.RUNNING: 2}

# Ray keeps every job it ran (rmcs deletes its own after `ray_job_retention_s`, other users'
# stay), so a cluster's job list can be thousands long while rmcs follows a few jobs there.
# Measured in the daemon under load against the simulator (bench/throughput.py --history),
# asking for each job already pays at 25 listed jobs per followed one; with 1,000 past jobs per
# cluster it doubles dispatch (208 -> 441 jobs/s). Ray's side also builds every listed job.
LISTED_PER_FOLLOWED = 25


def one_by_one(followed: int, listed: int | None) -> bool:
    """Whether to ask for each of the `followed` jobs (`GET /api/jobs/<id>`) rather than read
    the cluster's whole list, which held `listed` jobs when last read (None: never read)."""
    return listed is not None and followed * LISTED_PER_FOLLOWED < listed


@dataclass(frozen=True)
class Change:
    tracked: Tracked
    state: JobState
    message: str | None
    # When it happened on Ray's clock, the clock of its snapshots: the job's start_time
    # for RUNNING, its end_time for an end; None when Ray does not say.
    ray_time: float | None = None


def _ray_seconds(ms: Any) -> float | None:
    return ms / 1000.0 if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms > 0 else None


def transitions(tracked: Iterable[Tracked], ray_jobs: Iterable[Mapping[str, Any]],
                missing_counts: dict[str, int], lost_after_misses: int = 3) -> list[Change]:
    """State changes for `tracked` jobs given the cluster's job list (or what it said of each).

    A job the cluster no longer knows for `lost_after_misses` looks in a row is LOST.
    A job that ended without the daemon seeing it run gets a RUNNING first if it succeeded."""
    by_id = {str(j.get("submission_id")): j for j in ray_jobs if isinstance(j, Mapping)}
    changes: list[Change] = []
    for t in tracked:
        if t.state in TERMINAL:
            continue
        info = by_id.get(t.job.ray_submission_id)
        if info is None:
            missing_counts[t.job.submission_id] = missing_counts.get(t.job.submission_id, 0) + 1
            if missing_counts[t.job.submission_id] >= lost_after_misses:
                changes.append(Change(t, JobState.LOST, "its cluster no longer knows the job"))
            continue
        missing_counts.pop(t.job.submission_id, None)
        new = RAY_STATES.get(str(info.get("status")))
        if new is None or new == t.state:
            continue
        if new in _ORDER and _ORDER[new] <= _ORDER.get(t.state, 0):
            continue  # never move backwards
        message = info.get("message") if isinstance(info.get("message"), str) else None
        started, ended = _ray_seconds(info.get("start_time")), _ray_seconds(info.get("end_time"))
        if new == JobState.SUCCEEDED and not t.seen_running and t.state != JobState.RUNNING:
            changes.append(Change(t, JobState.RUNNING, "started and finished between two looks", started))
        changes.append(Change(t, new, message, ended if new in TERMINAL else started))
    return changes


def overdue(t: Tracked, now: float) -> bool:
    """Whether a running job has used up its run_timeout_s by `now` (unix time)."""
    limit = t.job.run_timeout_s
    return (limit is not None and not t.final and t.state == JobState.RUNNING
            and t.running_since is not None and now - t.running_since >= limit)


def stop_message(t: Tracked, new: JobState, message: str | None, now: float) -> str | None:
    """The message of a job's end: a STOPPED that came after its run_timeout_s says so. Decided
    from the journaled start alone, so it holds after a restart or on the other daemon of a pair."""
    if new == JobState.STOPPED and overdue(t, now):
        return f"stopped by rmcs: it ran longer than its run_timeout_s={t.job.run_timeout_s:g}"
    return message
