"""The commands that read the daemon's HTTP API: list, show, logs (with --follow), clusters."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from .context import Ctx
from .output import GIB, JOB_FAILED, NOT_FOUND, OK, CliError, clip, dumps, num, short_ts, table


def _job_row(j: dict[str, Any]) -> list[str]:
    return [str(j.get("submission_id")), str(j.get("state")), j.get("queue") or "-", j.get("cluster") or "-",
            str(j.get("attempt", "-")),
            short_ts(j.get("created")), short_ts(j.get("updated")), ",".join(j.get("tags") or []) or "-",
            clip(j.get("message"), 50)]


JOB_HEADER = ["SUBMISSION ID", "STATE", "QUEUE", "CLUSTER", "ATTEMPT", "CREATED", "UPDATED", "TAGS", "MESSAGE"]


async def cmd_list(ctx: Ctx) -> int:
    a = ctx.args
    params = {k: v for k, v in (("state", a.state), ("cluster", a.cluster), ("tag", a.tag), ("owner", a.owner),
                                ("queue", a.queue),
                                ("since", a.since),
                                ("until", a.until), ("limit", a.limit), ("cursor", a.cursor)) if v is not None}
    jobs: list[dict[str, Any]] = []
    while True:
        status, data = await ctx.http("GET", "/api/v1/jobs", params={k: str(v) for k, v in params.items()})
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise CliError(JOB_FAILED, f"unexpected answer to the job list: HTTP {status}")
        jobs.extend(data["jobs"])
        cursor = data.get("next_cursor")
        if not a.all or not cursor:
            break
        params["cursor"] = cursor
    if a.json:
        ctx.io.out(dumps({"jobs": jobs, "next_cursor": cursor}, pretty=True))
        return OK
    if jobs:
        ctx.io.out(table([_job_row(j) for j in jobs], JOB_HEADER))
    else:
        ctx.io.err("no jobs")
    if cursor:
        ctx.io.err(f"more jobs: repeat with --cursor {cursor} (or use --all)")
    return OK


async def cmd_show(ctx: Ctx) -> int:
    job = await ctx.job(ctx.args.submission_id)
    if ctx.args.json:
        ctx.io.out(dumps(job, pretty=True))
        return OK
    res = job.get("resource_requirements") or {}
    rows = [
        ("submission id", job.get("submission_id")),
        ("job id", job.get("job_id")),
        ("owner", job.get("owner") or "-"),
        ("state", f"{job.get('state')}" + (" (final)" if job.get("final") else "")),
        ("cluster", job.get("cluster") or "-"),
        ("attempt", job.get("attempt")),
        ("priority", "-" if job.get("priority") is None else job["priority"]),
        ("resources", ", ".join(f"{k}={num(v)}" for k, v in res.items()) or "-"),
        ("tags", ", ".join(job.get("tags") or []) or "-"),
        ("depends on", ", ".join(job.get("depends_on") or []) or "-"),
        ("metadata", ", ".join(f"{k}={v}" for k, v in (job.get("metadata") or {}).items()) or "-"),
        ("created", short_ts(job.get("created"))),
        ("updated", short_ts(job.get("updated"))),
        ("message", job.get("message") or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        ctx.io.out(f"{key:<{width}}  " + str(value).rstrip("\n").replace("\n", "\n" + " " * (width + 2)))
    transitions = job.get("transitions") or []
    if transitions:
        ctx.io.out("")
        ctx.io.out(table([[short_ts(t.get("ts")), str(t.get("state")), str(t.get("attempt", "-")),
                            t.get("cluster") or "-", clip(t.get("message"), 80)] for t in transitions],
                          ["TIME", "STATE", "ATTEMPT", "CLUSTER", "MESSAGE"]))
    return OK


async def _logs(ctx: Ctx, sid: str, answers: tuple[int, ...] = ()) -> tuple[int, dict[str, Any]]:
    status, data = await ctx.http("GET", f"/api/v1/jobs/{quote(sid, safe='')}/logs", answers=answers)
    if status == 404:
        raise CliError(NOT_FOUND, f"unknown job {sid!r}: {data.get('error') or 'not found'}")
    if status not in (200, 409, *answers):
        raise CliError(JOB_FAILED, f"logs of {sid!r}: HTTP {status}: {data.get('error', data)}")
    return status, data


async def cmd_logs(ctx: Ctx) -> int:
    sid, io = ctx.args.submission_id, ctx.io
    if not ctx.args.follow:
        status, data = await _logs(ctx, sid)
        if status == 409:
            raise CliError(JOB_FAILED, f"no logs for {sid}: {data.get('error')}")
        io.out(str(data.get("logs") or ""), end="")
        return OK
    printed, source, warned = "", None, False
    grace = time.monotonic() + 5.0  # a job just submitted may not be known to the daemon yet
    while True:
        try:
            job = await ctx.job(sid)
        except CliError as exc:
            if exc.code != NOT_FOUND or time.monotonic() > grace:
                raise
            await asyncio.sleep(ctx.args.interval)
            continue
        status, data = await _logs(ctx, sid, answers=(502,))
        if status == 502:  # the cluster did not answer this time; it may next time
            if not warned:
                io.err(f"rmcs logs: {data.get('error')}; retrying")
                warned = True
        elif status == 200:
            warned = False
            text = str(data.get("logs") or "")
            now = (data.get("cluster"), job.get("attempt"))
            if source is not None and now != source:
                io.err(f"--- attempt {now[1]} on {now[0]} ---")
                printed = ""
            source = now
            if text.startswith(printed):
                io.out(text[len(printed):], end="")
            else:  # the cluster's copy changed under us: show it whole
                io.err("--- logs rewritten on the cluster; printing them again ---")
                io.out(text, end="")
            printed = text
        if job.get("final"):
            if source is None and status != 200:
                raise CliError(JOB_FAILED, f"job {sid} ended {job.get('state')} with no logs: {data.get('error')}")
            if printed and not printed.endswith("\n"):
                io.out("")
            return OK
        await asyncio.sleep(ctx.args.interval)


def _resource_cell(cluster: dict[str, Any], name: str) -> str:
    total = (cluster.get("total") or {}).get(name)
    if total is None:
        return "-"
    free = (cluster.get("available") or {}).get(name, 0.0)
    if name in ("memory", "object_store_memory"):
        return f"{free / GIB:.1f}/{total / GIB:.1f}G"
    return f"{num(free)}/{num(total)}"


async def cmd_clusters(ctx: Ctx) -> int:
    status, data = await ctx.http("GET", "/api/v1/clusters")
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("clusters"), list):
        raise CliError(JOB_FAILED, f"unexpected answer to the cluster list: HTTP {status}")
    if ctx.args.json:
        ctx.io.out(dumps(data, pretty=True))
        return OK
    now = time.time()
    rows = []
    for c in data["clusters"]:
        probe = c.get("last_probe")
        age = f"{max(0.0, now - probe):.1f}s ago" if isinstance(probe, (int, float)) else short_ts(probe)
        latency = c.get("latency_s")
        rows.append([str(c.get("name")), str(c.get("health")), _resource_cell(c, "CPU"), _resource_cell(c, "GPU"),
                     _resource_cell(c, "memory"), str(len(c.get("nodes") or [])),
                     f"{latency * 1000:.0f}ms" if isinstance(latency, (int, float)) else "-", age,
                     ",".join(c.get("tags") or []) or "-", clip(c.get("error"), 50)])
    if rows:
        ctx.io.out(table(rows, ["NAME", "HEALTH", "CPU FREE", "GPU FREE", "MEMORY FREE", "NODES", "LATENCY",
                                 "LAST PROBE", "TAGS", "ERROR"]))
    else:
        ctx.io.err("no clusters")
    return OK
