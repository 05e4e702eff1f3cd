"""The seed 003 and 004 job formats through the whole daemon: real RabbitMQ, fake dashboards."""

from __future__ import annotations

from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer
from support import Events, make_settings, publish, running_daemon, sid
from test_formats import SEED003_HELLOWORLD, seed, seed004_jobspec

pytestmark = pytest.mark.usefixtures("rabbitmq")

GIB = 1024 ** 3


async def test_seed_formats_run_and_multi_role_jobs_are_rejected(tmp_path: Any) -> None:
    s = make_settings(tmp_path)
    gpu = FakeCluster("gpu", duration_s=0.2,
                      nodes={"n1": {"CPU": 16, "GPU": 4, "memory": 64 * GIB,
                                          "accelerator_type:TITANX": 1}})
    server = FakeServer([gpu])
    await server.start()
    try:
        async with running_daemon(s, (gpu.config(tags=frozenset({"default", "gpu"})),)), Events(s) as ev:
            hello = seed(SEED003_HELLOWORLD)
            paddle = seed004_jobspec(command="/usr/bin/python3 /srv/train.py")
            paddle.get("schedulingPolicy", {}).pop("queue", None)
            two_roles = seed(SEED003_HELLOWORLD)
            two_roles["taskRoles"] = [{**two_roles["taskRoles"][0], "name": "main"},
                                      {**two_roles["taskRoles"][0], "name": "work"}]
            ids = {name: sid(name) for name in ("hello", "paddle", "roles")}
            paddle["id"] = ids["paddle"]  # PaddleFlow's own job id becomes the submission id
            for name, body in (("hello", hello), ("paddle", paddle), ("roles", two_roles)):
                await publish(s, body, message_id=ids[name])
            await ev.wait_final(list(ids.values()), timeout=20)
            assert ev.states(ids["hello"])[-1] == "SUCCEEDED", ev.of(ids["hello"])
            assert ev.states(ids["paddle"])[-1] == "SUCCEEDED", ev.of(ids["paddle"])
            rejected = ev.of(ids["roles"])[-1]
            assert rejected["state"] == "REJECTED" and "cannot be expressed" in rejected["message"]
            submitted = {j.submission_id: j for j in gpu.jobs.values()}
            assert set(submitted) == {ids["hello"], ids["paddle"]}
            assert submitted[ids["hello"]].need.get("GPU") == 1
    finally:
        await server.stop()
