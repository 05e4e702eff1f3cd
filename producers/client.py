"""Seed 000's API, synchronous: no event loop needed in the caller.

The broker connection and the HTTP session live on one private asyncio loop in a daemon
thread (see `clients.py`); each call runs a coroutine there and blocks until it ends. Ctrl+C
in the calling thread cancels that coroutine.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from . import clients, state
from .config import ProducerConfig, load_config
from .interrupt import STOP_REASON, graceful_shutdown_on_keyboard_interrupt  # noqa: F401  (the API's)
from .job import build_job
from .schema import check_submission_id


def initialize_scheduler_environment(config_file_path: str | os.PathLike[str] | None = None,
                                     **settings: Any) -> ProducerConfig:
    """Point the helper at a broker and a daemon and connect to the broker.

    `config_file_path`: a YAML file with any of amqp_url, http_addr, intake_exchange,
    intake_routing_key, events_exchange, connect_timeout_s, request_timeout_s (the daemon's
    settings file works), or a clusters.yaml. Then RMCS_<KEY> environment variables, then
    keyword `settings`, win. Without a file: the environment, else the defaults.
    Returns the configuration in use (its repr hides the broker password).
    Raises FileNotFoundError / ValueError for a bad file, RuntimeError if the broker cannot be reached.
    """
    config = load_config(config_file_path, **settings)
    state.set_config(config)
    clients.call(lambda c: c.connect())
    return config


def shutdown_scheduler_environment() -> None:
    """Close the connections and forget the configuration (the next call initialises lazily)."""
    state.set_config(None)
    clients.close_sync_client()


def submit_job(entrypoint: str, runtime_env: dict[str, Any] | None = None, job_id: str | None = None,
               metadata: dict[str, str] | None = None, submission_id: str | None = None,
               preferred_cluster: str | None = None, resource_requirements: dict[str, float] | None = None,
               tags: list[str] | None = None, *, priority: int | str | None = None, max_retries: int | None = None,
               cluster_tags: list[str] | None = None, queue_timeout_s: float | None = None,
               depends_on: list[str] | None = None, run_timeout_s: float | None = None,
               queue: str | None = None) -> str:
    """Queue one job; returns its submission id once the broker has confirmed the message.
    ValueError for an invalid job (a script named by a relative path, ...); RuntimeError when
    the broker cannot be reached or the helper cannot initialise."""
    body, amqp_priority = build_job(entrypoint, runtime_env, job_id, metadata, submission_id, preferred_cluster,
                                    resource_requirements, tags, priority=priority, max_retries=max_retries,
                                    cluster_tags=cluster_tags, queue_timeout_s=queue_timeout_s,
                                    depends_on=depends_on, run_timeout_s=run_timeout_s, queue=queue)
    sid = body["submission_id"]
    state.track(sid)
    try:
        return clients.call(lambda c: c.submit(body, amqp_priority, submission_id is not None))
    except Exception:
        state.untrack(sid)
        raise


def get_job_status(submission_id: str, cluster_name: str | None = None) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED or UNKNOWN. `cluster_name` is accepted for
    seed 000 compatibility and ignored: the daemon knows where the job went."""
    check_submission_id(submission_id)
    return clients.call(lambda c: c.status(submission_id))


def get_job_info(submission_id: str, cluster_name: str | None = None) -> dict[str, Any] | None:
    """The job's details: Ray-style `status`, rmcs `state`, `cluster`, `attempt`, `final`,
    `message`, `transitions`, ..., and `logs` (None when its cluster has none to give).
    None if the daemon does not know the job and this process did not submit it."""
    check_submission_id(submission_id)
    return clients.call(lambda c: c.info(submission_id))


def stop_job(submission_id: str, cluster_name: str | None = None) -> bool:
    """Stop (or, before dispatch, cancel) a job. True if the daemon took the request; False if
    the job had already ended or its cluster refused."""
    check_submission_id(submission_id)
    return clients.call(lambda c: c.stop(submission_id))


def wait_for_all_jobs(submission_ids: Iterable[str], check_interval: float = 5,
                      timeout: float | None = None) -> bool:
    """Block until every job has ended. True if all succeeded; RuntimeError naming those that
    did not; TimeoutError after `timeout` seconds. Follows the jobs' events as they happen;
    `check_interval` is the poll interval used only while the event stream is broken."""
    ids = list(submission_ids) if not isinstance(submission_ids, str) else submission_ids
    return clients.call(lambda c: c.wait(ids, check_interval, timeout))


def list_clusters() -> list[dict[str, Any]]:
    """Each cluster as the daemon sees it: health, total and available resources, nodes, last
    probe (`GET /api/v1/clusters`). Seed 000's `get_unified_scheduler().list_clusters()`."""
    return clients.call(lambda c: c.clusters())


def list_jobs(*, state: str | None = None, cluster: str | None = None, tag: str | None = None,
              queue: str | None = None, owner: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The jobs the daemon knows, in the order they arrived, filtered as `GET /api/v1/jobs`
    filters (seed 002's `list_jobs()`); `limit` at most."""
    filters = {"state": state, "cluster": cluster, "tag": tag, "queue": queue, "owner": owner}
    return clients.call(lambda c: c.jobs(filters, limit))


def get_job_logs(submission_id: str, cluster_name: str | None = None) -> str:
    """The job's logs from its cluster, or their kept tail once the cluster no longer has them
    (seed 002's `get_job_logs`). RuntimeError when there are none to give."""
    check_submission_id(submission_id)
    return clients.call(lambda c: c.job_logs(submission_id))


def delete_job(submission_id: str) -> bool:
    """Delete a job that ended, from its cluster and from rmcs's history (seed 004's
    `delete_job`). True when deleted, False when the daemon does not know the job; RuntimeError
    when it has not ended (stop it first) or belongs to someone else."""
    check_submission_id(submission_id)
    return clients.call(lambda c: c.delete(submission_id))


class UnifiedScheduler:
    """What seed 000's `get_unified_scheduler()` gives its callers: `list_clusters()`."""

    def list_clusters(self) -> list[dict[str, Any]]:
        return list_clusters()


def get_unified_scheduler() -> UnifiedScheduler:
    return UnifiedScheduler()
