"""Security, second round, against real Ray clusters and the real RabbitMQ (docs/security.md):
each attack is made as a hostile producer or client would make it, and refused with a reason,
while the legitimate use beside it works."""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest

from scheduler_daemon.rayapi import RayDashboard, RayRejected, job_path
from support import Events, make_settings, publish, running_daemon, sid, wait_idle
from test_hostile_input import _dead_letters

pytestmark = pytest.mark.usefixtures("rabbitmq")

PY = sys.executable  # the interpreter the local Ray heads run


async def _ray_job(cluster, ray_id: str) -> dict:
    dash = RayDashboard(cluster, 10)
    try:
        return dict(await dash.job(ray_id))
    finally:
        await dash.close()


async def test_a_locked_cluster_refuses_env_prefixes_and_runtime_env_it_does_not_allow(tmp_path, ray_clusters):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    script = jobs / "show.py"
    script.write_text("import os\nprint('OK=' + os.environ.get('OK', '-'), 'SITE=' + os.environ['SITE'])\n")
    cpu, gpu = ray_clusters
    locked = replace(cpu, allowed_script_dirs=(str(jobs),), allowed_interpreters=(PY,),
                     runtime_env={"env_vars": {"SITE": "cpu"}})
    s = make_settings(tmp_path)
    attacks = {
        sid("preload"): ({"entrypoint": f"LD_PRELOAD=/tmp/x.so {PY} {script}"}, "sets environment variables"),
        sid("pip"): ({"entrypoint": f"{PY} {script}", "runtime_env": {"pip": ["evil"]}}, "'pip' is not allowed"),
        sid("wd"): ({"entrypoint": f"{PY} {script}", "runtime_env": {"working_dir": "s3://bucket/code.zip"}}, "'working_dir'"),
        sid("pypath"): ({"entrypoint": f"{PY} {script}", "runtime_env": {"env_vars": {"PYTHONPATH": "/tmp"}}},
                        "PYTHONPATH is refused"),
        sid("ld"): ({"entrypoint": f"{PY} {script}", "runtime_env": {"env_vars": {"LD_PRELOAD": "/tmp/x.so"}}},
                    "LD_PRELOAD is refused"),
        sid("override"): ({"entrypoint": f"{PY} {script}", "runtime_env": {"env_vars": {"SITE": "mine"}}},
                          "set by the cluster and cannot be overridden"),
    }
    good = sid("good")
    async with running_daemon(s, (locked,)) as daemon, Events(s) as ev:
        await wait_idle(daemon)
        await publish(s, {"submission_id": good, "entrypoint": f"{PY} {script}",
                          "runtime_env": {"env_vars": {"OK": "1"}}})
        for key, (body, _) in attacks.items():
            await publish(s, {**body, "submission_id": key}, message_id=key)
        await ev.wait_final([good, *attacks], timeout=120)
        reasons = await _dead_letters(s, len(attacks))
        for key, (_, why) in attacks.items():
            assert ev.states(key)[-1] == "REJECTED" and why in ev.of(key)[-1]["message"], (key, ev.of(key)[-1])
            assert why in reasons[key]
        assert ev.states(good)[-1] == "SUCCEEDED"
        dash = RayDashboard(locked, 10)
        try:
            assert "OK=1 SITE=cpu" in await dash.logs(good)
            for key in attacks:  # none of them ever reached Ray
                with pytest.raises(RayRejected):
                    await dash.job(key)
        finally:
            await dash.close()


async def test_a_job_on_ray_that_rmcs_did_not_submit_is_never_adopted(tmp_path, ray_clusters):
    cpu, _ = ray_clusters
    squatted = sid("direct")
    dash = RayDashboard(cpu, 10)
    try:
        # Someone submits to Ray directly; then a producer names that id, hoping to own it.
        assert await dash.submit({"entrypoint": "/bin/sleep 30", "submission_id": squatted,
                                  "metadata": {"by": "someone"}})
        s = make_settings(tmp_path)
        own = sid("own")
        async with running_daemon(s, (cpu,)) as daemon, Events(s) as ev:
            await wait_idle(daemon, 60)
            await publish(s, {"submission_id": squatted, "entrypoint": "/bin/true"})
            await publish(s, {"submission_id": own, "entrypoint": "/bin/true"})
            await ev.wait_final([squatted, own], timeout=90)
            rejected = ev.of(squatted)[-1]
            assert rejected["state"] == "REJECTED" and "conflict" in rejected["message"] \
                and "did not submit" in rejected["message"]
            assert "DISPATCHED" not in ev.states(squatted)
            assert ev.states(own)[-1] == "SUCCEEDED"
            # The squatter cannot stop it through rmcs either: rmcs does not follow it.
            assert (await dash.job(squatted))["status"] in ("PENDING", "RUNNING")
            assert (await dash.job(squatted))["metadata"] == {"by": "someone"}
    finally:
        await dash.stop(squatted)
        await dash.close()


