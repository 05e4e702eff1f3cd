"""The commands that act through the broker or on a job: stop (HTTP API, or control.stop with
--via-broker), events (a tail of the event exchange), declare (the broker topology and the
unrouted-message policy; with --policies, the queue-bounding policies instead)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import aio_pika.exceptions
import orjson

from producers.errors import NotConfirmed, NotRouted
from producers.wire import STOP_KEY, STOP_TAKEN
from scheduler_daemon import policies
from scheduler_daemon.broker import apply_policy, declare_topology

from .context import Ctx
from .output import JOB_FAILED, NOT_FOUND, OK, TIMED_OUT, UNREACHABLE, USAGE, CliError, dumps, event_line


async def cmd_stop(ctx: Ctx) -> int:
    a = ctx.args
    if a.via_broker:
        return await _stop_via_broker(ctx)
    status, data = await ctx.http("POST", f"/api/v1/jobs/{quote(a.submission_id, safe='')}/stop",
                                  body={"reason": a.reason}, answers=(502,))
    if status == 404:
        raise CliError(NOT_FOUND, f"unknown job {a.submission_id!r}: {data.get('error') or 'not found'}")
    return _stop_outcome(ctx, data)


async def cmd_delete(ctx: Ctx) -> int:
    """Delete a job that ended: from its cluster, then from rmcs's history (seed 004's `job delete`)."""
    sid = ctx.args.submission_id
    status, data = await ctx.http("DELETE", f"/api/v1/jobs/{quote(sid, safe='')}", answers=(502,))
    if status == 404:
        raise CliError(NOT_FOUND, f"unknown job {sid!r}: {data.get('error') or 'not found'}")
    if status != 200:
        raise CliError(JOB_FAILED, f"{sid}: not deleted: {data.get('error') or status}")
    ctx.io.out(f"{sid}: deleted")
    return OK


def _stop_outcome(ctx: Ctx, answer: dict[str, Any]) -> int:
    """Print what a stop did. cancelled, stopping, recorded (not received yet, for instance
    still in the intake queue: cancelled when it arrives): 0; already final, not followed or
    refused by the cluster: 1."""
    sid = answer.get("submission_id") or ctx.args.submission_id
    outcome = str(answer.get("outcome") or "error")
    message = answer.get("message") or answer.get("error") or ""
    if outcome in STOP_TAKEN:
        ctx.io.out(f"{sid}: {outcome}: {message}".rstrip(": "))
        return OK
    if outcome == "invalid":
        raise CliError(USAGE, message)
    raise CliError(JOB_FAILED, f"{sid}: {outcome}: {message}".rstrip(": "))


async def _stop_via_broker(ctx: Ctx) -> int:
    a = ctx.args
    await ctx.connect()
    with ctx.broker():
        try:
            answer = await ctx.client.stop_answer(a.submission_id, a.reason, a.timeout)
        except NotRouted:
            raise CliError(UNREACHABLE, f"nothing listens for {STOP_KEY} on {ctx.settings.events_exchange!r}: the "
                                        "daemon has never run with these names; the request was dropped") from None
        except NotConfirmed as exc:
            raise CliError(UNREACHABLE, f"the broker did not confirm the stop request: {exc.reason}") from None
    if answer is None:
        ctx.io.out(f"{a.submission_id}: published: no answer from the daemon within {a.timeout:g}s; "
                   "it acts on the request when it runs")
        return OK
    return _stop_outcome(ctx, answer)


async def cmd_events(ctx: Ctx) -> int:
    a = ctx.args
    await ctx.connect()
    with ctx.broker():
        async with await ctx.client.subscribe([a.pattern]) as events:
            deadline = None if a.timeout is None else time.monotonic() + a.timeout
            n = 0
            while a.count is None or n < a.count:
                try:
                    event = await events.get(None if deadline is None else deadline - time.monotonic())
                except TimeoutError:
                    if a.count is None:
                        return OK
                    ctx.io.err(f"rmcs events: {n} of {a.count} events within {a.timeout:g}s")
                    return TIMED_OUT
                ctx.io.out(dumps(event) if a.json else event_line(event))
                n += 1
    return OK


async def cmd_declare(ctx: Ctx) -> int:
    s = replace(ctx.settings, amqp_url=ctx.amqp_url)
    if ctx.args.policies == "print":
        ctx.io.out(orjson.dumps(policies.definitions(s, ctx.args.vhost), option=orjson.OPT_INDENT_2).decode())
        return OK
    if ctx.args.policies == "apply":
        try:
            await asyncio.to_thread(policies.apply, s, ctx.args.vhost)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            raise CliError(JOB_FAILED, f"could not apply the policies: {exc}") from None
        ctx.io.out(f"applied policies {', '.join(p['name'] for p in policies.policies(s, ctx.args.vhost))} "
                   f"on vhost {ctx.args.vhost}")
        return OK
    await ctx.connect()
    with ctx.broker():
        channel = await (await ctx.client.connection()).channel()
        try:
            await declare_topology(channel, s)
        except aio_pika.exceptions.ChannelClosed as exc:
            raise CliError(JOB_FAILED, f"the broker refused the topology (an object exists with other "
                                       f"arguments?): {str(exc).splitlines()[0][:300]}") from None
        finally:
            if not channel.is_closed:
                await channel.close()
    ctx.io.out(f"declared on {ctx.broker_name}: exchange {s.intake_exchange} (direct), queue {s.intake_queue} "
               f"(key {s.intake_routing_key}, x-max-priority {s.max_priority}), exchange {s.dead_letter_exchange} "
               f"(fanout), queue {s.dead_letter_queue}, exchange {s.events_exchange} (topic)")
    others = [q.name for q in s.queues if q.name != "default"]
    if others:
        ctx.io.out(f"queues: {', '.join(f'{s.intake_queue}.{n} (key {s.intake_routing_key}.{n})' for n in others)}")
    # Messages routed to no queue go to the alternate exchange; a policy is the only way to give
    # the existing intake exchange one (docs/queues.md).
    try:
        ctx.io.out(await apply_policy(s))
    except RuntimeError as exc:
        ctx.io.err(f"rmcs: {exc}")
        return JOB_FAILED
    return OK
