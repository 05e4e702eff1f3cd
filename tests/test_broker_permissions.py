"""The least-privilege broker users of deploy/rabbitmq, applied to a fresh vhost of the real
RabbitMQ: every allowed action of each role works, every forbidden one is refused (403
ACCESS_REFUSED), and the broker refuses a `user_id` that is not the connection's user."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import aio_pika
import aiormq.exceptions as amqp_errors
import orjson
import pytest

from brokeradmin import BrokerUsers, broker_users
from scheduler_daemon import permissions
from scheduler_daemon.broker import declare_topology
from scheduler_daemon.settings import Settings

pytestmark = pytest.mark.usefixtures("rabbitmq")

S = Settings()
ROOT = Path(__file__).resolve().parent.parent
Action = Callable[[aio_pika.abc.AbstractChannel, str], Awaitable[Any]]


@pytest.fixture(scope="module")
def users() -> Iterator[BrokerUsers]:
    with broker_users(S) as made:
        yield made


async def run(url: str, action: Action, user: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await action(channel, user)


# ---- actions --------------------------------------------------------------------------------


async def declare_all(ch: Any, user: str) -> None:
    """What the daemon declares and binds at start (broker.py and the status consumer)."""
    topology = await declare_topology(ch, S)
    status = await ch.declare_queue(S.status_queue, durable=True)
    for key in ("job.#", "cluster.#"):
        await status.bind(topology.events, key)
    control = await ch.declare_queue(S.control_queue, durable=True)
    await control.bind(topology.events, "control.stop")


async def publish_job(ch: Any, user: str) -> None:
    ex = await ch.get_exchange(S.intake_exchange, ensure=True)  # a passive declare
    await ex.publish(aio_pika.Message(b'{"entrypoint": "/bin/true"}', user_id=user), routing_key=S.intake_routing_key)


async def publish_job_as_someone_else(ch: Any, user: str) -> None:
    ex = await ch.get_exchange(S.intake_exchange, ensure=False)
    await ex.publish(aio_pika.Message(b'{"entrypoint": "/bin/true"}', user_id="somebody-else"),
                     routing_key=S.intake_routing_key)


async def publish_stop(ch: Any, user: str) -> None:
    ex = await ch.get_exchange(S.events_exchange, ensure=False)
    await ex.publish(aio_pika.Message(b'{"submission_id": "x"}', user_id=user), routing_key="control.stop")


def publish_event(key: str) -> Action:
    async def action(ch: Any, user: str) -> None:
        ex = await ch.get_exchange(S.events_exchange, ensure=False)
        await ex.publish(aio_pika.Message(b'{"state": "SUCCEEDED"}'), routing_key=key)
    action.__name__ = f"publish_{key}"
    return action


async def watch_events(ch: Any, user: str) -> None:
    queue = await ch.declare_queue(exclusive=True, auto_delete=True)
    ex = await ch.get_exchange(S.events_exchange, ensure=False)
    for key in ("job.#", "cluster.#", "control.stop.answer"):
        await queue.bind(ex, key)
    await queue.consume(lambda m: None)


async def stream_events_live(ch: Any, user: str) -> None:
    """What each status service of a failover group on shared state does for its live stream."""
    queue = await ch.declare_queue(exclusive=True, auto_delete=True)
    ex = await ch.get_exchange(S.events_exchange, ensure=False)
    for key in ("job.#", "cluster.#"):
        await queue.bind(ex, key)
    await queue.consume(lambda m: None)


async def consume_intake(ch: Any, user: str) -> None:
    queue = await ch.get_queue(S.intake_queue, ensure=False)
    await queue.consume(lambda m: None)


async def get_from_intake(ch: Any, user: str) -> None:
    queue = await ch.get_queue(S.intake_queue, ensure=False)
    await queue.get(fail=False)


async def consume_dead_letters(ch: Any, user: str) -> None:
    queue = await ch.get_queue(S.dead_letter_queue, ensure=False)
    await queue.consume(lambda m: None)


async def consume_status_queue(ch: Any, user: str) -> None:
    queue = await ch.get_queue(S.status_queue, ensure=False)
    await queue.consume(lambda m: None)


async def purge_intake(ch: Any, user: str) -> None:
    queue = await ch.get_queue(S.intake_queue, ensure=False)
    await queue.purge()


async def delete_intake(ch: Any, user: str) -> None:
    await ch.queue_delete(S.intake_queue)


async def redeclare_intake_exchange(ch: Any, user: str) -> None:
    await ch.declare_exchange(S.intake_exchange, aio_pika.ExchangeType.DIRECT, durable=True)


async def delete_events_exchange(ch: Any, user: str) -> None:
    await ch.exchange_delete(S.events_exchange)


async def declare_named_queue(ch: Any, user: str) -> None:
    await ch.declare_queue("rmcs.sniffer", durable=True)


async def tap_the_intake(ch: Any, user: str) -> None:
    """Bind a queue of one's own to the intake exchange: a copy of every job submitted."""
    queue = await ch.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(await ch.get_exchange(S.intake_exchange, ensure=False), S.intake_routing_key)


