"""Log tails: each job's log tail is kept when it ends, and `rmcs logs` (the status service's
logs API) answers from it once the cluster no longer has the logs (its node was removed by the
autoscaler). On the simulator with the real daemon and the real RabbitMQ; on real Ray in
test_autoscaling_real.py."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import pytest
import yaml

from fakeray import FakeServer, _start
from fakescale import ScalingCluster
from rmcs_cli import main
from scheduler_daemon.status.tails import tail_of
from scheduler_daemon.nodetypes import parse_autoscaling
from support import Events, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


def test_tail_of_keeps_the_end_whole_characters() -> None:
    assert tail_of("abc", 10) == ("abc", False)
    assert tail_of("0123456789", 4) == ("6789", True)
    text, cut = tail_of("é" * 10, 5)  # two bytes each: a cut character is dropped
    assert cut and text == "éé"


async def test_rmcs_logs_answers_after_the_node_is_gone(tmp_path) -> None:
    c = ScalingCluster("scaled", {"gpuworker": ({"CPU": 2.0, "GPU": 1.0}, 1)}, launch_delay_s=0.5,
                       idle_timeout_s=1.0)
    fleet = await _start([c], [FakeServer([c])])
    s = make_settings(tmp_path)
    spec = {"node_types": {"gpuworker": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 1}}}
    try:
        async with running_daemon(s, (c.config(autoscaling=parse_autoscaling(spec, "scaled")),)) as daemon, \
                Events(s) as ev:
            job = sid("tail")
            await publish(s, {"submission_id": job, "entrypoint": "/bin/sleep 1",
                              "resource_requirements": {"CPU": 1, "GPU": 1}})
            await ev.wait_final([job], 30)
            assert ev.states(job)[-1] == "SUCCEEDED"
            for _ in range(100):  # the tail is kept, and the node removed
                if daemon.service.log_keeper.kept and c.removed:
                    break
                await asyncio.sleep(0.1)
            assert c.route("GET", f"/api/jobs/{job}/logs", b"")[0] == 500  # Ray's logs are gone
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{s.http_addr}/api/v1/jobs/{job}/logs") as resp:
                    body = await resp.json()
            assert resp.status == 200, body
            assert body["logs"].startswith("[rmcs: scaled no longer has this job's logs; its logs, kept when attempt 1 ended]")
            assert "fake ray scaled: running /bin/sleep 1" in body["logs"]
            config = tmp_path / "rmcs.yaml"
            config.write_text(yaml.safe_dump({"amqp_url": s.amqp_url, "http_addr": s.http_addr,
                                              "events_exchange": s.events_exchange}))
            out, err = io.StringIO(), io.StringIO()
            code = await asyncio.to_thread(main, ["--config", str(config), "logs", job], stdout=out, stderr=err)
            assert code == 0, err.getvalue()
            assert "running /bin/sleep 1" in out.getvalue()
    finally:
        await fleet.close()
