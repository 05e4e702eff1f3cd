"""The probe process (`probe_process_from`): killed, dead at birth, or silent, it is replaced,
and meanwhile every cluster counts a failed probe, so nothing is placed on old news."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer, fake_fleet
from scheduler_daemon import probe_child, probing
from scheduler_daemon.clusters import HealthState, Node, Snapshot
from support import Events, make_settings, publish, queue_depth, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def _errors(daemon: Any) -> list[str]:
    """Record every probe outcome's error as the prober takes it."""
    seen: list[str] = []
    take = daemon.prober.probed

    def probed(state: Any, snapshot: Any, error: str | None, latency: float) -> Any:
        if error:
            seen.append(error)
        return take(state, snapshot, error, latency)

    daemon.prober.probed = probed
    return seen


async def _until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_killed_probe_process_is_replaced_and_its_clusters_come_back(tmp_path: Any) -> None:
    s = make_settings(tmp_path, probe_process_from=1)
    async with fake_fleet(3, name="pp") as fleet, running_daemon(s, fleet.configs()) as d, Events(s) as ev:
        states = d.prober.clusters.values()
        await _until(lambda: all(c.health.state == HealthState.UP for c in states), 15, "every cluster up")
        errors = _errors(d)
        first = d.prober.child
        assert first is not None
        first.send_signal(signal.SIGKILL)
        await _until(lambda: d.prober.child is not None and d.prober.child is not first, 15, "a new probe process")
        assert errors.count("probe process exited with code -9") == 3, errors  # one per cluster
        await _until(lambda: all(c.health.state == HealthState.UP and c.error is None for c in states), 15,
                     "every cluster up again")
        job = sid("after-kill")
        await publish(s, {"submission_id": job, "entrypoint": "/bin/true"})
        await ev.wait_final([job], timeout=20)
        assert ev.states(job)[-1] == "SUCCEEDED"


@pytest.mark.parametrize(("command", "why"), [
    ([sys.executable, "-c", "import sys; sys.exit('probe child: no way to reach the dashboards')"],
     "exited with code 1: probe child: no way to reach the dashboards"),
    ([sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)"], "was silent for 1.3s"),
    ([sys.executable, "-c", "import sys; sys.stdin.readline(); print('[[\"nowhere\", 0.1, null, 1.0, []]]')"],
     "sent an unreadable line: KeyError"),
], ids=["dies at birth", "silent", "talks nonsense"])
async def test_a_broken_probe_process_takes_its_clusters_down_and_nothing_is_dispatched(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, command: list[str], why: str) -> None:
    monkeypatch.setattr(probing, "CHILD_COMMAND", tuple(command))
    monkeypatch.setattr(probing, "CHILD_SILENCE_MARGIN_S", 0.5)
    s = make_settings(tmp_path, probe_process_from=1, probe_interval_s=0.3, probe_timeout_s=0.5,
                      down_after_failures=2)
    cluster = FakeCluster("lonely", nodes={"n": {"CPU": 4}})
    server = FakeServer([cluster])
    await server.start()
    try:
        async with running_daemon(s, (cluster.config(),)) as d, Events(s) as ev:
            state = d.prober.clusters["lonely"]
            await _until(lambda: state.probes >= 2, 15, "two failed probes")
            assert state.health.state == HealthState.DOWN and state.snapshot is None
            assert state.error is not None and why in state.error, state.error
            # With no cluster known to have room, the job is not even taken from the queue.
            job = sid("never")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/true"})
            await asyncio.sleep(1.0)
            assert await queue_depth(s, s.intake_queue) == 1
            assert ev.states(job) == [] and cluster.requests["POST /api/jobs/"] == 0
            assert d.prober.child is None or d.prober.child.returncode is None  # at most one, alive
    finally:
        await server.stop()


async def test_the_probe_process_stops_when_its_input_closes(tmp_path: Any) -> None:
    """The child's one way to learn that the daemon is gone (even a SIGKILLed one)."""
    async with fake_fleet(2, name="eof") as fleet:
        proc = await asyncio.create_subprocess_exec(*probing.CHILD_COMMAND, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(probe_child.setup_line(make_settings(tmp_path, probe_interval_s=0.2), fleet.configs()))
        report = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert report.startswith(b"[[")
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 5) == 0


def test_unchanged_nodes_are_sent_once_and_taken_as_the_same_objects() -> None:
    last: dict[str, Any] = {}
    nodes = (Node("n1", {"CPU": 4.0}, {"CPU": 1.0}),)
    first = probe_child.encode("c", Snapshot(10.0, nodes), None, 0.02, last)
    again = probe_child.encode("c", Snapshot(11.0, (Node("n1", {"CPU": 4.0}, {"CPU": 1.0}),)), None, 0.03, last)
    assert first[4] == [["n1", {"CPU": 4.0}, {"CPU": 1.0}]] and again[4] is None
    _, snap1, _, _ = probe_child.decode(first, None)
    _, snap2, error, latency = probe_child.decode(again, snap1)
    assert snap2 is not None and snap1 is not None
    assert snap2.nodes is snap1.nodes and snap2.time == 11.0 and (error, latency) == (None, 0.03)
    failed = probe_child.encode("c", None, "probe timed out after 2.0s", 2.0, last)
    assert probe_child.decode(failed, snap2) == ("c", None, "probe timed out after 2.0s", 2.0)
    with pytest.raises(ValueError, match="none were sent before"):
        probe_child.decode(again, None)
