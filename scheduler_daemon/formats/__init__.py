"""The two foreign job dialects the intake accepts besides its own fields (docs/formats.md).

`translate` turns a job written in the seed-003 dialect (`jobName`, `taskRoles`, ...: a GPU
cluster manager in the OpenPAI style) or the seed-004 dialect (PaddleFlow's `JobSpec`: `name`,
`schedulingPolicy`, `flavour`, ...) into a dict of native job fields, which `parse_job` then
validates like any other body. It raises `InvalidJob` for whatever Ray cannot do as one job
(several task roles or replicas, exposed ports, mounted file systems, ...): a field that changes
how the job runs is never dropped in silence.
"""

from __future__ import annotations

from typing import Any

from .dialect import FORMAT_KEY, SEED003, SEED004, parse_quantity  # noqa: F401
from .seed003 import Seed003
from .seed004 import Seed004


def translate(data: dict[str, Any]) -> dict[str, Any] | None:
    """Native job fields for a seed-003 or seed-004 job; None for a native job (or anything else,
    which `parse_job` then judges as native). Raises InvalidJob for what Ray cannot express."""
    if "entrypoint" in data:
        return None
    if "jobName" in data or "taskRoles" in data:
        return Seed003(data).translate()
    if ("schedulingPolicy" in data or "flavour" in data
            or ("name" in data and ("command" in data or "flavour" in data))):
        return Seed004(data).translate()
    return None