async def test_dot_ids_are_refused_and_paths_stay_in_place(tmp_path, ray_clusters):
    cpu, _ = ray_clusters
    with pytest.raises(RayRejected, match="not a path segment"):
        job_path("..")
    assert job_path("a.b").endswith("/a.b")
    s = make_settings(tmp_path)
    dotted = "x..y"
    signs = f"-.{uuid.uuid4().hex[:12]}".translate(str.maketrans("0123456789abcdef", "-_-_-_-_-_-_-_-_"))
    async with running_daemon(s, (cpu,)) as daemon, Events(s) as ev:
        await wait_idle(daemon, 60)
        for bad in ("..", ".", "..."):
            await publish(s, {"submission_id": bad, "entrypoint": "/bin/true"}, message_id=bad)
        for good in (dotted, signs):  # the contract's [A-Za-z0-9._-]{1,128}: only dots are refused
            await publish(s, {"submission_id": good, "entrypoint": "/bin/true"})
        await ev.wait_final([dotted, signs], timeout=60)
        reasons = await _dead_letters(s, 3)
        for bad in ("..", ".", "..."):
            assert "not only dots" in reasons[bad]
        async with aiohttp.ClientSession() as http:
            base = f"http://{s.http_addr}"
            for good in (dotted, signs):
                assert ev.states(good)[-1] == "SUCCEEDED"
                assert (await _ray_job(cpu, good))["status"] == "SUCCEEDED"
                async with http.get(f"{base}/api/v1/jobs/{good}") as resp:
                    assert resp.status == 200 and (await resp.json())["state"] == "SUCCEEDED"
            async with http.get(yarl_raw(f"{base}/api/v1/jobs/%2E%2E")) as resp:
                assert resp.status in (400, 404)


def yarl_raw(url: str):
    import yarl

    return yarl.URL(url, encoded=True)


async def test_logs_are_capped_to_their_tail(tmp_path, ray_clusters):
    cpu, _ = ray_clusters
    s = make_settings(tmp_path, max_log_bytes=64 * 1024)
    big = sid("big")
    # About 3 MB of log: lines of 100 characters, numbered.
    code = "import sys\nfor i in range(30000): sys.stdout.write(f'{i:08d} ' + 'x' * 90 + '\\n')\nprint('THE END')"
    script = tmp_path / "big.py"
    script.write_text(code)
    async with running_daemon(s, (cpu,)) as daemon, Events(s) as ev:
        await wait_idle(daemon, 60)
        await publish(s, {"submission_id": big, "entrypoint": f"{PY} {script}"})
        await ev.wait_final([big], timeout=90)
        async with aiohttp.ClientSession() as http:
            base = f"http://{s.http_addr}/api/v1/jobs/{big}/logs"
            async with http.get(base) as resp:
                body = await resp.json()
            assert resp.status == 200 and body["truncated"] is True
            assert len(body["logs"]) <= 64 * 1024 and body["logs"].endswith("THE END\n")
            async with http.get(base, params={"tail": "1000"}) as resp:
                body = await resp.json()
            assert len(body["logs"]) <= 1000 and body["logs"].endswith("THE END\n") and body["truncated"]
            first = body["logs"].splitlines()[0]
            assert len(first) == 99 and first[:8].isdigit()  # starts at a line
            async with http.get(base, params={"tail": str(64 * 1024 + 1)}) as resp:
                assert resp.status == 400 and "tail must be" in (await resp.json())["error"]
        assert orjson.loads(orjson.dumps(body))  # plain JSON
        del daemon
