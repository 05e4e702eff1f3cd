"""Security, second round (docs/security.md): attacks by a hostile producer, dashboard or API
client, made against the real RabbitMQ (a vhost of its own with rmcs's least-privilege users
where the broker's rights matter) and fake Ray dashboards. Each is refused with a reason while
the legitimate use beside it works."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from dataclasses import replace

import aio_pika
import aiohttp
import orjson
import pytest
import yaml

from brokeradmin import broker_users, rabbitmqctl, settings_in
from fakeray import fake_fleet
from scheduler_daemon import policies
from scheduler_daemon.__main__ import declare_main
from scheduler_daemon.broker import declare
from scheduler_daemon.leadership import Leadership, leader_queue
from scheduler_daemon.rayapi import RayDashboard
from scheduler_daemon.status.records import ForeignOwner, now_minus
from support import Events, make_settings, publish, running_daemon, sid
from test_hostile_input import _dead_letters
from tlskit import make_pki

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def _send(url: str, exchange: str, key: str, body: dict, user: str | None = None, **props) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ex = await (await conn.channel(publisher_confirms=True)).get_exchange(exchange)
        await ex.publish(aio_pika.Message(orjson.dumps(body), user_id=user, content_type="application/json",
                                          **props), routing_key=key)


# ---- 2. spoofed final events --------------------------------------------------------------

async def test_an_invalid_message_with_someone_elses_id_ends_nothing(tmp_path):
    base = make_settings(tmp_path)
    async with fake_fleet(1, name="spoof") as fleet:
        with broker_users(base) as users:
            alice, bob = users.add_users(base, "producer", "alice", "bob")
            s = settings_in(users, base)
            observer = replace(s, amqp_url=users.guest_url())
            async with running_daemon(s, fleet.configs()) as daemon, Events(observer) as ev:
                victim = sid("victim")
                await _send(users.url(bob), s.intake_exchange, s.intake_routing_key,
                            {"submission_id": victim, "entrypoint": "/bin/sleep 30"}, bob)
                await ev.wait_for(lambda: "RUNNING" in ev.states(victim), 30, "the victim's job running")
                # Alice sends an invalid job under bob's id, hoping for a REJECTED under it.
                await _send(users.url(alice), s.intake_exchange, s.intake_routing_key,
                            {"submission_id": victim, "entrypoint": "python relative.py"}, alice,
                            message_id=victim)
                fresh = sid("fresh")
                await _send(users.url(alice), s.intake_exchange, s.intake_routing_key,
                            {"submission_id": fresh, "entrypoint": "python relative.py"}, alice, message_id=fresh)
                await ev.wait_final([fresh], 20)
                reasons = await _dead_letters(observer, 2)
                assert "relative path" in reasons[victim] and "relative path" in reasons[fresh]
                assert ev.states(fresh) == ["REJECTED"] and ev.of(fresh)[0]["owner"] == alice  # legit: her own id
                assert ev.states(victim)[-1] == "RUNNING" and "REJECTED" not in ev.states(victim)
                status = await daemon.store.get(victim, history=False)
                assert status is not None and status.state == "RUNNING" and not status.final
                # And the status cache never takes an event of another owner for a job.
                with pytest.raises(ForeignOwner):
                    await daemon.store.apply({"submission_id": victim, "state": "REJECTED", "attempt": 1,
                                              "final": True, "owner": alice})
                assert (await daemon.store.get(victim, history=False)).state == "RUNNING"


# ---- 4. the confused deputy ---------------------------------------------------------------

async def test_stop_answers_go_only_to_reply_queues_the_requester_can_own(tmp_path):
    s = make_settings(tmp_path)
    async with fake_fleet(1, name="deputy") as fleet, running_daemon(s, fleet.configs()), Events(s) as ev:
        conn = await aio_pika.connect(s.amqp_url)
        async with conn:
            ch = await conn.channel()
            victim = await ch.declare_queue(f"t.victim.{secrets.token_hex(4)}", auto_delete=True)
            exclusive = await ch.declare_queue(f"t.mine.{secrets.token_hex(4)}", exclusive=True)
            server_named = await ch.declare_queue(exclusive=False, auto_delete=True)
            events = await ch.get_exchange(s.events_exchange)
            targets = {"victim": victim.name, "dead letters": s.dead_letter_queue, "intake": s.intake_queue,
                       "status": s.status_queue, "exclusive": exclusive.name, "server-named": server_named.name}
            for what, queue in targets.items():
                await events.publish(aio_pika.Message(orjson.dumps({"submission_id": sid(what[:4]), "reason": what}),
                                                      reply_to=queue, correlation_id=what), routing_key="control.stop")
            await ev.wait_for(lambda: len([e for e in ev.items if e.get("event") == "control.stop.answer"]) >= 6,
                              20, "six answers")
            await asyncio.sleep(0.5)
            got = {}
            for name, q in (("victim", victim), ("exclusive", exclusive), ("server-named", server_named)):
                msg = await q.get(fail=False, no_ack=True)
                got[name] = msg.correlation_id if msg is not None else None
            assert got == {"victim": None, "exclusive": "exclusive", "server-named": "server-named"}
            dead = await ch.declare_queue(s.dead_letter_queue, passive=True)
            assert dead.declaration_result.message_count == 0
            assert not [e for e in ev.items if e.get("state") == "REJECTED"]  # nothing reached the intake


# ---- 6. the HTTP API: tokens for reads, TLS, rate limit, event stream cap ---------------------

async def test_the_api_guards_reads_streams_and_rates(tmp_path):
    pki = make_pki(tmp_path / "pki")
    tokens = {"alice": secrets.token_urlsafe(24), "bob": secrets.token_urlsafe(24), "boss": secrets.token_urlsafe(24)}
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(yaml.safe_dump(tokens))
    s = make_settings(tmp_path, api_tokens_file=str(tokens_file), api_reads_need_token=True, admins=("boss",),
                      default_owner="alice", http_cert_file=str(pki.server_cert), http_key_file=str(pki.server_key),
                      max_event_streams=2, api_rate_limit=20.0, api_rate_burst=20)
    trusted = ssl.create_default_context(cafile=str(pki.ca_file))
    other = ssl.create_default_context(cafile=str(pki.other_ca_file))
    base = f"https://{s.http_addr}"

    def auth(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[user]}"}

    async with fake_fleet(1, name="api") as fleet, running_daemon(s, fleet.configs()), Events(s) as ev:
        job = sid("mine")
        await publish(s, {"submission_id": job, "entrypoint": "/bin/sleep 30"})
        await ev.wait_for(lambda: "RUNNING" in ev.states(job), 30, "alice's job running")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as http:
            # TLS: plain HTTP and a client that trusts another CA get nowhere.
            async with aiohttp.ClientSession() as plain:
                with pytest.raises(aiohttp.ClientError):
                    async with plain.get(f"http://{s.http_addr}/healthz") as resp:
                        await resp.read()
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    async with plain.get(f"{base}/healthz", ssl=other) as resp:
                        await resp.read()
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200  # health checks need no token
            for path in ("/api/v1/jobs", f"/api/v1/jobs/{job}", f"/api/v1/jobs/{job}/logs", "/api/v1/events",
                         "/api/v1/clusters", "/metrics"):
                async with http.get(base + path) as resp:
                    assert resp.status == 401 and "bearer token is required" in (await resp.json())["error"]
            async with http.get(f"{base}/api/v1/jobs/{job}", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}) as resp:
                assert resp.status == 401
            async with http.get(f"{base}/api/v1/jobs/{job}", headers=auth("bob")) as resp:
                assert resp.status == 200 and (await resp.json())["owner"] == "alice"
            async with http.get(f"{base}/api/v1/jobs/{job}/logs", headers=auth("bob")) as resp:
                assert resp.status == 403 and "only its owner 'alice'" in (await resp.json())["error"]
            for user in ("alice", "boss"):
                async with http.get(f"{base}/api/v1/jobs/{job}/logs", headers=auth(user)) as resp:
                    assert resp.status == 200 and "running /bin/sleep 30" in (await resp.json())["logs"]

            # At most two event streams; the third is a 503 with Retry-After, and gets in once one ends.
            await asyncio.sleep(1.2)  # the bucket refills
            one = await http.get(f"{base}/api/v1/events", headers=auth("bob"))
            two = await http.get(f"{base}/api/v1/events", headers=auth("bob"))
            assert one.status == two.status == 200
            async with http.get(f"{base}/api/v1/events", headers=auth("bob")) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"]
                assert "2 event streams are open" in (await resp.json())["error"]
            one.close()
            await asyncio.sleep(1.5)
            three = await http.get(f"{base}/api/v1/events", headers=auth("bob"))
            assert three.status == 200
            three.close()
            two.close()

            # A client that floods gets 429 with Retry-After; health checks still answer; it recovers.
            await asyncio.sleep(1.2)
            statuses = []
            for _ in range(40):
                async with http.get(f"{base}/api/v1/clusters", headers=auth("bob")) as resp:
                    statuses.append(resp.status)
                    if resp.status == 429:
                        assert int(resp.headers["Retry-After"]) >= 1
                        assert "too many requests" in (await resp.json())["error"]
            assert 200 in statuses and statuses.count(429) >= 10
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            await asyncio.sleep(1.0)
            async with http.get(f"{base}/api/v1/clusters", headers=auth("bob")) as resp:
                assert resp.status == 200


async def test_a_stalled_event_loop_does_not_make_the_leader_step_down(tmp_path):
    s = make_settings(tmp_path, leader_tick_s=0.5)
    conn = await aio_pika.connect_robust(s.amqp_url)
    lost: list[bool] = []
    async with conn:
        leadership = Leadership(s)
        await leadership.join(conn)
        stopping = asyncio.Event()
        task = asyncio.create_task(leadership.run(stopping, lambda: lost.append(True)))
        await asyncio.wait_for(leadership.leading.wait(), 10)
        time.sleep(2.5)  # the loop stalls for longer than the lease (1.5 s): a slow request, a pause
        await asyncio.sleep(2.0)
        assert not lost and not leadership.lost and not task.done()
        # A leader that really stops getting its ticks still steps down.
        await leadership._channel.close()
        await asyncio.wait_for(task, 10)
        assert lost == [True] and leadership.lost
        stopping.set()
        await (await conn.channel()).queue_delete(leader_queue(s))


# ---- 7. broker denial of service ----------------------------------------------------------

async def test_policies_bound_unread_event_queues_and_dead_letters(tmp_path, capsys):
    assert declare_main(["--policies", "print", "--vhost", "v"]) == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert {p["name"] for p in printed["policies"]} == {"rmcs-event-queues", "rmcs-dead-letters"}
    base = make_settings(tmp_path)
    with broker_users(base) as users:
        s = replace(base, amqp_url=users.guest_url())
        await declare(s)
        policies.apply(s, users.vhost, event_max_length=50, dead_max_length=20)
        dashboard = users.roles["dashboard"]
        conn = await aio_pika.connect(users.url(dashboard))
        async with conn:
            ch = await conn.channel()
            events = await ch.get_exchange(s.events_exchange, ensure=False)
            hog = await ch.declare_queue()  # server-named; bound, never read
            await hog.bind(events, "job.#")
            pub = await aio_pika.connect(s.amqp_url)
            async with pub:
                pch = await pub.channel(publisher_confirms=True)
                ex = await pch.get_exchange(s.events_exchange)
                dlx = await pch.get_exchange(s.dead_letter_exchange)
                for i in range(200):
                    await ex.publish(aio_pika.Message(orjson.dumps({"n": i})), routing_key="job.succeeded.x")
                    await dlx.publish(aio_pika.Message(orjson.dumps({"n": i})), routing_key="")
            listed = rabbitmqctl("list_queues", "-p", users.vhost, "name", "policy", "--no-table-headers")
            rows = dict(line.split()[:2] for line in listed.splitlines() if len(line.split()) >= 2)
            assert rows[hog.name] == "rmcs-event-queues" and rows[s.dead_letter_queue] == "rmcs-dead-letters"
            assert (await ch.declare_queue(hog.name, passive=True)).declaration_result.message_count == 50
            async with await aio_pika.connect(s.amqp_url) as guest:
                dead = await (await guest.channel()).declare_queue(s.dead_letter_queue, passive=True)
                assert dead.declaration_result.message_count == 20
            newest = [orjson.loads(m.body)["n"] for m in [await hog.get(no_ack=True) for _ in range(50)]]
            assert newest == list(range(150, 200))  # the reader that comes back gets the newest


# ---- 8. unbounded state -------------------------------------------------------------------

async def test_retention_gets_past_undeletable_jobs_and_the_status_cache_is_pruned(tmp_path):
    s = make_settings(tmp_path, ray_job_retention_s=1.0, status_retention_s=3600.0, status_max_jobs=150)
    async with fake_fleet(1, name="keep") as fleet, running_daemon(s, fleet.configs()) as daemon:
        cluster = fleet.configs()[0]
        dash = RayDashboard(cluster, 10)
        old = now_minus(7200)
        stuck = [sid("stuck") for _ in range(120)]
        done = [sid("done") for _ in range(30)]
        try:
            for job in stuck:  # still running on Ray, so Ray refuses to delete them (500)
                await dash.submit({"entrypoint": "/bin/sleep 600", "submission_id": job})
            for job in done:
                await dash.submit({"entrypoint": "/bin/true", "submission_id": job})
            await asyncio.sleep(1.0)
            for job in stuck + done:
                await daemon.store.apply({"submission_id": job, "state": "SUCCEEDED", "attempt": 1, "final": True,
                                          "cluster": cluster.name, "ts": old, "owner": "anonymous"})
            await daemon.upkeep.delete_expired_ray_jobs()   # the first 100 it takes cannot be deleted
            await daemon.upkeep.delete_expired_ray_jobs()   # they are passed over: the sweep moves on
            await daemon.upkeep.delete_expired_ray_jobs()
            for job in done:
                assert (await daemon.store.get(job, history=False)).deleted_from_cluster, job
                assert job not in fleet[0].jobs
            assert all(job in fleet[0].jobs for job in stuck)

            # The status cache: rejected-at-intake jobs (never on a cluster) and deleted ones go
            # by age, then the oldest beyond status_max_jobs; jobs still on a cluster stay.
            for i in range(100):
                await daemon.store.apply({"submission_id": f"rej-{i}", "state": "REJECTED", "attempt": 1,
                                          "final": True, "ts": old if i < 50 else now_minus(10)})
            before = sum((await daemon.store.counts_by_state()).values())
            assert before == 250
            await daemon.upkeep.prune_status_cache()
            left = sum((await daemon.store.counts_by_state()).values())
            assert left == 150
            assert await daemon.store.get("rej-0") is None and await daemon.store.get("rej-99") is not None
            assert await daemon.store.get(done[0]) is None  # off its cluster and old
            assert all([await daemon.store.get(job, history=False) is not None for job in stuck])
        finally:
            for job in stuck:
                await dash.stop(job)
            await dash.close()
