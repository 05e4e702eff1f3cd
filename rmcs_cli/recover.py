"""`rmcs recover`: rebuild the daemon's journal from the clusters' job lists (scheduler_daemon/recovery.py).
Run it on a daemon's host, with its settings (the journal `state_url` names) and clusters file."""

from __future__ import annotations

from scheduler_daemon.recovery import recover
from scheduler_daemon.settings import ConfigError, load_clusters
from scheduler_daemon.state import journal_for

from .context import Ctx
from .output import JOB_FAILED, OK, USAGE, CliError


async def cmd_recover(ctx: Ctx) -> int:
    try:
        clusters = load_clusters(ctx.args.clusters)
    except ConfigError as exc:
        raise CliError(USAGE, f"configuration error: {exc}") from None
    journal = journal_for(ctx.settings)
    await journal.open()
    try:
        found = await recover(journal, clusters)
    finally:
        await journal.close()
    for sid in found.journaled:
        ctx.io.out(f"journaled {sid}")
    ctx.io.out(f"recovered {len(found.journaled)} job(s) to follow; {len(found.known)} already journaled, "
               f"{found.ended} already ended on their cluster")
    if found.unreachable:
        raise CliError(JOB_FAILED, f"clusters not read (run again once they answer): {', '.join(found.unreachable)}")
    return OK
