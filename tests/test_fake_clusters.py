"""The real daemon and the real RabbitMQ against fake Ray dashboards (tests/fakeray.py):
faults, scale and the capacity bookkeeping between Ray's snapshots."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from fakeray import Fleet, fake_fleet, is_fake_task
from scheduler_daemon.clusters import HealthState
from scheduler_daemon.probe_child import PROBE_SLICES, schedule
from scheduler_daemon.probing import Prober
from scheduler_daemon.settings import ClusterConfig
from scheduler_daemon.rayapi import RayAmbiguous, RayDashboard, RayNotFound, RayRejected, RayUnreachable
from support import Events, make_settings, publish, publish_many, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def job(entrypoint: str = "/bin/sleep 0.3", cpu: float = 1.0, **kw: Any) -> dict[str, Any]:
    return {"submission_id": sid(), "entrypoint": entrypoint, "resource_requirements": {"CPU": cpu}, **kw}


def cluster_events(ev: Events, name: str, health: str | None = None) -> list[dict[str, Any]]:
    return [e for e in ev.items if e.get("cluster") == name and "health" in e
            and (health is None or e["health"] == health)]


async def wait_health(ev: Events, name: str, health: str, *, count: int = 1, timeout: float = 15.0) -> None:
    await ev.wait_for(lambda: len(cluster_events(ev, name, health)) >= count, timeout,
                      f"cluster.{health}.{name} (#{count})")


def dispatched_to(ev: Events, sids: list[str]) -> dict[str, str]:
    out = {}
    for s in sids:
        for e in ev.of(s):
            if e["state"] == "DISPATCHED":
                out[s] = e["cluster"]
    return out


def final_states(ev: Events, sids: list[str]) -> dict[str, str]:
    return {s: next(e["state"] for e in ev.of(s) if e.get("final")) for s in sids}


async def test_fake_speaks_ray_shape() -> None:
    """The fake answers the real client as Ray 2.60 does, faults included."""
    async with fake_fleet(1, name="shape") as fleet:
        c = fleet[0]
        d = RayDashboard(c.config(), 1.0)
        try:
            assert (await d.version())["ray_version"] == "2.60.0"
            body = {"entrypoint": "/bin/sleep 0.2", "submission_id": "j1", "entrypoint_num_cpus": 1,
                    "entrypoint_resources": {"GPU_fake": 0}, "metadata": {"k": "v"}}
            assert await d.submit(body) is True
            assert await d.submit(body) is False  # 500 "already exists"
            async with aiohttp.ClientSession() as http:
                async with http.post(c.url + "/api/jobs/", json=body) as resp:
                    assert resp.status == 500 and (await resp.text()).rstrip().endswith(
                        "ValueError: Job with submission_id j1 already exists. Please use a different submission_id.")
                async with http.post(c.url + "/api/jobs/", json={"entrypoint": "x", "bogus": 1}) as resp:
                    assert resp.status == 400
                async with http.post(c.url + "/api/jobs/", data=b"{not json") as resp:
                    assert resp.status == 400
                async with http.delete(c.url + "/api/jobs/j1") as resp:
                    assert resp.status == 500  # still running
                async with http.delete(c.url + "/api/jobs/nope") as resp:
                    assert resp.status == 404 and await resp.text() == "Job nope does not exist"
            info = await d.job("j1")
            assert info["status"] == "RUNNING" and info["metadata"] == {"k": "v"}
            usage = (await d.cluster_status())["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]
            assert [u["CPU"] for u in usage.values()] == [[1.0, 2.0]] and "objectStoreMemory" in next(iter(usage.values()))
            await asyncio.sleep(0.3)
            jobs = await d.list_jobs()
            assert [(j["submission_id"], j["status"], j["driver_exit_code"]) for j in jobs] == [("j1", "SUCCEEDED", 0)]
            assert isinstance(jobs[0]["start_time"], int) and jobs[0]["end_time"] >= jobs[0]["start_time"]
            assert "sleep" in await d.logs("j1")
            assert await d.stop("j1") is False
            assert await d.delete("j1") is True
            try:
                await d.job("j1")
                raise AssertionError("deleted job still there")
            except RayNotFound as exc:
                assert "does not exist" in str(exc)
            # A job that does not fit waits in Ray's queue; the snapshot shows it as demand.
            await d.submit({"entrypoint": "/bin/sleep 5", "submission_id": "big", "entrypoint_num_cpus": 2})
            await d.submit({"entrypoint": "/bin/sleep 5", "submission_id": "w", "entrypoint_num_cpus": 1})
            assert (await d.job("w"))["status"] == "PENDING"
            report = (await d.cluster_status())["data"]["clusterStatus"]["loadMetricsReport"]
            assert report["resourceDemand"] == [[{"CPU": 1.0}, 1]]
            assert c.max_demand["CPU"] == 3.0 and c.max_reserved["CPU"] == 2.0
            assert await d.stop("big") is True and (await d.job("w"))["status"] == "RUNNING"
            for mode, error in (("dead", RayUnreachable), ("hang", RayAmbiguous), ("error500", RayRejected),
                                ("garbage", RayRejected)):
                await c.set_mode(mode)
                try:
                    await d.cluster_status()
                    raise AssertionError(f"mode {mode} answered")
                except error:
                    pass
            await c.set_mode("ok")
            assert (await d.version())["ray_version"] == "2.60.0"
        finally:
            await d.close()


async def test_snapshot_refreshes_only_every_interval() -> None:
    async with fake_fleet(1, name="snap", snapshot_every_s=0.5) as fleet:
        c = fleet[0]
        d = RayDashboard(c.config(), 1.0)
        try:
            t0 = (await d.cluster_status())["data"]["clusterStatus"]["time"]
            await d.submit({"entrypoint": "/bin/sleep 5", "submission_id": "a", "entrypoint_num_cpus": 1})
            stale = (await d.cluster_status())["data"]["clusterStatus"]
            assert stale["time"] == t0 and stale["loadMetricsReport"]["usage"]["CPU"] == [0.0, 2.0]
            await asyncio.sleep(0.6)
            fresh = (await d.cluster_status())["data"]["clusterStatus"]
            assert abs(fresh["time"] - t0 - 0.5) < 1e-6 and fresh["loadMetricsReport"]["usage"]["CPU"] == [1.0, 2.0]
        finally:
            await d.close()


async def test_dead_cluster_goes_down_and_comes_back(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    async with fake_fleet(2, name="dead") as fleet:
        a, b = fleet
        async with Events(s) as ev, running_daemon(s, fleet.configs()) as d:
            await wait_health(ev, a.name, "up")
            await wait_health(ev, b.name, "up")
            await a.set_mode("dead")
            await wait_health(ev, a.name, "down")
            assert "cannot connect" in (cluster_events(ev, a.name, "down")[0]["message"] or "")
            assert d.prober.clusters[b.name].health.state == HealthState.UP

            jobs = [job(preferred_cluster=a.name) for _ in range(3)]
            for body in jobs:
                await publish(s, body)
            sids = [j["submission_id"] for j in jobs]
            await ev.wait_final(sids, timeout=15)
            assert set(dispatched_to(ev, sids).values()) == {b.name}, ev.items[-10:]
            assert set(final_states(ev, sids).values()) == {"SUCCEEDED"}
            assert not a.submissions

            await a.set_mode("ok")
            await wait_health(ev, a.name, "up", count=2)
            jobs = [job(preferred_cluster=a.name) for _ in range(2)]
            for body in jobs:
                await publish(s, body)
            sids = [j["submission_id"] for j in jobs]
            await ev.wait_final(sids, timeout=15)
            assert set(dispatched_to(ev, sids).values()) == {a.name}
            assert set(final_states(ev, sids).values()) == {"SUCCEEDED"}
            assert len(a.submissions) == 2


async def test_intake_waits_for_every_clusters_first_probe(tmp_path: Any) -> None:
    """A job that arrives at start goes to the cluster that fits it best, not to whichever
    answered first: the slow cluster, weighted far higher (it is degraded by its slow answer,
    which halves its score), gets it."""
    s = make_settings(tmp_path)
    async with fake_fleet(2, name="first") as fleet:
        fast, slow = fleet
        slow.status_latency_s = 1.5
        configs = (fast.config(), slow.config(weight=10.0))
        async with Events(s) as ev, running_daemon(s, configs):
            first = job()
            await publish(s, first)
            await ev.wait_final([first["submission_id"]], timeout=15)
            assert dispatched_to(ev, [first["submission_id"]]) == {first["submission_id"]: slow.name}
            assert not fast.submissions


@pytest.mark.parametrize("probe_process_from", [200, 1], ids=["in-process", "probe process"])
async def test_hanging_cluster_does_not_delay_others_and_nothing_leaks(tmp_path: Any, probe_process_from: int) -> None:
    """The probe process gives the probes it starts together one deadline, not a timer each."""
    s = make_settings(tmp_path, probe_timeout_s=1.0, dispatch_timeout_s=2.0, probe_process_from=probe_process_from)
    interval = s.probe_interval_s
    async with fake_fleet(2, name="hang") as fleet:
        a, b = fleet
        async with Events(s) as ev:
            before = set(asyncio.all_tasks())
            async with running_daemon(s, fleet.configs()) as d:
                await wait_health(ev, a.name, "up")
                await wait_health(ev, b.name, "up")
                healthy = d.prober.clusters[b.name]
                a.mode = "hang"
                t_hang = time.monotonic()
                seen: list[float] = []
                probes0 = healthy.probes
                while not cluster_events(ev, a.name, "down"):
                    assert time.monotonic() - t_hang < 10, f"{a.name} never went down: {d.prober.clusters[a.name]}"
                    if healthy.last_probe is not None and (not seen or healthy.last_probe != seen[-1]):
                        seen.append(healthy.last_probe)
                    await asyncio.sleep(0.02)
                elapsed = time.monotonic() - t_hang
                gaps = [y - x for x, y in zip(seen, seen[1:])]
                print(f"\n{a.name} down after {elapsed:.2f}s; {b.name} probed {healthy.probes - probes0} times, "
                      f"largest gap {max(gaps):.3f}s (interval {interval}s)")
                assert healthy.probes - probes0 >= int(elapsed / interval) - 1
                assert max(gaps) < interval + 0.3, gaps
                assert d.prober.clusters[a.name].error == "probe timed out after 1.0s"
                assert healthy.health.state == HealthState.UP and not cluster_events(ev, b.name, "degraded")

                jobs = [job() for _ in range(2)]
                for body in jobs:
                    await publish(s, body)
                sids = [j["submission_id"] for j in jobs]
                await ev.wait_final(sids, timeout=15)
                assert set(dispatched_to(ev, sids).values()) == {b.name}
                t_stop = time.monotonic()
            stop_s = time.monotonic() - t_stop
            await asyncio.sleep(0.1)
            leaked = [t for t in asyncio.all_tasks() - before
                      if not t.done() and t is not asyncio.current_task() and not is_fake_task(t)]
            assert not leaked, f"tasks left after daemon.stop(): {leaked}"
            assert stop_s < 3.0, f"daemon.stop() took {stop_s:.1f}s with a hanging cluster"
            assert a.requests["GET /api/cluster_status"] >= 3


async def test_hanging_cluster_does_not_delay_tracking_elsewhere(tmp_path: Any) -> None:
    """Jobs on a healthy cluster are seen to end promptly while another cluster, which has
    jobs of the daemon's to track, hangs."""
    s = make_settings(tmp_path, probe_timeout_s=1.0, dispatch_timeout_s=5.0)
    async with fake_fleet(2, name="trk") as fleet:
        a, b = fleet
        async with Events(s) as ev, running_daemon(s, fleet.configs()):
            await wait_health(ev, a.name, "up")
            await wait_health(ev, b.name, "up")
            long = job("/bin/sleep 30", preferred_cluster=a.name)
            await publish(s, long)
            await ev.wait_for(lambda: "RUNNING" in ev.states(long["submission_id"]), 10, "long job running")
            a.mode = "hang"
            jobs = [job("/bin/sleep 0.3", preferred_cluster=b.name) for _ in range(2)]  # both fit on b
            for body in jobs:
                await publish(s, body)
            lags: dict[str, float] = {}
            deadline = time.monotonic() + 20
            while len(lags) < len(jobs):
                assert time.monotonic() < deadline, f"jobs on {b.name} never ended: {ev.items[-10:]}"
                b.advance()
                for body in jobs:
                    sub = body["submission_id"]
                    if sub not in lags and any(e.get("final") for e in ev.of(sub)):
                        ended = b.jobs[sub].ended_at
                        assert ended is not None
                        lags[sub] = time.time() - ended
                await asyncio.sleep(0.02)
            print(f"\nend-to-event lags on {b.name} while {a.name} hangs: "
                  + ", ".join(f"{x:.2f}s" for x in lags.values()))
            assert max(lags.values()) < 1.5, (
                f"BUG (daemon._track_loop): jobs on {b.name} were seen to end up to {max(lags.values()):.1f}s late "
                f"while {a.name} hangs: the loop gathers every cluster's job list, so one that never answers "
                f"holds back the others for dispatch_timeout_s ({s.dispatch_timeout_s}s) each round")


