"""What the two job dialects share: the base of their translators (field checks that fail with
the dialect's name), Kubernetes quantities, and the names they write into the job's metadata."""

from __future__ import annotations

import math
import re
from typing import Any

from ..invalid import InvalidJob

# Bound on raw numbers before unit conversion (memory may be written in bytes); the translated
# job then meets the job's own limits (producers/schema.py).
MAX_RESOURCE_VALUE = 1e18

FORMAT_KEY = "rmcs_format"
SEED003 = "seed003"
SEED004 = "seed004"
GPU_SCALAR_RESOURCES = ("nvidia.com/gpu",)
# Ray's convention for a GPU model: nodes carry `accelerator_type:<model>: 1`, a job asks for a sliver.
ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_REQUEST = 0.001
# Native fields neither dialect can state; a dialect job may carry them alongside its own fields.
PASSTHROUGH = ("submission_id", "preferred_cluster", "queue_timeout_s", "depends_on", "run_timeout_s")

_QUANTITY = re.compile(r"^\+?((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40, "Pi": 2.0 ** 50, "Ei": 2.0 ** 60}


def parse_quantity(raw: Any) -> float:
    """A Kubernetes quantity ("8Gi", "512Mi", "4G", "500m", "2") or a JSON number, as a float."""
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a quantity")
    if isinstance(raw, int) and abs(raw) > MAX_RESOURCE_VALUE:
        raise ValueError(f"{raw!r} is absurdly large")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str) and (match := _QUANTITY.fullmatch(raw.strip())):
        value = float(match.group(1)) * _SUFFIX[match.group(2)]
    else:
        raise ValueError(f"{raw!r} is not a quantity such as 8Gi, 512Mi, 4G, 500m or 2")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{raw!r} is not a finite quantity >= 0")
    return value


def env_value(value: Any) -> str | None:
    """An environment variable's value as Ray wants it (a string), or None when it has none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value) < 10 ** 100 or isinstance(value, float) and math.isfinite(value):
        return str(value)
    return None


class Dialect:
    """A translator of one dialect: `translate()` in the subclass, field checks here."""

    name = ""
    fmt = ""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.submission_id: str | None = None
        self.job_id: str | None = None

    def fail(self, reason: str) -> InvalidJob:
        return InvalidJob(f"{self.name}: {reason}", self.submission_id, self.job_id)

    def unknown(self, present: Any, allowed: set[str], where: str = "") -> None:
        extra = sorted(set(present) - allowed)
        if extra:
            raise self.fail(f"unknown field {where}{extra[0]!r}: rmcs does not know what it does, "
                            "so it cannot run the job as asked")

    def obj(self, raw: Any, where: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be an object")
        return raw

    def text(self, raw: Any, where: str) -> str | None:
        """An optional string; None and "" both mean absent."""
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise self.fail(f"{where} must be a string")
        return raw or None

    def number(self, raw: Any, where: str, *, integer: bool = False) -> float | int | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int if integer else (int, float)):
            raise self.fail(f"{where} must be {'an integer' if integer else 'a number'}, got {raw!r}")
        if not 0 <= raw <= MAX_RESOURCE_VALUE:  # also rules out NaN, infinity and huge integers
            raise self.fail(f"{where} must be a finite number >= 0, got {raw!r}")
        return raw

    def str_map(self, raw: Any, where: str, *, coerce: bool) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.obj(raw, where).items():
            text = env_value(value) if coerce else value
            if not isinstance(text, str):
                kind = "a string, number or boolean" if coerce else "a string"
                raise self.fail(f"{where}.{key} must be {kind}, got {value!r}")
            out[key] = text
        return out

    def passthrough(self, out: dict[str, Any]) -> None:
        for key in PASSTHROUGH:
            if self.data.get(key) is not None:
                out[key] = self.data[key]

    def finish(self, out: dict[str, Any], resources: dict[str, float | int], env: dict[str, str],
               image: str | None, metadata: dict[str, str]) -> dict[str, Any]:
        runtime_env: dict[str, Any] = {}
        if env:
            runtime_env["env_vars"] = env
        if image:
            # Ray 2.x: the job runs in this container image (podman on the nodes); only `env_vars`
            # and `config` may sit beside it. The older `container: {"image": ...}` is deprecated.
            runtime_env["image_uri"] = image
        if runtime_env:
            out["runtime_env"] = runtime_env
        if resources:
            out["resource_requirements"] = resources
        out["metadata"] = {**metadata, FORMAT_KEY: self.fmt}
        return out
