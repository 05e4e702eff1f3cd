"""Cluster health: the hysteresis between UNKNOWN, UP, DEGRADED and DOWN."""

from __future__ import annotations

from scheduler_daemon.clusters import Health, HealthState

UP, DEGRADED, DOWN, UNKNOWN = HealthState.UP, HealthState.DEGRADED, HealthState.DOWN, HealthState.UNKNOWN


def test_health_unknown_to_up_on_first_success() -> None:
    h = Health(down_after=3, up_after=2)
    assert h.state == UNKNOWN
    assert h.record(ok=True, slow=False, now=1.0) == UP
    assert h.record(ok=True, slow=False, now=2.0) is None  # no change, nothing returned
    assert h.state == UP and h.down_since is None


def test_health_unknown_stays_unknown_until_down_after_failures() -> None:
    h = Health(down_after=3, up_after=2)
    assert h.record(ok=False, slow=False, now=1.0) is None
    assert h.record(ok=False, slow=False, now=2.0) is None
    assert h.state == UNKNOWN
    assert h.record(ok=False, slow=False, now=3.0) == DOWN
    assert h.down_since == 3.0


def test_health_one_failure_degrades() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(ok=False, slow=False, now=1.0) == DEGRADED
    assert h.down_since is None


def test_health_slow_answer_degrades() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(ok=True, slow=True, now=1.0) == DEGRADED
    assert h.state == DEGRADED


def test_health_down_after_failures_and_back_up_after_successes() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(False, False, 1.0) == DEGRADED
    assert h.record(False, False, 2.0) is None
    assert h.record(False, False, 3.0) == DOWN
    assert h.down_since == 3.0
    assert h.record(False, False, 4.0) is None
    assert h.down_since == 3.0  # stays the time it went down
    # One success is not enough to come back.
    assert h.record(True, False, 5.0) is None
    assert h.state == DOWN and h.down_since == 3.0
    # A failure in between restarts the count.
    assert h.record(False, False, 6.0) is None
    assert h.record(True, False, 7.0) is None
    assert h.state == DOWN
    assert h.record(True, False, 8.0) == UP
    assert h.down_since is None


def test_health_slow_answers_do_not_bring_a_down_cluster_up() -> None:
    h = Health(down_after=1, up_after=2)
    h.record(True, False, 0.0)
    assert h.record(False, False, 1.0) == DOWN
    assert h.record(True, True, 2.0) is None
    assert h.record(True, True, 3.0) is None
    assert h.state == DOWN


def test_health_degraded_recovers_after_up_after_successes() -> None:
    h = Health(down_after=3, up_after=2)
    h.record(True, False, 0.0)
    h.record(False, False, 1.0)
    assert h.record(True, False, 2.0) is None
    assert h.state == DEGRADED
    assert h.record(True, False, 3.0) == UP
