"""`rmcs recover`: rebuild the journal from the clusters after a disaster took it.

Every job rmcs submits carries in its Ray metadata its submission id, job id, attempt, owner and
`max_retries` (`dispatch.submit_body`). Recovery reads each cluster's job list and journals every
rmcs job that has not ended there (its latest attempt), as a daemon would have journaled it after
the dispatch: the daemon then follows each to its end, with its retries and its owner's stops.
A job the journal already holds at that attempt or a later one is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson
import structlog

from .jobs import GIB, RAY_STATES, TERMINAL, Job, JobState
from .journal_base import JournalStore
from .rayapi import RayDashboard, RayError
from .settings import ClusterConfig
from .tracking import Tracked

log = structlog.get_logger("rmcs.recovery")

_STANDARD = {"entrypoint_num_cpus": "CPU", "entrypoint_num_gpus": "GPU", "entrypoint_memory": "memory"}


@dataclass
class Recovered:
    journaled: list[str] = field(default_factory=list)   # submission ids now followed
    known: list[str] = field(default_factory=list)       # already in the journal
    ended: int = 0                                       # rmcs jobs already over on their cluster
    unreachable: list[str] = field(default_factory=list)  # clusters that did not answer


def job_from_ray(info: Mapping[str, Any]) -> Job | None:
    """The job as rmcs dispatched it, from what Ray says of it; None for a job not rmcs's."""
    meta = info.get("metadata") or {}
    sid = meta.get("rmcs_submission_id")
    if not isinstance(sid, str) or not sid:
        return None
    resources: dict[str, float] = {}
    for key, name in _STANDARD.items():
        if isinstance(info.get(key), (int, float)) and info[key]:
            resources[name] = float(info[key]) / (GIB if name == "memory" else 1)
    for name, amount in (info.get("entrypoint_resources") or {}).items():
        resources[str(name)] = float(amount)
    user_meta = {k: str(v) for k, v in meta.items() if not str(k).startswith("rmcs_")}
    runtime_env = info.get("runtime_env") or {}
    max_retries = int(meta.get("rmcs_max_retries") or 0)
    job_id = str(meta.get("rmcs_job_id") or sid)
    body = {"submission_id": sid, "job_id": job_id, "entrypoint": info.get("entrypoint", ""),
            "metadata": user_meta, "resource_requirements": resources, "max_retries": max_retries,
            **({"runtime_env": runtime_env} if runtime_env else {})}
    return Job(submission_id=sid, job_id=job_id, entrypoint=str(info.get("entrypoint", "")),
               runtime_env=runtime_env, metadata=user_meta, resources=resources, max_retries=max_retries,
               attempt=int(meta.get("rmcs_attempt") or 1), owner=meta.get("rmcs_owner") or None,
               body=orjson.dumps(body))


async def recover(journal: JournalStore, clusters: tuple[ClusterConfig, ...], timeout_s: float = 10.0) -> Recovered:
    found: dict[str, tuple[Job, str, JobState]] = {}
    out = Recovered()
    for config in clusters:
        dashboard = RayDashboard(config, timeout_s)
        try:
            listed = await dashboard.list_jobs()
        except RayError as exc:
            log.error("cluster not read", cluster=config.name, error=str(exc))
            out.unreachable.append(config.name)
            continue
        finally:
            await dashboard.close()
        for info in listed:
            job = job_from_ray(info)
            if job is None:
                continue
            state = RAY_STATES.get(str(info.get("status")), JobState.DISPATCHED)
            seen = found.get(job.submission_id)
            if seen is None or seen[0].attempt < job.attempt:
                found[job.submission_id] = (job, config.name, state)
    for sid, (job, cluster, state) in sorted(found.items()):
        if state in TERMINAL:
            out.ended += 1
            continue
        held = await journal.get(sid)
        if held is not None and held.job.attempt >= job.attempt:
            out.known.append(sid)
            continue
        await journal.record(Tracked(job, cluster, "", state, published=True, final=False,
                                     seen_running=state == JobState.RUNNING))
        log.info("job journaled from its cluster", submission_id=sid, cluster=cluster, attempt=job.attempt,
                 owner=job.owner, state=state.value)
        out.journaled.append(sid)
    return out