async def test_tracking_asks_for_each_job_on_a_cluster_that_lists_many(tmp_path: Any) -> None:
    """Ray keeps every job it ran: on a cluster whose list is much longer than the jobs the
    daemon follows there, it lists once, then asks for each job. A look that fails is not a
    miss; a job its cluster no longer knows is LOST, as when it dropped out of the list."""
    s = make_settings(tmp_path)
    async with fake_fleet(1, name="long") as fleet:
        (c,) = fleet
        c.add_history(200)  # other users' jobs, long finished
        async with Events(s) as ev, running_daemon(s, fleet.configs()):
            await wait_health(ev, c.name, "up")
            slow, gone = job("/bin/sleep 2.5"), job("/bin/sleep 30")
            await publish(s, slow)
            await ev.wait_for(lambda: "RUNNING" in ev.states(slow["submission_id"]), 10, "job running")
            await asyncio.sleep(2 * s.track_interval_s)
            assert c.requests["GET /api/jobs/"] == 1 and c.requests["GET /api/jobs/{id}"] >= 1
            get_job = c.get_job
            c.get_job = lambda sid: (500, "Internal Server Error")  # type: ignore[method-assign,assignment]
            failing = c.requests["GET /api/jobs/{id}"]
            await asyncio.sleep(4 * s.track_interval_s)
            assert c.requests["GET /api/jobs/{id}"] >= failing + 3  # looks failed, and no LOST from them
            c.get_job = get_job  # type: ignore[method-assign]
            await ev.wait_for(lambda: any(e.get("final") for e in ev.of(slow["submission_id"])), 10, "job ended")
            assert ev.states(slow["submission_id"]) == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
            await publish(s, gone)
            await ev.wait_for(lambda: "RUNNING" in ev.states(gone["submission_id"]), 10, "second job running")
            del c.jobs[gone["submission_id"]]  # the cluster forgets it (its head restarted, say)
            await ev.wait_for(lambda: any(e.get("final") for e in ev.of(gone["submission_id"])), 10, "job lost")
            lost = [e for e in ev.of(gone["submission_id"]) if e["state"] == "LOST"]
            assert lost and lost[0]["message"] == "its cluster no longer knows the job"
            assert c.requests["GET /api/jobs/"] == 1, "listed again although 200 jobs are listed for one followed"


