"""Seed 000's API for asyncio programs: the same names, parameters, return values and errors as
`producers`, as coroutines running on the caller's event loop (one broker connection and one
HTTP session per loop). The configuration is shared with the synchronous API.

    from producers import aio
    await aio.initialize_scheduler_environment("rmcs.yaml")
    sid = await aio.submit_job("python /opt/jobs/train.py", tags=["nightly"])
    await aio.wait_for_all_jobs([sid], timeout=3600)
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from . import clients, state
from .config import ProducerConfig, load_config
from .interrupt import graceful_shutdown_on_keyboard_interrupt
from .job import build_job
from .schema import check_submission_id

__all__ = ["initialize_scheduler_environment", "submit_job", "get_job_status", "get_job_info", "stop_job",
           "wait_for_all_jobs", "graceful_shutdown_on_keyboard_interrupt", "shutdown_scheduler_environment",
           "list_clusters", "list_jobs", "get_job_logs", "delete_job"]


async def initialize_scheduler_environment(config_file_path: str | os.PathLike[str] | None = None,
                                           **settings: Any) -> ProducerConfig:
    """As `producers.initialize_scheduler_environment`."""
    config = load_config(config_file_path, **settings)
    state.set_config(config)
    await clients.loop_client().connect()
    return config


async def shutdown_scheduler_environment() -> None:
    """Close this loop's connections and forget the configuration."""
    client = clients.forget_loop_client()
    state.set_config(None)
    if client is not None:
        await client.close()


async def submit_job(entrypoint: str, runtime_env: dict[str, Any] | None = None, job_id: str | None = None,
                     metadata: dict[str, str] | None = None, submission_id: str | None = None,
                     preferred_cluster: str | None = None, resource_requirements: dict[str, float] | None = None,
                     tags: list[str] | None = None, *, priority: int | str | None = None,
                     max_retries: int | None = None, cluster_tags: list[str] | None = None,
                     queue_timeout_s: float | None = None,
                     depends_on: list[str] | None = None, run_timeout_s: float | None = None,
                     queue: str | None = None) -> str:
    """As `producers.submit_job`."""
    body, amqp_priority = build_job(entrypoint, runtime_env, job_id, metadata, submission_id, preferred_cluster,
                                    resource_requirements, tags, priority=priority, max_retries=max_retries,
                                    cluster_tags=cluster_tags, queue_timeout_s=queue_timeout_s,
                                    depends_on=depends_on, run_timeout_s=run_timeout_s, queue=queue)
    sid = body["submission_id"]
    state.track(sid)
    try:
        return await clients.loop_client().submit(body, amqp_priority, submission_id is not None)
    except Exception:
        state.untrack(sid)
        raise


async def get_job_status(submission_id: str, cluster_name: str | None = None) -> str:
    """As `producers.get_job_status`."""
    check_submission_id(submission_id)
    return await clients.loop_client().status(submission_id)


async def get_job_info(submission_id: str, cluster_name: str | None = None) -> dict[str, Any] | None:
    """As `producers.get_job_info`."""
    check_submission_id(submission_id)
    return await clients.loop_client().info(submission_id)


async def stop_job(submission_id: str, cluster_name: str | None = None) -> bool:
    """As `producers.stop_job`."""
    check_submission_id(submission_id)
    return await clients.loop_client().stop(submission_id)


async def wait_for_all_jobs(submission_ids: Iterable[str], check_interval: float = 5,
                            timeout: float | None = None) -> bool:
    """As `producers.wait_for_all_jobs`."""
    ids = list(submission_ids) if not isinstance(submission_ids, str) else submission_ids
    return await clients.loop_client().wait(ids, check_interval, timeout)


async def list_clusters() -> list[dict[str, Any]]:
    """As `producers.list_clusters`."""
    return await clients.loop_client().clusters()


async def list_jobs(*, state: str | None = None, cluster: str | None = None, tag: str | None = None,
                    queue: str | None = None, owner: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """As `producers.list_jobs`."""
    filters = {"state": state, "cluster": cluster, "tag": tag, "queue": queue, "owner": owner}
    return await clients.loop_client().jobs(filters, limit)


async def get_job_logs(submission_id: str, cluster_name: str | None = None) -> str:
    """As `producers.get_job_logs`."""
    check_submission_id(submission_id)
    return await clients.loop_client().job_logs(submission_id)


async def delete_job(submission_id: str) -> bool:
    """As `producers.delete_job`."""
    check_submission_id(submission_id)
    return await clients.loop_client().delete(submission_id)
