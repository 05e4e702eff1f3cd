"""Job ownership and the stop rule, end to end: the daemon on a vhost of its own of the real
RabbitMQ, logged in as the least-privilege daemon user, fake Ray dashboards, and producers
(alice, bob, an admin) that each log in as a broker user of their own with the producer role.

The owner of a job is the broker-checked `user_id` of the message that submitted it (the default
owner without one); a stop is honoured from the owner or an admin, refused for anyone else with a
clear answer while the job goes on, over the broker and over the HTTP API alike (whose tokens
name the caller)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Iterator

import aio_pika
import aiohttp
import orjson
import pytest
import yaml

from brokeradmin import BrokerUsers, broker_users, settings_in
from fakeray import GIB, FakeCluster, FakeServer
from producers.core import Client, build_job
from producers.config import ProducerConfig
from scheduler_daemon.daemon import Daemon
from scheduler_daemon.jobs import ATTEMPT_HEADER, OWNER_HEADER
from scheduler_daemon.settings import Settings
from support import Events, make_settings, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")


@dataclass
class World:
    settings: Settings          # the daemon's, logged in as the daemon user
    observer: Settings          # guest on the vhost: for watching events and dead letters
    daemon: Daemon
    users: BrokerUsers
    alice: str
    bob: str
    boss: str
    solo: FakeCluster
    events: Events
    tokens: dict[str, str]      # user -> API token

    def client(self, user: str) -> Client:
        s = self.settings
        return Client(ProducerConfig(amqp_url=self.users.url(user), http_addr=s.http_addr,
                                     intake_exchange=s.intake_exchange, events_exchange=s.events_exchange))

    async def submit(self, user: str, entrypoint: str = "/bin/sleep 60", **kw: Any) -> str:
        client = self.client(user)
        try:
            body, prio = build_job(entrypoint, submission_id=kw.pop("submission_id", sid("own")), **kw)
            return await client.submit(body, prio, check_duplicate=False)
        finally:
            await client.close()

    async def stop_over_broker(self, user: str, job: str) -> str | None:
        client = self.client(user)
        try:
            return await client.stop_via_broker(job, f"{user} wants it stopped")
        finally:
            await client.close()

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until the daemon's ledger holds no completions that Ray's numbers do not show
        yet (jobs of earlier tests that just ended), so that what it sees free is what is free."""
        ledger = self.daemon.prober.clusters["solo"].ledger
        for _ in range(int(timeout / 0.1)):
            if not any(entry.release for entry in ledger.entries.values()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the ledger still has completions after {timeout}s: {ledger.entries}")

    async def api_job(self, job: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{self.settings.http_addr}/api/v1/jobs/{job}") as r:
                assert r.status == 200, await r.text()
                return await r.json()  # type: ignore[no-any-return]

    async def wait_state(self, job: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        await self.events.wait_for(lambda: state in self.events.states(job), timeout, f"{job} {state}")
        return next(e for e in self.events.of(job) if e["state"] == state)


@pytest.fixture(scope="module")
def vhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, BrokerUsers, list[str]]]:
    tmp = tmp_path_factory.mktemp("own")
    base = make_settings(tmp)
    with broker_users(base) as users:
        alice, bob, boss = users.add_users(base, "producer", "alice", "bob", "boss")
        tokens_file = tmp / "api-tokens.yaml"
        tokens_file.write_text(yaml.safe_dump({user: secrets.token_urlsafe(24) for user in (alice, bob, boss)}))
        tokens_file.chmod(0o600)
        settings = replace(settings_in(users, base), admins=(boss,), default_owner="nobody",
                           api_tokens_file=str(tokens_file))
        yield settings, users, [alice, bob, boss]


@pytest.fixture(scope="module")
async def world(vhost: tuple[Settings, BrokerUsers, list[str]]) -> AsyncIterator[World]:
    settings, users, (alice, bob, boss) = vhost
    solo = FakeCluster("solo", nodes={"s1": {"CPU": 2, "memory": 8 * GIB}}, duration_s=0.2)
    server = FakeServer([solo])
    await server.start()
    observer = replace(settings, amqp_url=users.guest_url())
    try:
        async with running_daemon(settings, (solo.config(),)) as daemon, Events(observer) as events:
            tokens = yaml.safe_load(open(settings.api_tokens_file))
            yield World(settings, observer, daemon, users, alice, bob, boss, solo, events, tokens)
    finally:
        await server.stop()


# ---- who owns a job ------------------------------------------------------------------------------


async def test_the_owner_is_the_broker_user_that_submitted(world: World) -> None:
    job = await world.submit(world.alice, "/bin/true")
    accepted = await world.wait_state(job, "ACCEPTED")
    assert accepted["owner"] == world.alice
    ended = await world.wait_state(job, "SUCCEEDED")
    assert ended["owner"] == world.alice
    for _ in range(50):
        view = await world.api_job(job)
        if view["state"] == "SUCCEEDED":
            break
        await asyncio.sleep(0.1)
    assert view["owner"] == world.alice
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{world.settings.http_addr}/api/v1/jobs",
                            params={"owner": world.alice, "limit": "1000"}) as r:
            mine = {j["submission_id"] for j in (await r.json())["jobs"]}
        async with http.get(f"http://{world.settings.http_addr}/api/v1/jobs",
                            params={"owner": world.bob, "limit": "1000"}) as r:
            theirs = {j["submission_id"] for j in (await r.json())["jobs"]}
    assert job in mine and job not in theirs


