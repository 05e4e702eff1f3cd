"""A stop's answer, and asking a job's cluster to stop it."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from .probing import Prober
from .rayapi import RayError
from .tracking import Tracked

log = structlog.get_logger("rmcs.control")


@dataclass(frozen=True)
class StopAnswer:
    """What a stop request did: `cancelled` (never dispatched), `stopping` (asked its cluster),
    `already_final`, `recorded` (not seen yet: cancelled if it arrives, and is the requester's),
    or `refused` (the requester is neither the job's owner nor an admin; the job goes on)."""

    submission_id: str
    outcome: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"submission_id": self.submission_id, "outcome": self.outcome, "message": self.message}


async def stop_on_cluster(prober: Prober, t: Tracked, reason: str) -> StopAnswer:
    state = prober.clusters.get(t.cluster)
    if state is None:
        return StopAnswer(t.job.submission_id, "unknown", f"cluster {t.cluster} is not configured")
    try:
        await state.dashboard.stop(t.job.ray_submission_id)
    except RayError as exc:
        log.warning("stop on cluster failed", cluster=t.cluster, error=str(exc))
        return StopAnswer(t.job.submission_id, "failed", f"cluster {t.cluster} did not take the stop: {exc}")
    log.info("stop sent to cluster", cluster=t.cluster, reason=reason)
    return StopAnswer(t.job.submission_id, "stopping", f"stop sent to {t.cluster}; the job ends as STOPPED")
