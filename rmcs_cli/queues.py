"""`rmcs queues`: the queues as the scheduler last reported them (GET /api/v1/queues), as a table."""

from __future__ import annotations

from typing import Any

from .context import Ctx
from .output import CliError, JOB_FAILED, OK, dumps, table


def _amounts(value: Any) -> str:
    if not isinstance(value, dict) or not value:
        return "-"
    return ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(value.items()))


def queue_rows(queues: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for q in queues:
        waiting_broker = q.get("waiting_in_broker")
        rows.append([
            str(q.get("name")) + ("" if q.get("configured", True) else " (removed)"),
            "-" if q.get("weight") is None else f"{q['weight']:g}",
            _amounts(q.get("guaranteed")), "-" if q.get("limit") is None else _amounts(q.get("limit")),
            "-" if q.get("max_running") is None else str(q["max_running"]),
            _amounts(q.get("held")), str(q.get("running", 0)), str(q.get("waiting_in_daemon", 0)),
            "-" if waiting_broker is None else str(waiting_broker),
            f"{float(q.get('dominant_share') or 0.0):.3f}",
            "anyone" if q.get("publishers") is None else ",".join(q["publishers"]) or "nobody",
        ])
    return rows


async def cmd_queues(ctx: Ctx) -> int:
    status, data = await ctx.http("GET", "/api/v1/queues")
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("queues"), list):
        raise CliError(JOB_FAILED, f"unexpected answer to the queue list: HTTP {status}")
    if ctx.args.json:
        ctx.io.out(dumps(data, pretty=True))
        return OK
    rows = queue_rows(data["queues"])
    if not rows:
        ctx.io.err("no queues reported yet (is the scheduler running?)")
        return OK
    ctx.io.out(table(rows, ["QUEUE", "WEIGHT", "GUARANTEED", "LIMIT", "MAX RUNNING", "HELD", "RUNNING",
                            "WAITING", "IN RABBITMQ", "SHARE", "PUBLISHERS"]))
    return OK
