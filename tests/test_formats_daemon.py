"""The seed 003 and 004 job formats through the whole daemon: real RabbitMQ, fake dashboards."""

from __future__ import annotations

from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer
from scheduler_daemon.queueconf import parse_queues
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


async def test_a_seed_jobs_queue_selects_the_rmcs_queue_and_an_unknown_one_is_rejected(tmp_path: Any) -> None:
    """PaddleFlow's `schedulingPolicy.queue` and seed 003's `virtualCluster` name the rmcs queue."""
    s = make_settings(tmp_path, queues=parse_queues({"dzz": {"weight": 2}}))
    gpu = FakeCluster("gpu", duration_s=0.2,
                      nodes={"n1": {"CPU": 16, "GPU": 4, "memory": 64 * GIB, "accelerator_type:TITANX": 1}})
    server = FakeServer([gpu])
    await server.start()
    try:
        async with running_daemon(s, (gpu.config(tags=frozenset({"default", "gpu"})),)), Events(s) as ev:
            ids = {name: sid(name) for name in ("paddle", "lost", "vc")}
            paddle = seed004_jobspec(command="/usr/bin/python3 /srv/train.py")  # queue dzz
            paddle["id"] = ids["paddle"]
            lost = seed004_jobspec(command="/usr/bin/python3 /srv/train.py")
            lost["id"], lost["schedulingPolicy"]["queue"] = ids["lost"], "nope"
            vc = {**seed(SEED003_HELLOWORLD), "virtualCluster": "nope"}
            await publish(s, paddle, message_id=ids["paddle"], queue="dzz")
            await publish(s, lost, message_id=ids["lost"], queue="nope", routing_key="submit")
            await publish(s, vc, message_id=ids["vc"])
            await ev.wait_final(list(ids.values()), timeout=20)
            done = ev.of(ids["paddle"])[-1]
            assert (done["state"], done["queue"]) == ("SUCCEEDED", "dzz"), ev.of(ids["paddle"])
            for name in ("lost", "vc"):
                rejected = ev.of(ids[name])[-1]
                assert rejected["state"] == "REJECTED", ev.of(ids[name])
                assert "no queue named 'nope'; the queues are default, dzz" in rejected["message"], rejected
            assert {j.submission_id for j in gpu.jobs.values()} == {ids["paddle"]}
    finally:
        await server.stop()