async def test_a_message_without_user_id_belongs_to_the_default_owner(world: World) -> None:
    job = sid("anon")
    conn = await aio_pika.connect(world.users.url(world.bob))
    async with conn:
        ex = await (await conn.channel(publisher_confirms=True)).get_exchange(world.settings.intake_exchange)
        await ex.publish(aio_pika.Message(orjson.dumps({"entrypoint": "/bin/true", "submission_id": job})),
                         routing_key=world.settings.intake_routing_key)
    assert (await world.wait_state(job, "ACCEPTED"))["owner"] == "nobody"


async def test_a_user_id_of_someone_else_never_reaches_the_daemon(world: World) -> None:
    conn = await aio_pika.connect(world.users.url(world.bob))
    async with conn:
        ex = await (await conn.channel(publisher_confirms=True)).get_exchange(world.settings.intake_exchange)
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await ex.publish(aio_pika.Message(b'{"entrypoint": "/bin/true"}', user_id=world.alice),
                             routing_key=world.settings.intake_routing_key)


# ---- stops over the broker ---------------------------------------------------------------------


async def test_only_the_owner_or_an_admin_stops_a_running_job(world: World) -> None:
    job = await world.submit(world.alice)
    await world.wait_state(job, "RUNNING")

    assert await world.stop_over_broker(world.bob, job) == "refused"
    await world.events.wait_for(lambda: any(a["outcome"] == "refused" for a in world.events.answers(job)))
    answer = next(a for a in world.events.answers(job) if a["outcome"] == "refused")
    assert world.bob in answer["message"] and world.alice in answer["message"] and "goes on" in answer["message"]
    await asyncio.sleep(1.0)  # more than two tracking rounds: nothing happens to the job
    assert world.events.states(job)[-1] == "RUNNING"
    assert world.solo.jobs[job].status(world.solo.clock()) == "RUNNING"
    assert (await world.api_job(job))["state"] == "RUNNING"

    assert await world.stop_over_broker(world.alice, job) == "stopping"
    stopped = await world.wait_state(job, "STOPPED")
    assert stopped["owner"] == world.alice

    other = await world.submit(world.bob)
    await world.wait_state(other, "RUNNING")
    assert await world.stop_over_broker(world.boss, other) == "stopping", "an admin stops anyone's job"
    await world.wait_state(other, "STOPPED")


async def test_a_stop_without_user_id_speaks_for_the_default_owner(world: World) -> None:
    job = await world.submit(world.alice)
    await world.wait_state(job, "RUNNING")
    conn = await aio_pika.connect(world.users.url(world.bob))
    async with conn:
        ex = await (await conn.channel(publisher_confirms=True)).get_exchange(world.settings.events_exchange)
        await ex.publish(aio_pika.Message(orjson.dumps({"submission_id": job, "reason": "no name"})),
                         routing_key="control.stop")
    await world.events.wait_for(lambda: bool(world.events.answers(job)))
    assert world.events.answers(job)[-1]["outcome"] == "refused"
    assert "'nobody'" in world.events.answers(job)[-1]["message"]
    assert await world.stop_over_broker(world.alice, job) == "stopping"
    await world.wait_state(job, "STOPPED")


async def test_a_held_job_is_cancelled_only_by_its_owner(world: World) -> None:
    # One CPU of two taken: the intake takes the next job, which needs both, and holds it.
    await world.settled()
    blockers = [await world.submit(world.bob, resource_requirements={"CPU": 1})]
    await world.wait_state(blockers[0], "RUNNING")
    await world.settled()
    held = await world.submit(world.alice, resource_requirements={"CPU": 2})
    await world.wait_state(held, "ACCEPTED")
    assert held in world.daemon.window

    assert await world.stop_over_broker(world.bob, held) == "refused"
    assert held in world.daemon.window and "CANCELLED" not in world.events.states(held)
    assert await world.stop_over_broker(world.alice, held) == "cancelled"
    cancelled = await world.wait_state(held, "CANCELLED")
    assert cancelled["owner"] == world.alice and held not in world.solo.jobs
    for blocker in blockers:
        assert await world.stop_over_broker(world.bob, blocker) == "stopping"
        await world.wait_state(blocker, "STOPPED")


