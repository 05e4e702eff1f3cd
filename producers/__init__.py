"""Python producer helper for rmcs: seed 000's API (names, parameters, return values and
exceptions) on top of the wire contract. Imports only aio-pika, aiohttp, orjson, pyyaml and the
standard library; never the daemon or Ray.

    from producers import initialize_scheduler_environment, submit_job, wait_for_all_jobs
    initialize_scheduler_environment("rmcs.yaml")          # or RMCS_AMQP_URL / RMCS_HTTP_ADDR
    sid = submit_job("python /opt/jobs/train.py --epochs 3", resource_requirements={"CPU": 2})
    wait_for_all_jobs([sid], timeout=3600)

`producers.aio` has the same functions as coroutines; `producers.core.Client` is the asyncio
engine under both (and under `rmcs`); `producers.wire` and `producers.schema` hold the names and
rules the daemon shares. See docs/producers.md.
"""

from .client import (
    delete_job,
    get_job_info,
    get_job_logs,
    get_job_status,
    get_unified_scheduler,
    graceful_shutdown_on_keyboard_interrupt,
    initialize_scheduler_environment,
    list_clusters,
    list_jobs,
    shutdown_scheduler_environment,
    stop_job,
    submit_job,
    wait_for_all_jobs,
)
from .config import ProducerConfig, load_config
from .pipeline import submit_pipeline
from .wire import RAY_STATUS, ray_status

__all__ = [
    "initialize_scheduler_environment",
    "submit_job",
    "get_job_status",
    "get_job_info",
    "stop_job",
    "wait_for_all_jobs",
    "list_clusters",
    "list_jobs",
    "get_job_logs",
    "delete_job",
    "get_unified_scheduler",
    "submit_pipeline",
    "graceful_shutdown_on_keyboard_interrupt",
    "shutdown_scheduler_environment",
    "ProducerConfig",
    "load_config",
    "RAY_STATUS",
    "ray_status",
]