async def test_error_and_garbage_clusters_get_no_jobs(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    async with fake_fleet(5, name="bad") as fleet:
        good, e500, html, wrong, flaky = fleet
        e500.mode = "error500"
        html.mode = "garbage"
        wrong.mode = "garbage"
        wrong.garbage_body = b'{"result": true, "data": {"clusterStatus": {"time": 1}}}'
        async with Events(s) as ev, running_daemon(s, fleet.configs()) as d:
            await wait_health(ev, good.name, "up")
            await wait_health(ev, flaky.name, "up")
            for bad in (e500, html, wrong):
                await wait_health(ev, bad.name, "down")
                assert not cluster_events(ev, bad.name, "up")
            flaky.mode = "error500"
            await wait_health(ev, flaky.name, "degraded")
            await wait_health(ev, flaky.name, "down")
            assert "HTTP 500" in (d.prober.clusters[flaky.name].error or "")
            assert "not JSON" in (d.prober.clusters[html.name].error or "")
            assert "unexpected cluster_status" in (d.prober.clusters[wrong.name].error or "")

            jobs = [job() for _ in range(6)]
            await publish_many(s, [(body, 0) for body in jobs])
            sids = [j["submission_id"] for j in jobs]
            await ev.wait_final(sids, timeout=20)
            assert set(dispatched_to(ev, sids).values()) == {good.name}
            assert set(final_states(ev, sids).values()) == {"SUCCEEDED"}
            for bad in (e500, html, wrong, flaky):
                assert bad.requests["POST /api/jobs/"] == 0, f"{bad.name} got a job"


async def _round_time(d: Any) -> float:
    """Time from the start of a probe round until every cluster has finished its probe of it;
    with the probes in a child process (whose ticks are not seen here), from now until every
    cluster has been probed again."""
    r0 = d.prober.rounds
    while d.prober.child is None and d.prober.rounds == r0:
        await asyncio.sleep(0.001)
    t0 = time.monotonic()
    counts = {n: st.probes for n, st in d.prober.clusters.items()}
    while any(st.probes <= counts[n] for n, st in d.prober.clusters.items()):
        await asyncio.sleep(0.002)
    return time.monotonic() - t0


@pytest.mark.parametrize("probe_process_from", [10_000, 1], ids=["probes in the daemon", "probes in a child process"])
async def test_two_hundred_clusters(tmp_path: Any, probe_process_from: int) -> None:
    s = make_settings(tmp_path, probe_interval_s=1.0, window_size=16, probe_process_from=probe_process_from)
    async with fake_fleet(200, name="many", shared=True) as fleet:
        for c in fleet:
            c.latency_s = 0.1  # one by one, a round would take 20 s
        async with Events(s) as ev, running_daemon(s, fleet.configs()) as d:
            deadline = time.monotonic() + 15
            while not all(st.health.state == HealthState.UP for st in d.prober.clusters.values()):
                assert time.monotonic() < deadline, "not every cluster came up"
                await asyncio.sleep(0.05)
            rounds = [await _round_time(d) for _ in range(3)]
            print(f"\nprobe rounds over 200 clusters answering in 100 ms: "
                  f"{', '.join(f'{r * 1000:.0f} ms' for r in rounds)}")
            assert (d.prober.child is not None) == (probe_process_from == 1)
            # A round starts a slice of the clusters at a time over the interval, and the last
            # slice's probes take 100 ms more: concurrent, since one by one would take 20 s. In a
            # child process a round is seen from any moment in it: up to an interval more.
            assert max(rounds) < (2.5 if d.prober.child else 1.5) * s.probe_interval_s, rounds

            jobs = [job("/bin/sleep 0.5") for _ in range(50)]
            t0 = time.monotonic()
            await publish_many(s, [(body, 0) for body in jobs])
            sids = [j["submission_id"] for j in jobs]
            await ev.wait_final(sids, timeout=25)
            used = dispatched_to(ev, sids)
            print(f"50 jobs done in {time.monotonic() - t0:.1f}s on {len(set(used.values()))} clusters")
            assert set(final_states(ev, sids).values()) == {"SUCCEEDED"}
            assert len(set(used.values())) >= 25
            assert sum(len(c.submissions) for c in fleet) == 50
            assert all(c.max_demand.get("CPU", 0.0) <= c.total("CPU") for c in fleet)


def _overcommits(fleet: Fleet) -> list[str]:
    out = []
    for c in fleet:
        queued = [j.submission_id for j in c.jobs.values()
                  if j.reserved_at is None or j.reserved_at > j.submitted_at]
        if c.max_demand.get("CPU", 0.0) > c.total("CPU") or queued:
            out.append(f"{c.name}: up to {c.max_demand.get('CPU', 0.0):g} CPUs demanded at once on "
                       f"{c.total('CPU'):g}; {len(queued)} jobs waited in Ray's own queue")
    return out


@dataclass
class Burst:
    fleet: Fleet
    states: dict[str, str]
    took: float
    delays: list[float]


@pytest.fixture(scope="module")
async def burst(tmp_path_factory: pytest.TempPathFactory) -> Burst:
    """10 one-CPU jobs of 1-2.5 s published at once onto two clusters of 2 CPUs whose
    snapshot is refreshed only every 5 s (Ray's default), run once for the tests below."""
    s = make_settings(tmp_path_factory.mktemp("burst"))
    durations = [1.0, 2.0, 1.5, 1.0, 2.5, 1.2, 1.0, 1.8, 1.3, 1.1]
    async with fake_fleet(2, name="burst", snapshot_every_s=5.0, start_delay_s=0.2) as fleet:
        async with Events(s) as ev, running_daemon(s, fleet.configs()):
            await wait_health(ev, fleet[0].name, "up")
            await wait_health(ev, fleet[1].name, "up")
            # Start about 2 s before the fakes' second snapshot, so that the burst has jobs
            # that run and end between two snapshots, and jobs that a snapshot counts.
            await asyncio.sleep(max(0.0, fleet[0].started_at + 3.0 - time.time()))
            jobs = [job(f"/bin/sleep {t}") for t in durations]
            t0 = time.monotonic()
            await publish_many(s, [(body, 0) for body in jobs])
            sids = [j["submission_id"] for j in jobs]
            await ev.wait_final(sids, timeout=25)
            took = time.monotonic() - t0
    last_submission = max(t for c in fleet for t, _ in c.submissions)
    delays = sorted(x for c in fleet for x in c.idle_slot_delays(last_submission))
    print(f"\nburst of 10 on 2x2 CPUs done in {took:.1f}s; freed slots idle for (s): "
          + ", ".join(f"{x:.2f}" for x in delays)
          + f"; snapshots taken: {[c.snapshots_taken for c in fleet]}; {'; '.join(_overcommits(fleet))}")
    return Burst(fleet, final_states(ev, sids), took, delays)


async def test_burst_never_overcommits(burst: Burst) -> None:
    assert set(burst.states.values()) == {"SUCCEEDED"}
    problems = _overcommits(burst.fleet)
    assert not problems, (
        "BUG (clusters.py Ledger.finished): a job that starts and ends between two snapshots gets a "
        "'release' ledger entry although no snapshot counted it; the release cancels another job's "
        "reservation, the node looks free and is overcommitted: " + "; ".join(problems))


async def test_burst_reuses_freed_slots_between_snapshots(burst: Burst) -> None:
    assert len(burst.delays) >= 6, f"only {len(burst.delays)} freed slots were taken by new submissions"
    worst = max(burst.delays)
    assert worst < 2.0, (
        f"BUG (clusters.py Ledger.prune / daemon._apply): a freed slot stayed idle {worst:.2f}s while jobs "
        "waited (snapshot every 5 s; all delays: " + ", ".join(f"{x:.2f}" for x in burst.delays) + "). A "
        "reservation is kept until a snapshot is newer than the daemon's RUNNING sighting + snapshot_margin_s, "
        "so a snapshot taken inside that window counts the job twice (snapshot + ledger) until the next one.")


async def test_simulator_nodes_of_different_sizes_on_a_compressed_clock() -> None:
    """The simulator behind bench/: per-node usage in cluster_status for nodes of different
    sizes, PENDING while no node fits, and job durations on a clock 100 times faster."""
    from fakeray import FakeCluster, ScaledClock, make_nodes

    clock = ScaledClock(100.0)
    nodes = make_nodes("sim", [{"CPU": 2}, {"CPU": 8}])
    small, big = list(nodes)
    c = FakeCluster("sim", nodes, clock=clock)
    assert c.submit({"entrypoint": "/bin/sleep 60", "submission_id": "a", "entrypoint_num_cpus": 4})[0] == 200
    assert c.submit({"entrypoint": "/bin/sleep 60", "submission_id": "b", "entrypoint_num_cpus": 6})[0] == 200
    by_node = c.cluster_status()["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]
    assert by_node[big]["CPU"] == [4.0, 8.0] and by_node[small]["CPU"] == [0.0, 2.0]
    assert c.get_job("b")[1]["status"] == "PENDING"  # 6 CPUs fit no node now
    await asyncio.sleep(0.7)  # 60 simulated seconds
    assert c.get_job("a")[1]["status"] == "SUCCEEDED"
    assert c.get_job("b")[1]["status"] == "RUNNING"
    assert c.submit({"entrypoint": "/bin/true", "submission_id": "a"})[0] == 500  # already exists
    assert c.get_job("nope")[0] == 404


async def test_a_probe_answer_with_oversized_headers_is_a_ray_error_not_a_crash() -> None:
    """Headers past the stream's limit end the probe with RayAmbiguous, as any unreadable answer."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    d = RayDashboard(ClusterConfig("big", f"http://127.0.0.1:{port}"), 2.0)
    try:
        with pytest.raises(RayAmbiguous, match="LimitOverrunError"):
            await d.cluster_status()
    finally:
        await d.close()
        server.close()


def test_probe_schedule_is_one_round_at_once_then_even_slices() -> None:
    """Every later round probes each cluster exactly once, in slices whose waits fill the interval."""
    for n in (1, 7, 20, 1000):
        steps = schedule(n, 1.0)
        assert next(steps) == (slice(None), 1.0)
        for _ in range(3):
            round_ = [next(steps) for _ in range(min(n, PROBE_SLICES))]
            assert sorted(i for which, _ in round_ for i in range(n)[which]) == list(range(n))
            assert sum(wait for _, wait in round_) == pytest.approx(1.0)
            assert len({len(range(n)[which]) for which, _ in round_}) <= 2  # as even as n allows


@pytest.mark.parametrize("probe_process_from", [1000, 1], ids=["in-process", "probe-process"])
async def test_probes_after_the_first_round_come_spread_over_the_interval(tmp_path: Any,
                                                                           probe_process_from: int) -> None:
    """A round's probes are not one burst at the dashboards (and their answers not one burst at
    the daemon, which a job dispatched at that moment would wait behind): after the first round
    they start a slice at a time. A hundred milliseconds see a few of them, never half."""
    n = 40
    s = make_settings(tmp_path, probe_interval_s=1.0, probe_process_from=probe_process_from)
    async with fake_fleet(n, name="spread", shared=True) as fleet:

        def probes() -> int:
            return sum(c.requests["GET /api/cluster_status"] for c in fleet.clusters)

        async def on_health(state: Any, health: Any) -> None:
            return None

        prober = Prober(s, fleet.configs(), on_health, lambda: None)
        stopping = asyncio.Event()
        task = asyncio.create_task(prober.run(stopping))
        try:
            deadline = time.monotonic() + 15
            while probes() < n:  # the first round, all at once
                assert time.monotonic() < deadline, "no first round of probes"
                await asyncio.sleep(0.01)
            seen: list[tuple[float, int]] = []
            while not seen or seen[-1][1] - seen[0][1] < 1.5 * n:  # watched until two rounds went on
                assert time.monotonic() < deadline + 15, "later rounds of probes did not come"
                seen.append((time.monotonic(), probes()))
                await asyncio.sleep(0.01)
        finally:
            stopping.set()
            await task
    busiest = max(c2 - c1 for t1, c1 in seen for t2, c2 in seen if 0 <= t2 - t1 <= 0.1)
    assert busiest <= n // 2, f"{busiest} of {n} probes within 100 ms"
