"""Seed 000's API for asyncio programs: the same names, parameters, return values and errors as
`producers`, as coroutines running on the caller's event loop (one broker connection and one
HTTP session per loop). The configuration is shared with the synchronous API.

    from producers import aio
    await aio.initialize_scheduler_environment("rmcs.yaml")
    sid = await aio.submit_job("python /opt/jobs/train.py", tags=["nightly"])
    await aio.wait_for_all_jobs([sid], timeout=3600)
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Any, Iterable

from . import _core
from ._core import Client, build_job, check_submission_id
from .client import STOP_REASON, graceful_shutdown_on_keyboard_interrupt
from .config import ProducerConfig, load_config

__all__ = ["initialize_scheduler_environment", "submit_job", "get_job_status", "get_job_info", "stop_job",
           "wait_for_all_jobs", "graceful_shutdown_on_keyboard_interrupt", "shutdown_scheduler_environment"]

log = logging.getLogger("producers")
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client]" = weakref.WeakKeyDictionary()
_closing: "set[asyncio.Task[None]]" = set()


def _client() -> Client:
    loop = asyncio.get_running_loop()
    config, lazy = _core.config_for_use()
    client = _clients.get(loop)
    if client is None or client.config is not config:
        if client is not None:  # the configuration changed: drop the old connections
            task = loop.create_task(client.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        client = _clients[loop] = Client(config, lazy)
    return client


async def initialize_scheduler_environment(config_file_path: str | os.PathLike[str] | None = None,
                                           **settings: Any) -> ProducerConfig:
    """As `producers.initialize_scheduler_environment`."""
    config = load_config(config_file_path, **settings)
    _core.set_config(config)
    await _client().connect()
    return config


async def shutdown_scheduler_environment() -> None:
    """Close this loop's connections and forget the configuration."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    _core.set_config(None)
    if client is not None:
        await client.close()


async def submit_job(entrypoint: str, runtime_env: dict[str, Any] | None = None, job_id: str | None = None,
                     metadata: dict[str, str] | None = None, submission_id: str | None = None,
                     preferred_cluster: str | None = None, resource_requirements: dict[str, float] | None = None,
                     tags: list[str] | None = None, *, priority: int | str | None = None,
                     max_retries: int | None = None, cluster_tags: list[str] | None = None,
                     queue_timeout_s: float | None = None) -> str:
    """As `producers.submit_job`."""
    body, amqp_priority = build_job(entrypoint, runtime_env, job_id, metadata, submission_id, preferred_cluster,
                                    resource_requirements, tags, priority=priority, max_retries=max_retries,
                                    cluster_tags=cluster_tags, queue_timeout_s=queue_timeout_s)
    sid = body["submission_id"]
    _core.track(sid)
    try:
        return await _client().submit(body, amqp_priority, submission_id is not None)
    except Exception:
        _core.untrack(sid)
        raise


async def get_job_status(submission_id: str, cluster_name: str | None = None) -> str:
    """As `producers.get_job_status`."""
    check_submission_id(submission_id)
    return await _client().status(submission_id)


async def get_job_info(submission_id: str, cluster_name: str | None = None) -> dict[str, Any] | None:
    """As `producers.get_job_info`."""
    check_submission_id(submission_id)
    return await _client().info(submission_id)


async def stop_job(submission_id: str, cluster_name: str | None = None) -> bool:
    """As `producers.stop_job`."""
    check_submission_id(submission_id)
    return await _client().stop(submission_id)


async def wait_for_all_jobs(submission_ids: Iterable[str], check_interval: float = 5,
                            timeout: float | None = None) -> bool:
    """As `producers.wait_for_all_jobs`."""
    ids = list(submission_ids) if not isinstance(submission_ids, str) else submission_ids
    return await _client().wait(ids, check_interval, timeout)


async def _stop_submitted(ids: list[str], where: str) -> None:
    ids = list(dict.fromkeys(ids))
    log.warning("interrupted: stopping %d job(s) submitted by %s: %s", len(ids), where, ", ".join(ids))
    try:
        async with asyncio.timeout(60):
            left = await _client().request_stops(ids, STOP_REASON)
    except Exception as exc:
        log.error("could not stop the jobs submitted by %s: %s", where, exc)
        return
    if left:
        log.error("could not ask for a stop of: %s", ", ".join(left))
