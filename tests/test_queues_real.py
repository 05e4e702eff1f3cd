"""Preemption on real local Ray clusters with the real RabbitMQ (docs/queues.md): an idle queue
that gets work gets its guarantee back by preemption, before the jobs holding the cluster end by
themselves; the preempted jobs run again and succeed, each attempt exactly once on Ray. How fast
is measured by bench/fair_share.py, not here."""

from __future__ import annotations

import time
from typing import Any

import pytest

from support import Events, assert_each_ran_once_on_ray, make_settings, publish, publish_many, running_daemon, sid

from scheduler_daemon.queueconf import parse_queues

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def test_preemption_gives_an_idle_queue_its_guarantee_back_on_ray(tmp_path: Any, ray_clusters: Any) -> None:
    cpu_only = (ray_clusters[0],)  # two CPUs
    s = make_settings(tmp_path, queues=parse_queues({"prod": {"guaranteed": {"CPU": 1}}, "batch": {}}))
    async with running_daemon(s, cpu_only), Events(s) as ev:
        batch = [sid("batch"), sid("batch")]
        await publish_many(s, [({"submission_id": b, "entrypoint": "/bin/sleep 6"}, 0) for b in batch], queue="batch")
        await ev.wait_for(lambda: all("RUNNING" in ev.states(b) for b in batch), 60, "batch holds the cluster")
        prod = sid("prod")
        t0 = time.time()
        await publish(s, {"submission_id": prod, "entrypoint": "/bin/sleep 1"}, queue="prod")
        await ev.wait_for(lambda: "RUNNING" in ev.states(prod), 30, "prod runs")
        print(f"prod dispatched {ev.first(prod, 'DISPATCHED') - t0:.2f} s and running "
              f"{ev.first(prod, 'RUNNING') - t0:.2f} s after it was published")
        await ev.wait_final(batch + [prod], 90)
        preempted = [b for b in batch if "PREEMPTED" in ev.states(b)]
        assert len(preempted) == 1, {b: ev.states(b) for b in batch}
        victim = preempted[0]
        others = [b for b in batch if b != victim]
        # prod got its place from the preemption, not from a batch job that ended by itself.
        assert ev.first(prod, "DISPATCHED") < ev.first(others[0], "SUCCEEDED"), ev.items
        assert [(e["state"], e["attempt"]) for e in ev.of(victim)][-1] == ("SUCCEEDED", 2)
        assert "queue prod is owed its guarantee" in next(e["message"] for e in ev.of(victim) if e["state"] == "PREEMPTED")
        assert all(ev.states(x)[-1] == "SUCCEEDED" for x in batch + [prod])
        # Every attempt ran once: the first attempt of the victim ended STOPPED on Ray, the second SUCCEEDED.
        await assert_each_ran_once_on_ray(cpu_only, others + [prod, f"{victim}~2"], status="SUCCEEDED")
        await assert_each_ran_once_on_ray(cpu_only, [victim], status="STOPPED")
