"""The admission window: order by priority then arrival, expiry, redelivery, capacity."""

from __future__ import annotations

from typing import Any

from builders import job
from scheduler_daemon.admission import Held, Window


def held(sid: str, priority: int = 0, at: float = 0.0, timeout: float | None = None, delivery: Any = None) -> Held:
    return Held(job(sid, priority=priority, queue_timeout_s=timeout), delivery or f"d-{sid}", accepted_at=at)


def test_window_orders_by_priority_then_arrival() -> None:
    w = Window(capacity=10)
    for sid, prio in [("a", 1), ("b", 5), ("c", 1), ("d", 9), ("e", 5)]:
        assert w.add(held(sid, prio)) is None
    assert [h.job.submission_id for h in w.waiting()] == ["d", "b", "e", "a", "c"]
    w.get("d").in_flight = True
    assert [h.job.submission_id for h in w.waiting()] == ["b", "e", "a", "c"]
    assert "d" in w and len(w) == 5


def test_window_expiry() -> None:
    w = Window(capacity=10)
    w.add(held("short", at=100.0, timeout=5.0))
    w.add(held("long", at=100.0, timeout=60.0))
    w.add(held("forever", at=0.0))
    w.add(held("busy", at=100.0, timeout=1.0))
    w.get("busy").in_flight = True
    assert w.get("short").deadline == 105.0 and w.get("forever").deadline is None
    assert w.expired(104.9) == []
    assert [h.job.submission_id for h in w.expired(105.0)] == ["short"]
    assert {h.job.submission_id for h in w.expired(1e9)} == {"short", "long"}


def test_window_redelivery_replaces_the_delivery() -> None:
    w = Window(capacity=2)
    first = held("a", delivery="tag-1")
    w.add(first)
    w.add(held("b"))
    again = held("a", delivery="tag-2")
    old = w.add(again)
    assert old is first
    assert w.get("a") is first and first.delivery == "tag-2"
    assert len(w) == 2
    assert [h.job.submission_id for h in w.waiting()] == ["a", "b"]  # keeps its place


def test_window_full_and_remove() -> None:
    w = Window(capacity=2)
    assert not w.full
    w.add(held("a"))
    w.add(held("b"))
    assert w.full
    assert w.remove("a").job.submission_id == "a"
    assert w.remove("a") is None
    assert not w.full and "a" not in w
    assert [h.job.submission_id for h in w] == ["b"]
