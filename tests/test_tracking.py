"""Following jobs: Ray's job list to state changes (`transitions`), and when to ask one by one."""

from __future__ import annotations

from typing import Any

from builders import job
from scheduler_daemon.jobs import JobState
from scheduler_daemon.journal import Tracked
from scheduler_daemon.tracking import LISTED_PER_FOLLOWED, one_by_one, transitions


def tracked(state: JobState = JobState.DISPATCHED, sid: str = "s1", attempt: int = 1, **kw: Any) -> Tracked:
    return Tracked(job(sid, attempt=attempt), "cpu_cluster", "n1", state, **kw)


def states(changes: list[Any]) -> list[JobState]:
    return [c.state for c in changes]


def test_transitions_pending_is_no_change() -> None:
    assert transitions([tracked()], [{"submission_id": "s1", "status": "PENDING"}], {}) == []


def test_transitions_running() -> None:
    t = tracked()
    changes = transitions([t], [{"submission_id": "s1", "status": "RUNNING"}], {})
    assert states(changes) == [JobState.RUNNING]
    assert changes[0].tracked is t


def test_transitions_succeeded_without_seeing_it_run_synthesizes_running() -> None:
    ray = [{"submission_id": "s1", "status": "SUCCEEDED", "message": "Job finished successfully."}]
    changes = transitions([tracked()], ray, {})
    assert states(changes) == [JobState.RUNNING, JobState.SUCCEEDED]
    assert changes[1].message == "Job finished successfully."
    # Seen running before: no RUNNING again.
    assert states(transitions([tracked(JobState.RUNNING, seen_running=True)], ray, {})) == [JobState.SUCCEEDED]


def test_transitions_failed_and_stopped() -> None:
    ray = [{"submission_id": "s1", "status": "FAILED", "message": "exit 1"}]
    changes = transitions([tracked(JobState.RUNNING, seen_running=True)], ray, {})
    assert states(changes) == [JobState.FAILED] and changes[0].message == "exit 1"
    ray = [{"submission_id": "s1", "status": "STOPPED", "message": 42}]
    changes = transitions([tracked(JobState.RUNNING, seen_running=True)], ray, {})
    assert states(changes) == [JobState.STOPPED] and changes[0].message is None


def test_transitions_never_backwards() -> None:
    assert transitions([tracked(JobState.RUNNING, seen_running=True)],
                       [{"submission_id": "s1", "status": "PENDING"}], {}) == []
    for final in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST):
        assert transitions([tracked(final, final=True)], [{"submission_id": "s1", "status": "RUNNING"}], {}) == []
        assert transitions([tracked(final, final=True)], [], {}, lost_after_misses=1) == []


def test_transitions_unknown_status_is_ignored() -> None:
    assert transitions([tracked()], [{"submission_id": "s1", "status": "WEIRD"}, "junk", None], {}) == []


def test_transitions_match_the_ray_submission_id_of_the_attempt() -> None:
    t = tracked(attempt=2)
    ray = [{"submission_id": "s1", "status": "FAILED"}, {"submission_id": "s1~2", "status": "RUNNING"}]
    assert states(transitions([t], ray, {})) == [JobState.RUNNING]


def test_transitions_lost_after_misses() -> None:
    misses: dict[str, int] = {}
    t = tracked(JobState.RUNNING, seen_running=True)
    assert transitions([t], [], misses, lost_after_misses=3) == []
    assert transitions([t], [{"submission_id": "other", "status": "RUNNING"}], misses, lost_after_misses=3) == []
    assert misses == {"s1": 2}
    changes = transitions([t], [], misses, lost_after_misses=3)
    assert states(changes) == [JobState.LOST]
    assert changes[0].message


def test_one_by_one_only_when_the_list_is_much_longer_than_the_jobs_followed() -> None:
    assert not one_by_one(1, None)  # never listed: list first
    assert not one_by_one(1, 0) and not one_by_one(4, 4 * LISTED_PER_FOLLOWED)
    assert one_by_one(4, 4 * LISTED_PER_FOLLOWED + 1) and one_by_one(1, 10_000)
    assert not one_by_one(400, 10_000)  # as many followed as a twenty-fifth of the list: list again


def test_transitions_seen_again_resets_misses() -> None:
    misses: dict[str, int] = {}
    t = tracked(JobState.RUNNING, seen_running=True)
    transitions([t], [], misses, lost_after_misses=3)
    transitions([t], [], misses, lost_after_misses=3)
    assert transitions([t], [{"submission_id": "s1", "status": "RUNNING"}], misses, lost_after_misses=3) == []
    assert "s1" not in misses
    assert transitions([t], [], misses, lost_after_misses=3) == []
