"""A LOST job's old attempt, stopped when its cluster comes back.

A job is declared LOST when its cluster has been down for `lost_after_s`, and its next attempt
runs elsewhere. The old attempt may still be running on that cluster, cut off but alive: once the
cluster answers again, the old attempt is stopped there, so it does not run beside the retry."""

from __future__ import annotations

import structlog

from .clusters import HealthState
from .journal_base import JournalStore
from .probing import Prober
from .rayapi import RayError, RayNotFound

log = structlog.get_logger("rmcs.zombies")


async def stop_lost_attempts(journal: JournalStore, prober: Prober) -> int:
    """Stop every LOST attempt whose cluster answers again; returns how many were stopped."""
    stopped = 0
    for ray_id, cluster in await journal.lost_attempts():
        state = prober.clusters.get(cluster)
        if state is None or state.health.state not in (HealthState.UP, HealthState.DEGRADED):
            continue
        try:
            was_running = await state.dashboard.stop(ray_id)
        except RayNotFound:
            was_running = False
        except RayError as exc:
            log.warning("could not stop a LOST attempt yet", cluster=cluster, ray_submission_id=ray_id,
                        error=str(exc))
            continue
        log.info("LOST attempt stopped on its cluster, which is back", cluster=cluster, ray_submission_id=ray_id,
                 was_running=was_running)
        await journal.forget_lost(ray_id)
        stopped += 1
    return stopped
