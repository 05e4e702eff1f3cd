"""The broker topology of the wire contract, declared idempotently.

With queues (docs/queues.md) each queue Q other than `default` has its own RabbitMQ queue
`<intake_queue>.Q`, bound with key `submit.Q`. A message routed to no queue goes, once the
policy of `alternate_exchange_policy` is applied (`rmcs declare` does it), to the alternate
exchange `<intake_exchange>.unrouted` and its queue, where the daemon dead-letters it with a reason.
The daemon applies that policy itself at start when the broker runs on its host
(`unrouted_policy`); elsewhere `rmcs declare`, run where the broker is, does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from .queueconf import queue_of_key, routing_key_of
from .settings import Settings


@dataclass(frozen=True)
class Topology:
    intake: AbstractExchange
    queue: AbstractQueue
    dlx: AbstractExchange
    dead: AbstractQueue
    events: AbstractExchange
    queues: dict[str, AbstractQueue]   # every queue by rmcs name, `default` included
    unrouted: AbstractQueue


def unrouted_name(s: Settings) -> str:
    """The alternate exchange of the intake exchange, and its queue."""
    return f"{s.intake_exchange}.unrouted"


def alternate_exchange_policy(s: Settings) -> tuple[str, str, str]:
    """(name, pattern, definition) of the RabbitMQ policy that gives the existing intake exchange
    its alternate exchange (an exchange's arguments cannot change once declared; a policy can)."""
    pattern = "^" + s.intake_exchange.replace(".", "\\.") + "$"
    return f"{s.intake_exchange}-unrouted", pattern, '{"alternate-exchange": "%s"}' % unrouted_name(s)


async def declare_topology(channel: AbstractChannel, s: Settings) -> Topology:
    intake = await channel.declare_exchange(s.intake_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(s.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    events = await channel.declare_exchange(s.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_queue(s.dead_letter_queue, durable=True)
    await dead.bind(dlx, routing_key="")
    queues: dict[str, AbstractQueue] = {}
    for q in s.queues:
        queues[q.name] = queue = await channel.declare_queue(
            queue_of_key(s.intake_queue, q.name),
            durable=True,
            arguments={"x-max-priority": s.max_priority, "x-dead-letter-exchange": s.dead_letter_exchange},
        )
        await queue.bind(intake, routing_key=routing_key_of(s.intake_routing_key, q.name))
    name = unrouted_name(s)
    unrouted_x = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
    unrouted = await channel.declare_queue(name, durable=True)
    await unrouted.bind(unrouted_x, routing_key="")
    return Topology(intake, queues["default"], dlx, dead, events, queues, unrouted)


async def declare(s: Settings) -> None:
    """Declare the topology once and disconnect (the `rmcs-declare` command)."""
    connection = await aio_pika.connect(s.amqp_url, **s.amqp_connect_kwargs())
    async with connection:
        await declare_topology(await connection.channel(), s)


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


async def apply_policy_here(s: Settings) -> str:
    """`apply_policy` when the broker of `amqp_url` runs on this host (`rabbitmqctl` speaks to
    the local node); RuntimeError saying what to run otherwise, or why it failed."""
    host = urlsplit(s.amqp_url).hostname or "localhost"
    if host not in LOOPBACK:
        name, pattern, definition = alternate_exchange_policy(s)
        raise RuntimeError(f"the broker {host} is not on this host: run `rmcs declare` where it is, or "
                           f"rabbitmqctl set_policy --apply-to exchanges {name} '{pattern}' '{definition}'")
    return await asyncio.wait_for(apply_policy(s), POLICY_TIMEOUT_S)


POLICY_TIMEOUT_S = 60.0


async def apply_policy(s: Settings) -> str:
    """Apply the alternate-exchange policy with `rabbitmqctl` (the broker's host must have it;
    there is no AMQP method for policies). Returns what was done, raises RuntimeError if it failed."""
    name, pattern, definition = alternate_exchange_policy(s)
    vhost = unquote(urlsplit(s.amqp_url).path[1:]) or "/"
    try:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "--quiet", "set_policy", "-p", vhost, "--apply-to", "exchanges", "--priority", "0",
            name, pattern, definition, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise RuntimeError(f"rabbitmqctl is not on PATH: apply the policy by hand: rabbitmqctl set_policy -p {vhost} "
                           f"--apply-to exchanges {name} '{pattern}' '{definition}'") from None
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl set_policy failed: {err.decode(errors='replace')[-300:]}")
    return f"policy {name} on vhost {vhost}: exchange {s.intake_exchange} -> alternate exchange {unrouted_name(s)}"
