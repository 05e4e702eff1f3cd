"""depends_on: waiting jobs held durably outside the window, released when every dependency
SUCCEEDED, cancelled when one ends otherwise; on the simulator against the real RabbitMQ (the
real-Ray DAG is in test_dependencies_real.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from fakeray import fake_fleet
from producers.job import build_job
from producers.pipeline import plan
from scheduler_daemon.dependencies import Condition, Known, Verdict, condition, resolve
from scheduler_daemon.jobs import InvalidJob, MessageMeta, parse_job
from scheduler_daemon.waiting import Waiter, WaitingStore
from support import Events, failover_pair, make_settings, publish, request_stop, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def test_conditions_and_resolution() -> None:
    assert condition(None) == Condition.UNKNOWN
    assert condition(Known("SUCCEEDED", True)) == Condition.MET
    assert condition(Known("FAILED", True)) == Condition.FAILED
    assert condition(Known("FAILED", True, retry_follows=True)) == Condition.PENDING
    assert condition(Known("RUNNING", False)) == Condition.PENDING
    assert condition(Known("WAITING", False)) == Condition.PENDING
    met, failed = (Condition.MET, "SUCCEEDED"), (Condition.FAILED, "FAILED")
    assert resolve(["a", "b"], {"a": met, "b": met}).verdict == Verdict.READY
    assert resolve(["a", "b"], {"a": met}).verdict == Verdict.WAIT
    cancel = resolve(["a", "b"], {"a": (Condition.PENDING, "RUNNING"), "b": failed})
    assert cancel.verdict == Verdict.CANCEL and cancel.reason == "dependency b ended FAILED, not SUCCEEDED"


def test_a_job_cannot_depend_on_itself() -> None:
    with pytest.raises(InvalidJob, match="cannot depend on itself"):
        parse_job(b'{"submission_id": "x", "entrypoint": "/bin/true", "depends_on": ["x"]}', MessageMeta(),
                  default_resources={}, max_bytes=1 << 20)
    with pytest.raises(ValueError, match="cannot depend on itself"):
        build_job("/bin/true", submission_id="x", depends_on=["x"])
    with pytest.raises(InvalidJob, match="at most 64"):
        parse_job(b'{"entrypoint": "/bin/true", "depends_on": [' + b",".join(b'"d%d"' % i for i in range(65)) + b"]}",
                  MessageMeta(), default_resources={}, max_bytes=1 << 20)


async def test_the_store_hands_a_sweep_ids_and_dependencies_and_the_whole_job_on_request(tmp_path) -> None:
    """A sweep over thousands of waiting jobs reads each one's id and dependencies (in the job's
    order), not the whole job: the whole job is read only for one that is released or ended."""
    store = WaitingStore(tmp_path / "waiting.db")
    await store.open()
    try:
        for i, deps in enumerate((["z", "a"], ["m"], ["a", "m", "b"])):
            job = parse_job(orjson.dumps({"submission_id": f"w{i}", "entrypoint": "/bin/true", "depends_on": deps}),
                            MessageMeta(), default_resources={}, max_bytes=1 << 20)
            assert await store.add(job, 0.0, None)
        assert await store.page("", 2) == [Waiter("w0", ("z", "a")), Waiter("w1", ("m",))]
        assert await store.page("w1", 2) == [Waiter("w2", ("a", "m", "b"))]
        assert sorted(await store.waiters_of(["m", "nobody"]), key=lambda w: w.submission_id) == [
            Waiter("w1", ("m",)), Waiter("w2", ("a", "m", "b"))]
        assert await store.waiters_of(["a", "b"]) in ([Waiter("w0", ("z", "a")), Waiter("w2", ("a", "m", "b"))],
                                                      [Waiter("w2", ("a", "m", "b")), Waiter("w0", ("z", "a"))])
        whole = await store.get("w2")
        assert whole is not None and whole.depends_on == ("a", "m", "b") and whole.entrypoint == "/bin/true"
    finally:
        await store.close()


def test_pipeline_plan_orders_stages_and_rejects_cycles() -> None:
    stages: dict[str, Any] = {"d": {"entrypoint": "/bin/true", "after": ["b", "c"]},
                              "b": {"entrypoint": "/bin/true", "after": ["a"]},
                              "c": {"entrypoint": "/bin/true", "after": ["a"]},
                              "a": {"entrypoint": "/bin/true"}}
    planned = plan(stages, prefix="p1")
    order = [name for name, _ in planned]
    assert order.index("a") < order.index("b") < order.index("d") and order.index("c") < order.index("d")
    kwargs = dict(planned)
    assert kwargs["d"]["depends_on"] == ["p1.b", "p1.c"] and kwargs["d"]["submission_id"] == "p1.d"
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        plan({"a": {"entrypoint": "/bin/true", "after": ["b"]}, "b": {"entrypoint": "/bin/true", "after": ["a"]}})
    with pytest.raises(ValueError, match="not a stage"):
        plan({"a": {"entrypoint": "/bin/true", "after": ["zz"]}})


def _job(s: str, entrypoint: str = "/bin/sleep 0.3", after: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"submission_id": s, "entrypoint": entrypoint, **({"depends_on": after} if after else {}), **kw}


def _at(ev: Events, s: str, state: str) -> int:
    """The position of a job's first event of `state` in the stream."""
    return next(i for i, e in enumerate(ev.items) if e.get("submission_id") == s and e.get("state") == state)


