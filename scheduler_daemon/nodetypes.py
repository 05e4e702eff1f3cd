"""The `autoscaling` section of a cluster in clusters.yaml, parsed (standard library only, so
the settings can hold it): the node types the cluster may grow by.

    autoscaling:
      node_types:
        gpuworker: {resources: {CPU: 8, GPU: 1}, max_workers: 4}

`resources` are in a job's units (memory in GiB); `max_workers` must be told, as Ray's API does
not show it. Names without `_` are simpler: Ray camel-cases them in some fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


class AutoscalingError(ValueError):
    """An invalid `autoscaling` section; the message names the key."""


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: Mapping[str, float]  # as written: a job's names and units
    max_workers: int


@dataclass(frozen=True)
class Autoscaling:
    node_types: tuple[NodeType, ...]


def type_key(name: str) -> str:
    """Ray writes a node type's name camel-cased in some fields and not in others."""
    return name.replace("_", "").replace("-", "").lower()


def parse_autoscaling(raw: Any, key: str) -> Autoscaling | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"node_types"}:
        raise AutoscalingError(f"{key} must be a mapping with node_types")
    types = raw.get("node_types")
    if not isinstance(types, Mapping) or not types:
        raise AutoscalingError(f"{key}.node_types must be a non-empty mapping of node type to its resources")
    out = []
    for name, spec in types.items():
        where = f"{key}.node_types.{name}"
        if not isinstance(name, str) or not name or "#" in name or not isinstance(spec, Mapping) \
                or set(spec) - {"resources", "max_workers"}:
            raise AutoscalingError(f"{where} must be a mapping with resources and max_workers")
        res, most = spec.get("resources"), spec.get("max_workers")
        if not isinstance(res, Mapping) or not res or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and v >= 0 for k, v in res.items()):
            raise AutoscalingError(f"{where}.resources must map resource names to numbers >= 0")
        if isinstance(most, bool) or not isinstance(most, int) or most < 0:
            raise AutoscalingError(f"{where}.max_workers must be an integer >= 0")
        out.append(NodeType(name, {str(k): float(v) for k, v in res.items()}, most))
    if len({type_key(t.name) for t in out}) != len(out):
        raise AutoscalingError(f"{key}.node_types: two names differ only in case, '_' or '-'")
    return Autoscaling(tuple(out))
