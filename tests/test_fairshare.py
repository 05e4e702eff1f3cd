"""The pure decisions of queues (docs/queues.md): settings, DRF order, limits, preemption."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from scheduler_daemon.fairshare import Usage, dominant_share, fair_order, may_consume, never_fits, over_limit, usage_of
from scheduler_daemon.jobs import Job
from scheduler_daemon.preemption import Room, Running, choose_victims, owed
from scheduler_daemon.queueconf import QueueConfig, parse_queues, queue_refusal
from scheduler_daemon.settings import ConfigError, load_settings


def job(queue: str = "default", sid: str = "s", **res: float) -> Job:
    return Job(sid, "j", "/bin/true", resources=res or {"CPU": 1.0}, queue=queue)


@dataclass
class H:
    job: Job


def test_settings_parse_queues_with_default_first(tmp_path: Any) -> None:
    f = tmp_path / "rmcs.yaml"
    f.write_text("queues:\n  research: {weight: 2, guaranteed: {CPU: 8, GPU: 2}, limit: {CPU: 16},"
                 " max_running: 100, publishers: [alice, bob]}\n  batch: {}\n")
    qs = load_settings(f, {}).queues
    assert [q.name for q in qs] == ["default", "research", "batch"]
    r = qs[1]
    assert (r.weight, dict(r.guaranteed), dict(r.limit or {}), r.max_running, r.publishers) == \
        (2.0, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 16.0}, 100, frozenset({"alice", "bob"}))
    assert load_settings(None, {}).queues == (QueueConfig("default"),)


@pytest.mark.parametrize("spec, why", [
    ({"a b": {}}, "queue names must match"),
    ({"a": {"weight": 0}}, "queues.a.weight must be a positive number"),
    ({"a": {"guaranteed": {"CPU": 8}, "limit": {"CPU": 4}}}, r"guaranteed.CPU \(8\) is more than its limit"),
    ({"a": {"max_running": 0}}, "max_running must be an integer >= 1"),
    ({"a": {"publishers": "alice"}}, "publishers must be a list"),
    ({"a": {"limits": {}}}, "unknown key 'limits'"),
    ({"a": {"guaranteed": {"CPU": -1}}}, "guaranteed.CPU must be a finite number >= 0"),
])
def test_bad_queue_settings_name_the_key(spec: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_queues(spec)
    with pytest.raises(ConfigError, match=why):
        load_settings(None, {"RMCS_QUEUES": str(spec)})


def test_publishers_and_unknown_queues() -> None:
    queues = {q.name: q for q in parse_queues({"team": {"publishers": ["alice"]}})}
    assert queue_refusal(job("team"), queues) is not None  # owner None: not alice
    assert queue_refusal(Job("s", "j", "/bin/true", owner="alice", queue="team"), queues) is None
    assert "may not publish to queue 'team'" in str(queue_refusal(Job("s", "j", "/bin/true", owner="bob", queue="team"), queues))
    assert "no queue named 'other'" in str(queue_refusal(job("other"), queues))
    assert queue_refusal(job("default"), queues) is None


def test_dominant_share_is_the_largest_resource_share_over_weight() -> None:
    totals = {"CPU": 100.0, "GPU": 10.0}
    assert dominant_share({"CPU": 20.0, "GPU": 1.0}, totals) == pytest.approx(0.2)
    assert dominant_share({"CPU": 20.0, "GPU": 5.0}, totals, weight=2) == pytest.approx(0.25)
    assert dominant_share({"TPU": 3.0}, totals) == 0.0  # the fleet has none: not counted


def test_fair_order_converges_to_the_weights() -> None:
    """Place 40 one-CPU jobs from two flooding queues weighted 1:3: 10 and 30."""
    queues = {q.name: q for q in parse_queues({"a": {"weight": 1}, "b": {"weight": 3}})}
    waiting = [H(job("a", f"a{i}")) for i in range(40)] + [H(job("b", f"b{i}")) for i in range(40)]
    usage = usage_of(queues, [], [h.job for h in waiting])
    placed = []
    for h in fair_order(waiting, queues, usage, {"CPU": 40.0}):
        if len(placed) == 40:
            break
        placed.append(h.job.queue)
        usage[h.job.queue].charge(h.job)
    assert placed.count("a") == 10 and placed.count("b") == 30


def test_fair_order_keeps_priority_then_age_within_a_queue() -> None:
    queues = {q.name: q for q in parse_queues({"a": {}})}
    waiting = [H(job("a", "first")), H(job("a", "second")), H(job("default", "d"))]
    usage = usage_of(queues, [job("default", "x", CPU=4)], [])
    order = [h.job.submission_id for h in fair_order(waiting, queues, usage, {"CPU": 8.0})]
    assert order == ["first", "second", "d"]  # `a` holds nothing, `default` half the fleet


def test_limits_and_max_running() -> None:
    q = parse_queues({"t": {"limit": {"CPU": 4}, "max_running": 3}})[1]
    u = Usage({"CPU": 3.0}, running=2)
    assert over_limit(q, u, job("t", CPU=1)) is None
    assert "would pass its limit of 4" in str(over_limit(q, u, job("t", CPU=2)))
    assert "max_running" in str(over_limit(q, Usage({"CPU": 1.0}, running=3), job("t")))
    assert "more than queue t's limit of 4" in str(never_fits(q, job("t", CPU=5)))
    assert may_consume(q, Usage({"CPU": 3.0}, running=2), spare=True)
    assert not may_consume(q, Usage({"CPU": 4.0}, running=2), spare=True)   # at its limit
    assert not may_consume(q, Usage({"CPU": 1.0}, running=3), spare=True)   # at max_running
    free = parse_queues({"f": {}})[1]
    assert may_consume(free, Usage(waiting=0), spare=False)  # one job waits per queue for its turn
    assert not may_consume(free, Usage(waiting=1), spare=False)


def _run(sid: str, queue: str, cpu: float, *, prio: int = 0, started: float = 0.0, node: str = "n1") -> Running:
    return Running(sid, queue, prio, started, "c0", node, {"CPU": cpu})


def test_preemption_takes_the_newest_lowest_priority_jobs_of_the_queue_most_over() -> None:
    queues = {q.name: q for q in parse_queues({"prod": {"guaranteed": {"CPU": 4}},
                                               "batch": {}, "dev": {"guaranteed": {"CPU": 1}}})}
    running = [_run("b-old", "batch", 1, started=1), _run("b-new", "batch", 1, started=5),
               _run("b-high", "batch", 1, prio=9, started=9), _run("d1", "dev", 1, started=8),
               _run("d2", "dev", 1, started=7)]
    held = {"batch": {"CPU": 3.0}, "dev": {"CPU": 2.0}, "prod": {}}
    got = choose_victims("prod", {"CPU": 2.0}, queues, held, {"CPU": 5.0}, running, [Room("c0", "n1", {"CPU": 0.0})])
    assert got is not None and [v.submission_id for v in got.victims] == ["b-new", "b-old"]
    assert "queue prod is owed its guarantee" in got.explanation and "b-new" in got.explanation


def test_a_job_within_its_queues_guarantee_is_never_preempted() -> None:
    queues = {q.name: q for q in parse_queues({"a": {"guaranteed": {"CPU": 2}}, "b": {"guaranteed": {"CPU": 2}}})}
    running = [_run("b1", "b", 1), _run("b2", "b", 1), _run("b3", "b", 1)]
    held = {"b": {"CPU": 3.0}, "a": {}}
    got = choose_victims("a", {"CPU": 2.0}, queues, held, {"CPU": 3.0}, running, [Room("c0", "n1", {"CPU": 0.0})])
    assert got is None  # only one of b's three CPUs is borrowed: not enough for a 2-CPU job
    got = choose_victims("a", {"CPU": 1.0}, queues, held, {"CPU": 3.0}, running, [Room("c0", "n1", {"CPU": 0.0})])
    assert got is not None and len(got.victims) == 1


def test_no_preemption_unless_owed_and_on_one_node() -> None:
    q = parse_queues({"a": {"guaranteed": {"CPU": 4}}})[1]
    assert owed(q, {"CPU": 2.0}, {"CPU": 2.0}) and not owed(q, {"CPU": 3.0}, {"CPU": 2.0})
    assert not owed(q, {}, {"CPU": 1.0, "GPU": 1.0})  # GPUs are not guaranteed to it
    queues = {"a": q, "b": QueueConfig("b")}
    running = [_run("x", "b", 1, node="n1"), _run("y", "b", 1, node="n2")]
    rooms = [Room("c0", "n1", {"CPU": 0.0}), Room("c0", "n2", {"CPU": 0.0})]
    assert choose_victims("a", {"CPU": 2.0}, queues, {"b": {"CPU": 2.0}}, {"CPU": 2.0}, running, rooms) is None
    got = choose_victims("a", {"CPU": 2.0}, queues, {"b": {"CPU": 2.0}}, {"CPU": 3.0}, running,
                         [Room("c0", "n1", {"CPU": 0.0}), Room("c0", "n2", {"CPU": 1.0})])
    assert got is not None and got.node_id == "n2" and [v.submission_id for v in got.victims] == ["y"]


def test_a_second_job_preempts_only_past_the_first_ones_victims() -> None:
    """What Preempting passes in while a first preemption is under way: the victim's queue holds
    less, the owed queue more, and the victim is no longer a candidate."""
    queues = {q.name: q for q in parse_queues({"prod": {"guaranteed": {"CPU": 2}}, "batch": {"guaranteed": {"CPU": 2}}})}
    running = [_run("b2", "batch", 1, started=2), _run("b3", "batch", 1, started=3)]  # b4 already stopping
    held = {"batch": {"CPU": 3.0}, "prod": {"CPU": 1.0}}  # b4 (1 CPU) moved over to prod's claim
    got = choose_victims("prod", {"CPU": 1.0}, queues, held, {"CPU": 4.0}, running, [Room("c0", "n1", {"CPU": 0.0})])
    assert got is not None and [v.submission_id for v in got.victims] == ["b3"]
    held = {"batch": {"CPU": 2.0}, "prod": {"CPU": 1.0}}  # batch down to its guarantee
    assert choose_victims("prod", {"CPU": 1.0}, queues, held, {"CPU": 4.0}, running,
                          [Room("c0", "n1", {"CPU": 0.0})]) is None