async def test_dag_runs_in_order_and_shows_its_dependencies(tmp_path) -> None:
    s = make_settings(tmp_path)
    async with fake_fleet(1, name="dag") as fleet, Events(s) as ev:
        a, b, c, d = (sid(x) for x in "abcd")
        async with running_daemon(s, fleet.configs()) as daemon:
            # D first: its dependencies are unknown yet, and it waits for them.
            await publish(s, _job(d, after=[b, c]))
            await publish(s, _job(b, after=[a]))
            await publish(s, _job(c, after=[a]))
            await publish(s, _job(a, "/bin/sleep 0.5"))
            await ev.wait_final([a, b, c, d], 30)
            for x in (a, b, c, d):
                assert ev.states(x)[-1] == "SUCCEEDED", (x, ev.states(x))
            assert ev.states(d)[:2] == ["ACCEPTED", "WAITING"]
            assert _at(ev, a, "SUCCEEDED") < min(_at(ev, b, "DISPATCHED"), _at(ev, c, "DISPATCHED"))
            assert max(_at(ev, b, "SUCCEEDED"), _at(ev, c, "SUCCEEDED")) < _at(ev, d, "DISPATCHED")
            assert ev.of(d)[0]["depends_on"] == [b, c]
            status = await daemon.store.get(d)
            assert status is not None and status.to_json()["depends_on"] == [b, c]
            assert daemon.waiting.count == 0


async def test_a_failed_dependency_cancels_its_dependents_with_the_reason(tmp_path) -> None:
    s = make_settings(tmp_path)
    async with fake_fleet(1, name="dagf") as fleet, Events(s) as ev:
        a, b, d, e = (sid(x) for x in "abde")
        async with running_daemon(s, fleet.configs()):
            await publish(s, _job(a))
            await publish(s, _job(b, "/bin/fail 0.3", after=[a]))
            await publish(s, _job(d, after=[b]))
            await publish(s, _job(e, after=[d]))  # cancelled in turn
            await ev.wait_final([a, b, d, e], 30)
            assert ev.states(b)[-1] == "FAILED"
            assert ev.states(d) == ["ACCEPTED", "WAITING", "CANCELLED"]
            assert ev.of(d)[-1]["message"] == f"dependency {b} ended FAILED, not SUCCEEDED"
            assert ev.of(e)[-1]["message"] == f"dependency {d} ended CANCELLED, not SUCCEEDED"


async def test_a_restart_while_a_job_waits_loses_nothing(tmp_path) -> None:
    s = make_settings(tmp_path)
    async with fake_fleet(1, name="dagr") as fleet, Events(s) as ev:
        a, d = sid("a"), sid("d")
        async with running_daemon(s, fleet.configs(), cleanup=False) as first:
            await publish(s, _job(a, "/bin/sleep 3"))
            await publish(s, _job(d, after=[a]))
            await ev.wait_for(lambda: "WAITING" in ev.states(d) and "RUNNING" in ev.states(a), 15, "D waiting")
            assert first.waiting.count == 1
        async with running_daemon(s, fleet.configs()) as second:
            assert second.waiting.count == 1
            await ev.wait_final([a, d], 30)
            assert ev.states(d)[-1] == "SUCCEEDED"
            assert fleet[0].stats()["submissions"] == 2  # each ran once


async def test_stop_bound_and_timeout_of_waiting_jobs(tmp_path) -> None:
    s = make_settings(tmp_path, max_waiting_jobs=2)
    async with fake_fleet(1, name="dagb") as fleet, Events(s) as ev:
        never, stopped, expired, over = sid("never"), sid("stopped"), sid("expired"), sid("over")
        async with running_daemon(s, fleet.configs()):
            await publish(s, _job(stopped, after=[never]))
            await publish(s, _job(expired, after=[never], queue_timeout_s=1.5))
            await ev.wait_for(lambda: "WAITING" in ev.states(expired), 10, "two waiting")
            await publish(s, _job(over, after=[never]))
            await ev.wait_final([over], 10)
            assert ev.states(over)[-1] == "REJECTED"
            assert "max_waiting_jobs=2" in ev.of(over)[-1]["message"]
            await request_stop(s, stopped, "no longer needed")
            await ev.wait_final([stopped, expired], 15)
            assert ev.states(stopped)[-1] == "CANCELLED" and ev.of(stopped)[-1]["message"] == "no longer needed"
            assert ev.states(expired)[-1] == "EXPIRED"
            assert "queue_timeout_s=1.5" in ev.of(expired)[-1]["message"]
            assert fleet[0].stats()["submissions"] == 0


def test_cli_submit_after_and_run_timeout() -> None:
    from rmcs_cli import build_job as cli_job, build_parser

    body, sid_, _ = cli_job(build_parser().parse_args(
        ["submit", "--after", "a1", "--after", "a2", "--run-timeout", "30", "--submission-id", "z", "--", "/bin/true"]))
    assert body["depends_on"] == ["a1", "a2"] and body["run_timeout_s"] == 30.0 and sid_ == "z"


async def test_a_waiting_job_survives_failover(tmp_path) -> None:
    """Two daemons of a failover pair share the state dir: the standby takes over the waiting job
    of the leader that stopped, and runs it once its dependency has SUCCEEDED."""
    s = make_settings(tmp_path, failover=True)
    async with fake_fleet(1, name="dagfo") as fleet, failover_pair(s, fleet.configs()) as hand_over, \
            Events(s) as ev:
        a, d = sid("a"), sid("d")
        await publish(s, _job(a, "/bin/sleep 3"))
        await publish(s, _job(d, after=[a]))
        await ev.wait_for(lambda: "WAITING" in ev.states(d) and "RUNNING" in ev.states(a), 15, "D waiting")
        await hand_over()
        await ev.wait_final([a, d], 30)
        assert ev.states(d)[-1] == "SUCCEEDED"
        assert fleet[0].stats()["submissions"] == 2
