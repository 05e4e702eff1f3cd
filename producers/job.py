"""The one job builder: the contract's job body and its AMQP priority, checked before anything
is sent. Used by the producer helper, the `rmcs` command line and the demo. Standard library only.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Mapping

from .schema import (QUEUE_NAME, check_depends_on, check_entrypoint, check_max_retries, check_metadata, check_priority,
                     check_resources, check_seconds, check_strings, check_submission_id)

# The contract's body fields, the parameters of build_job.
FIELDS = ("entrypoint", "submission_id", "job_id", "runtime_env", "metadata", "preferred_cluster",
          "resource_requirements", "tags", "cluster_tags", "priority", "max_retries", "queue_timeout_s",
          "depends_on", "run_timeout_s", "queue")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_job(entrypoint: Any, runtime_env: Any = None, job_id: Any = None, metadata: Any = None,
              submission_id: Any = None, preferred_cluster: Any = None, resource_requirements: Any = None,
              tags: Any = None, *, priority: Any = None, max_retries: Any = None, cluster_tags: Any = None,
              queue_timeout_s: Any = None, depends_on: Any = None, run_timeout_s: Any = None,
              queue: Any = None) -> tuple[dict[str, Any], int | None]:
    """The contract's job body and the AMQP priority. ValueError for anything invalid."""
    check_entrypoint(entrypoint, in_working_dir=isinstance(runtime_env, Mapping) and bool(runtime_env.get("working_dir")))
    sid = check_submission_id(submission_id) if submission_id is not None else f"sub_{uuid.uuid4().hex}"
    body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": sid}
    if job_id is not None:
        if not isinstance(job_id, str) or not 0 < len(job_id) <= 256:
            raise ValueError("job_id must be a string of 1 to 256 characters")
        body["job_id"] = job_id
    if runtime_env is not None:
        if not isinstance(runtime_env, Mapping):
            raise ValueError("runtime_env must be a mapping")
        body["runtime_env"] = dict(runtime_env)
    if metadata is not None:
        body["metadata"] = check_metadata(metadata)
    if preferred_cluster is not None:
        if not isinstance(preferred_cluster, str) or not preferred_cluster:
            raise ValueError("preferred_cluster must be a cluster name")
        body["preferred_cluster"] = preferred_cluster
    if resource_requirements is not None:
        check_resources(resource_requirements)
        body["resource_requirements"] = dict(resource_requirements)
    if tags is not None:
        body["tags"] = check_strings(tags, "tags")
    if cluster_tags is not None:
        body["cluster_tags"] = check_strings(cluster_tags, "cluster_tags")
    amqp_priority = None
    if priority is not None:
        amqp_priority = check_priority(priority)
        body["priority"] = priority.upper() if isinstance(priority, str) else priority
    if max_retries is not None:
        body["max_retries"] = check_max_retries(max_retries)
    if queue_timeout_s is not None:
        if not finite(queue_timeout_s) or queue_timeout_s <= 0:
            raise ValueError("queue_timeout_s must be a finite number > 0")
        body["queue_timeout_s"] = queue_timeout_s
    if depends_on:
        body["depends_on"] = check_depends_on(depends_on, sid)
    if run_timeout_s is not None:
        check_seconds(run_timeout_s, "run_timeout_s")
        body["run_timeout_s"] = run_timeout_s
    if queue is not None and queue != "default":  # routed to submit.<queue> (producers.wire.submit_key)
        if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
            raise ValueError(f"queue must be a queue name matching [A-Za-z0-9_-]{{1,64}}, got {queue!r}")
        body["queue"] = queue
    return body, amqp_priority
