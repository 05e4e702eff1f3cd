"""Submit a placed job to its cluster through the Ray Jobs REST API.

The Ray submission id is derived from the job (its submission id, and the attempt after
the first), so a retried or redelivered dispatch is idempotent: Ray's "already exists"
answer means the job is there, and counts as success when the job there is this one (its
metadata names rmcs's submission id and owner); a job of someone else's is a conflict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from . import lockdown
from .jobs import Job, merge_runtime_env
from .rayapi import RayAmbiguous, RayDashboard, RayError, RayNotFound, RayRejected, RayUnreachable
from .settings import ClusterConfig
from .shipping import PackageMissing, Shipper

GATEWAY_ERRORS = frozenset({502, 503, 504})
_STANDARD = {"CPU": "entrypoint_num_cpus", "GPU": "entrypoint_num_gpus", "memory": "entrypoint_memory"}


def submit_body(job: Job, cluster: ClusterConfig) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entrypoint": job.entrypoint,
        "submission_id": job.ray_submission_id,
        "metadata": {
            **job.metadata,
            "rmcs_submission_id": job.submission_id,
            "rmcs_job_id": job.job_id,
            "rmcs_attempt": str(job.attempt),
            # With these, `rmcs recover` rebuilds a lost journal from the clusters, owners intact.
            "rmcs_owner": job.owner or "",
            "rmcs_max_retries": str(job.max_retries),
        },
    }
    # On a locked cluster the cluster's own runtime_env wins (lockdown.py refuses a job that tries).
    runtime_env = (merge_runtime_env(job.runtime_env, cluster.runtime_env) if lockdown.locked(cluster)
                   else merge_runtime_env(cluster.runtime_env, job.runtime_env))
    if runtime_env:
        body["runtime_env"] = runtime_env
    custom: dict[str, float] = {}
    for name, amount in job.ray_resources.items():
        if name in _STANDARD:
            body[_STANDARD[name]] = int(amount) if name == "memory" else amount
        else:
            custom[name] = amount
    if custom:
        body["entrypoint_resources"] = custom
    return body


class Outcome(str, enum.Enum):
    DISPATCHED = "dispatched"      # the job is on the cluster (created now, or already there)
    UNREACHABLE = "unreachable"    # never reached Ray: safe to go elsewhere
    AMBIGUOUS = "ambiguous"        # may have reached Ray: look there before going elsewhere
    REFUSED = "refused"            # Ray said no to this job (4xx): try other clusters
    CLUSTER_ERROR = "cluster_error"  # Ray failed (500): look there by id, then try later or elsewhere
    CONFLICT = "conflict"          # a job with its id is there, and is not this job: rejected


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str = ""
    created: bool = True


def not_ours(info: Mapping[str, Any], job: Job) -> str | None:
    """Why a Ray job found under `job`'s id is not `job` (None when rmcs submitted it for the
    same owner): only then may rmcs adopt it, and answer for it (stop, logs, deletion)."""
    meta = info.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    if meta.get("rmcs_submission_id") != job.submission_id:
        return f"a job with id {job.ray_submission_id!r} that rmcs did not submit is already on the cluster"
    if job.owner is not None and meta.get("rmcs_owner") != job.owner:
        return (f"the job with id {job.ray_submission_id!r} on the cluster belongs to "
                f"{meta.get('rmcs_owner') or 'an unknown owner'!r}, not {job.owner!r}")
    return None


async def dispatch(job: Job, cluster: ClusterConfig, dashboard: RayDashboard,
                   shipper: Shipper | None = None) -> Result:
    body = submit_body(job, cluster)
    if shipper is not None:
        try:  # the job's code packages first; nothing of the job has reached Ray yet
            await shipper.ship(body.get("runtime_env") or {}, cluster.name, dashboard)
        except PackageMissing as exc:
            return Result(Outcome.REFUSED, str(exc), False)
        except RayRejected as exc:
            outcome = Outcome.REFUSED if 400 <= exc.status < 500 else Outcome.UNREACHABLE
            return Result(outcome, f"package upload: {exc.message}", False)
        except RayError as exc:
            return Result(Outcome.UNREACHABLE, f"package upload: {exc}", False)
    try:
        created = await dashboard.submit(body)
        if not created:
            # "already exists": ours from an earlier try, or a squatter's; Ray's metadata says which.
            conflict = not_ours(await dashboard.job(job.ray_submission_id), job)
            if conflict is not None:
                return Result(Outcome.CONFLICT, f"{cluster.name}: {conflict}", False)
        return Result(Outcome.DISPATCHED, "" if created else "already on the cluster", created)
    except RayUnreachable as exc:
        return Result(Outcome.UNREACHABLE, str(exc))
    except RayAmbiguous as exc:
        return Result(Outcome.AMBIGUOUS, str(exc))
    except RayNotFound:  # "already exists", then gone: it was there; look again before going elsewhere
        return Result(Outcome.AMBIGUOUS, "the job on the cluster went away while being looked at")
    except RayRejected as exc:
        if exc.status in GATEWAY_ERRORS:  # a proxy's answer: Ray may be creating the job still
            return Result(Outcome.AMBIGUOUS, exc.message)
        outcome = Outcome.REFUSED if 400 <= exc.status < 500 else Outcome.CLUSTER_ERROR
        return Result(outcome, exc.message)