async def tap_the_dead_letters(ch: Any, user: str) -> None:
    queue = await ch.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(await ch.get_exchange(S.dead_letter_exchange, ensure=False), "")


async def rebind_intake_queue(ch: Any, user: str) -> None:
    queue = await ch.get_queue(S.intake_queue, ensure=False)
    await queue.bind(await ch.get_exchange(S.events_exchange, ensure=False), "job.#")


async def answer_on_default_exchange(ch: Any, user: str) -> None:
    await ch.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=S.control_queue)


async def line_up_for_leadership(ch: Any, user: str) -> None:
    """What a daemon of a failover pair does: declare the leader queue, consume it, tick it."""
    from scheduler_daemon.leadership import Leadership

    leadership = Leadership(S)
    await leadership.join(ch._connection)  # it opens a channel of its own on the connection
    await leadership._publish_tick()


# role -> (allowed, forbidden)
MATRIX: dict[str, tuple[list[Action], list[Action]]] = {
    "producer": (
        [publish_job, publish_stop, watch_events],
        [consume_intake, get_from_intake, consume_dead_letters, consume_status_queue, purge_intake,
         delete_intake, redeclare_intake_exchange, delete_events_exchange, declare_named_queue,
         tap_the_intake, tap_the_dead_letters, rebind_intake_queue, answer_on_default_exchange,
         line_up_for_leadership, publish_event("job.succeeded.cpu"), publish_event("job.running._"), publish_event("cluster.down.cpu"),
         publish_event("control.stop.answer")],
    ),
    "dashboard": (
        [watch_events],
        [publish_job, publish_stop, publish_event("job.failed.cpu"), consume_intake, get_from_intake,
         consume_dead_letters, purge_intake, delete_intake, redeclare_intake_exchange, declare_named_queue,
         tap_the_intake, tap_the_dead_letters, answer_on_default_exchange],
    ),
    "daemon": (
        [declare_all, consume_intake, consume_status_queue, consume_dead_letters, publish_event("job.succeeded.cpu"),
         publish_event("cluster.up.cpu"), publish_event("control.stop.answer"), answer_on_default_exchange,
         line_up_for_leadership, publish_event("control.stop"),  # its status service asks for stops
         stream_events_live],
        [declare_named_queue, publish_event("anything.else")],
    ),
}
CASES = [(role, action, ok) for role, (allowed, forbidden) in MATRIX.items()
         for ok, actions in ((True, allowed), (False, forbidden)) for action in actions]


@pytest.fixture(scope="module", autouse=True)
async def topology(users: BrokerUsers) -> None:
    """The daemon's user declares the topology, as the daemon does at start."""
    await run(users.url(users.roles["daemon"]), declare_all, users.roles["daemon"])


@pytest.mark.parametrize(("role", "action", "allowed"), CASES,
                         ids=[f"{r}-{a.__name__}-{'ok' if ok else 'refused'}" for r, a, ok in CASES])
async def test_role_can_and_cannot(users: BrokerUsers, role: str, action: Action, allowed: bool) -> None:
    user = users.roles[role]
    if allowed:
        await run(users.url(user), action, user)
        return
    with pytest.raises(amqp_errors.ChannelAccessRefused) as refused:
        await run(users.url(user), action, user)
    # aiormq raises ChannelAccessRefused for the channel close with reply code 403 only.
    assert str(refused.value).startswith("ACCESS_REFUSED - access to ")


@pytest.mark.parametrize("role", ["producer", "daemon"])
async def test_broker_refuses_a_user_id_of_someone_else(users: BrokerUsers, role: str) -> None:
    user = users.roles[role]
    with pytest.raises(amqp_errors.ChannelPreconditionFailed) as refused:
        await run(users.url(user), publish_job_as_someone_else, user)
    assert "user_id property set to 'somebody-else'" in str(refused.value)


async def test_a_producer_job_arrives_with_its_user_id(users: BrokerUsers) -> None:
    """What the daemon reads as the job's owner: the broker-checked user_id."""
    producer = users.roles["producer"]
    await run(users.url(producer), publish_job, producer)
    connection = await aio_pika.connect(users.url(users.roles["daemon"]))
    async with connection:
        queue = await (await connection.channel()).get_queue(S.intake_queue, ensure=False)
        message = await queue.get(timeout=5)
        assert message is not None and message.user_id == producer
        await message.ack()


def test_shipped_definitions_match_the_settings() -> None:
    """deploy/rabbitmq/definitions.json is what `python -m scheduler_daemon.permissions` prints
    for the default names and vhost rmcs, without passwords."""
    shipped = orjson.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_bytes())
    users = {f"rmcs-{role}": role for role in permissions.ROLES}
    assert shipped == permissions.definitions(S, "rmcs", users)
    assert all(u["password_hash"] == "" and u["tags"] == [] for u in shipped["users"])


def test_password_hash_is_rabbitmqs_sha256() -> None:
    import base64
    import hashlib

    salt = b"\x01\x02\x03\x04"
    raw = base64.b64decode(permissions.password_hash("s3cret", salt))
    assert raw[:4] == salt and raw[4:] == hashlib.sha256(salt + b"s3cret").digest()
