"""Queues where users look (docs/queues.md): GET /api/v1/queues, ?queue= on the job list, queue on
records, metrics labelled by queue, `rmcs queues`, `rmcs submit --queue` and the helper's queue=;
against the real RabbitMQ, the status service inline, and a fake dashboard."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from fakeray import FakeCluster, FakeServer
from support import make_settings, running_daemon, sid

from producers.job import build_job
from rmcs_cli.main import main
from scheduler_daemon.queueconf import parse_queues

pytestmark = pytest.mark.usefixtures("rabbitmq")

QUEUES = {"research": {"weight": 2, "guaranteed": {"CPU": 1}, "limit": {"CPU": 2}, "publishers": ["guest"]},
          "batch": {}}


def test_the_helper_routes_by_queue() -> None:
    body, _ = build_job("/bin/true", queue="research")
    assert body["queue"] == "research"
    assert "queue" not in build_job("/bin/true", queue="default")[0]
    with pytest.raises(ValueError, match="queue must be a queue name"):
        build_job("/bin/true", queue="no such")


async def rmcs(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.wait_for(asyncio.to_thread(main, ["--config", str(config), *args], stdout=out, stderr=err), 60)
    return code, out.getvalue(), err.getvalue()


async def test_queues_api_job_filter_metrics_and_cli(tmp_path: Path) -> None:
    s = make_settings(tmp_path, queues=parse_queues(QUEUES))
    config = tmp_path / "rmcs.yaml"
    keys = ("amqp_url", "http_addr", "intake_exchange", "intake_queue", "intake_routing_key",
            "dead_letter_exchange", "dead_letter_queue", "events_exchange")
    config.write_text(yaml.safe_dump({**{k: getattr(s, k) for k in keys}, "queues": QUEUES}))
    cluster = FakeCluster("alpha", nodes={"n1": {"CPU": 4, "memory": 8 * 2**30}})
    server = FakeServer([cluster])
    await server.start()
    try:
        async with running_daemon(s, (cluster.config(),)):
            job = sid("api")
            code, out, err = await rmcs(config, "submit", "--queue", "research", "--submission-id", job, "--wait",
                                        "--", "/bin/sleep", "0.2")
            assert code == 0, (out, err)
            base = f"http://{s.http_addr}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/api/v1/jobs", params={"queue": "research"}) as r:
                    jobs = (await r.json())["jobs"]
                assert [j["submission_id"] for j in jobs] == [job] and jobs[0]["queue"] == "research"
                async with http.get(f"{base}/api/v1/jobs", params={"queue": "batch"}) as r:
                    assert (await r.json())["jobs"] == []
                report: dict[str, Any] = {}
                for _ in range(50):
                    async with http.get(f"{base}/api/v1/queues") as r:
                        assert r.status == 200
                        report = {q["name"]: q for q in (await r.json())["queues"]}
                    if report.get("research", {}).get("waiting_in_broker") is not None:
                        break
                    await asyncio.sleep(0.2)
                research = report["research"]
                assert (research["weight"], research["guaranteed"], research["limit"], research["publishers"]) == \
                    (2.0, {"CPU": 1.0}, {"CPU": 2.0}, ["guest"])
                assert research["running"] == 0 and research["waiting_in_broker"] == 0
                assert set(report) == {"default", "research", "batch"}
                async with http.get(f"{base}/metrics") as r:
                    metrics = await r.text()
                assert 'rmcs_queue_jobs_running{queue="research"} 0.0' in metrics
                assert 'rmcs_queue_dominant_share{queue="batch"}' in metrics
                assert "rmcs_jobs_preempted_total 0.0" in metrics
            code, out, err = await rmcs(config, "queues")
            assert code == 0, err
            header, *rows = out.splitlines()
            assert header.split()[:3] == ["QUEUE", "WEIGHT", "GUARANTEED"]
            assert any(r.split()[:4] == ["research", "2", "CPU=1", "CPU=2"] for r in rows), out
    finally:
        await server.stop()
