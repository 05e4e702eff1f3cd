"""Fair share on a simulated fleet (fake dashboards on a compressed clock) with the real RabbitMQ:
two flooding queues weighted 1:3 hold 25% and 75% of the CPUs; limits and max_running hold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fakeray import ScaledClock, make_nodes, start_fleet
from support import make_settings, publish_many, running_daemon, sid

from scheduler_daemon.queueconf import parse_queues

pytestmark = pytest.mark.usefixtures("rabbitmq")

SCALE = 10.0  # simulated seconds per wall second


def held_by_queue(fleet: Any, now: float) -> dict[str, float]:
    """CPUs held on the fleet by each queue's jobs (the submission id starts with the queue)."""
    held: dict[str, float] = {}
    for cluster in fleet.clusters:
        for job in cluster.jobs.values():
            if job.status(now) == "RUNNING":
                queue = job.submission_id.split("-", 1)[0]
                held[queue] = held.get(queue, 0.0) + job.need.get("CPU", 0.0)
    return held


async def flood(s: Any, queue: str, n: int, entrypoint: str, **res: float) -> None:
    await publish_many(s, [({"submission_id": sid(queue), "entrypoint": entrypoint,
                             **({"resource_requirements": res} if res else {})}, 0) for _ in range(n)], queue=queue)


async def test_two_flooding_queues_weighted_1_to_3_hold_25_and_75_percent(tmp_path: Any) -> None:
    clock = ScaledClock(SCALE)
    sizes = [{"CPU": 8, "memory": 32}] * 2
    fleet = await start_fleet(2, name="fs", clock=clock, nodes_of=lambda name: make_nodes(name, sizes))
    total = 2 * 2 * 8
    s = make_settings(tmp_path, window_size=8, probe_interval_s=0.2, track_interval_s=0.2,
                      queues=parse_queues({"light": {"weight": 1}, "heavy": {"weight": 3}}))
    try:
        async with running_daemon(s, fleet.configs()):
            # Jobs of 40 and 60 simulated seconds (4 and 6 wall seconds), more than the fleet can run
            # in the test. Not shorter: each freed slot costs the daemon a wall-clock moment to fill,
            # ten times as long in simulated time, and on a loaded machine that is what the shares
            # would measure (light 26.7%, heavy 69.9% with jobs of 20 and 30, in one CI run).
            await asyncio.gather(flood(s, "light", 600, "/bin/sleep 40"), flood(s, "heavy", 600, "/bin/sleep 60"))
            start = clock()
            samples: list[dict[str, float]] = []
            while clock() - start < 180:
                await asyncio.sleep(0.25)
                if clock() - start >= 60:  # after the first (simulated) minute
                    samples.append(held_by_queue(fleet, clock()))
            light = sum(x.get("light", 0.0) for x in samples) / len(samples) / total
            heavy = sum(x.get("heavy", 0.0) for x in samples) / len(samples) / total
            worst = max(abs(x.get("light", 0.0) / total - 0.25) for x in samples)
            print(f"light {light:.3f} heavy {heavy:.3f} over {len(samples)} samples; worst light sample off by {worst:.3f}")
            assert abs(light - 0.25) <= 0.05 and abs(heavy - 0.75) <= 0.05, (light, heavy)
    finally:
        await fleet.close()


async def test_a_queue_never_holds_more_than_its_limit_nor_runs_more_than_max_running(tmp_path: Any) -> None:
    clock = ScaledClock(SCALE)
    sizes = [{"CPU": 16, "memory": 64}]
    fleet = await start_fleet(2, name="lim", clock=clock, nodes_of=lambda name: make_nodes(name, sizes))
    s = make_settings(tmp_path, window_size=8, probe_interval_s=0.2, track_interval_s=0.2,
                      queues=parse_queues({"capped": {"limit": {"CPU": 6}}, "few": {"max_running": 3}}))
    try:
        async with running_daemon(s, fleet.configs()) as daemon:
            await asyncio.gather(flood(s, "capped", 300, "/bin/sleep 10", CPU=2),
                                 flood(s, "few", 300, "/bin/sleep 10"))
            start = clock()
            most_cpu = most_jobs = 0.0
            seen_cap = seen_few = False
            while clock() - start < 60:
                await asyncio.sleep(0.05)
                held = held_by_queue(fleet, clock())
                in_flight = [t for t in daemon.book.tracked.values() if not t.final]
                flight_cpu = sum(t.job.resources["CPU"] for t in in_flight if t.job.queue == "capped")
                flight_few = sum(1 for t in in_flight if t.job.queue == "few")
                most_cpu = max(most_cpu, held.get("capped", 0.0), flight_cpu)
                most_jobs = max(most_jobs, flight_few)
                seen_cap |= held.get("capped", 0.0) == 6
                seen_few |= flight_few == 3
            assert most_cpu <= 6 and most_jobs <= 3, (most_cpu, most_jobs)
            assert seen_cap and seen_few, "each queue reached its bound while the fleet had room"
    finally:
        await fleet.close()