async def test_a_stop_recorded_ahead_cancels_only_the_requesters_job(world: World) -> None:
    theirs, mine = sid("ahead"), sid("ahead")
    assert await world.stop_over_broker(world.bob, theirs) == "recorded"
    assert await world.stop_over_broker(world.alice, mine) == "recorded"
    await world.submit(world.alice, "/bin/true", submission_id=theirs)
    await world.submit(world.alice, "/bin/true", submission_id=mine)
    await world.wait_state(theirs, "SUCCEEDED")  # bob's stop did not touch alice's job
    await world.wait_state(mine, "CANCELLED")


# ---- retries keep their owner; nobody else can forge one ----------------------------------------------


async def test_a_retry_keeps_the_owner(world: World) -> None:
    job = await world.submit(world.alice, "/bin/sh -c fail", max_retries=1)
    await world.events.wait_for(lambda: [e["attempt"] for e in world.events.of(job) if e.get("final")] == [2],
                                30, "the second attempt's end")
    assert {e["owner"] for e in world.events.of(job)} == {world.alice}


async def test_a_forged_retry_is_a_duplicate_not_a_new_attempt(world: World) -> None:
    job = await world.submit(world.alice)
    await world.wait_state(job, "RUNNING")
    conn = await aio_pika.connect(world.users.url(world.bob))
    async with conn:
        ex = await (await conn.channel(publisher_confirms=True)).get_exchange(world.settings.intake_exchange)
        await ex.publish(aio_pika.Message(
            orjson.dumps({"entrypoint": "/bin/sh -c 'echo hijacked'", "submission_id": job}), user_id=world.bob,
            headers={ATTEMPT_HEADER: 2, OWNER_HEADER: world.alice}), routing_key=world.settings.intake_routing_key)
    observer = await aio_pika.connect(world.observer.amqp_url)
    async with observer:
        dead = await (await observer.channel()).get_queue(world.settings.dead_letter_queue)
        message = None
        for _ in range(100):
            message = await dead.get(fail=False)
            if message is not None and job.encode() in message.body:
                break
            await asyncio.sleep(0.1)
        assert message is not None and "duplicate submission_id" in message.headers["x-rmcs-reason"]
    assert [e["attempt"] for e in world.events.of(job)] == [1, 1, 1]
    assert "hijacked" not in world.solo.jobs[job].entrypoint
    assert await world.stop_over_broker(world.alice, job) == "stopping"
    await world.wait_state(job, "STOPPED")



# ---- stops over the HTTP API -------------------------------------------------------------------


async def test_the_api_needs_a_token_to_stop_and_applies_the_same_rule(world: World, capsys: Any) -> None:
    job = await world.submit(world.alice)
    await world.wait_state(job, "RUNNING")
    base = f"http://{world.settings.http_addr}"
    stop = f"{base}/api/v1/jobs/{job}/stop"

    def bearer(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.tokens[user]}"}

    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer not-a-valid-token-at-all"}, {"Authorization": "Bearer"},
                        {"Authorization": f"Basic {world.tokens[world.alice]}"},
                        {"Authorization": f"Bearer {world.tokens[world.alice]}x"}):
            async with http.post(stop, headers=headers) as r:
                body = await r.json()
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (headers, body)
                assert "bearer token" in body["error"] and "not-a-valid" not in body["error"]
        async with http.post(stop, headers=bearer(world.bob), json={"reason": "mine now"}) as r:
            answer = await r.json()
            assert r.status == 403 and answer["outcome"] == "refused" and world.bob in answer["message"]
        await asyncio.sleep(1.0)
        assert world.events.states(job)[-1] == "RUNNING" and world.solo.jobs[job].status(world.solo.clock()) == "RUNNING"
        async with http.get(f"{base}/api/v1/jobs/{job}") as r:  # reading needs no token
            assert r.status == 200 and (await r.json())["owner"] == world.alice
        async with http.post(stop, headers=bearer(world.alice)) as r:
            assert r.status == 202 and (await r.json())["outcome"] == "stopping"
        await world.wait_state(job, "STOPPED")

        other = await world.submit(world.bob)
        await world.wait_state(other, "RUNNING")
        async with http.post(f"{base}/api/v1/jobs/{other}/stop", headers=bearer(world.boss)) as r:
            assert r.status == 202, "an admin's token stops anyone's job"
        await world.wait_state(other, "STOPPED")
    logged = capsys.readouterr().out
    assert world.bob in logged and "stop refused" in logged
    for token in world.tokens.values():
        assert token not in logged, "an API token was logged"


async def test_a_failing_stop_is_a_plain_500_without_a_trace(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("secret internals at /srv/rmcs/state")

    monkeypatch.setattr(world.daemon.service, "request_stop", broken)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{world.settings.http_addr}/api/v1/jobs/{sid()}/stop",
                             headers={"Authorization": f"Bearer {world.tokens[world.alice]}"}) as r:
            raw = await r.read()
            assert r.status == 500 and r.content_type == "application/json"
    assert orjson.loads(raw) == {"error": "internal error"}
    assert b"Traceback" not in raw and b"secret" not in raw and b"/srv" not in raw
