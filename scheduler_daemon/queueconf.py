"""Queues for teams, as declared under `queues:` in the settings file (docs/queues.md).

Parsed and validated once, into frozen `QueueConfig`s; every problem is a `ValueError` that
names the key (settings.py turns it into its ConfigError). Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from producers.schema import QUEUE_NAME  # noqa: F401  (re-exported)
from producers.wire import DEFAULT_QUEUE as DEFAULT
from producers.wire import submit_key
_KEYS = ("weight", "guaranteed", "limit", "max_running", "publishers")


@dataclass(frozen=True)
class QueueConfig:
    name: str
    weight: float = 1.0
    guaranteed: Mapping[str, float] = field(default_factory=dict)  # job units: memory in GiB
    limit: Mapping[str, float] | None = None   # None: no limit
    max_running: int | None = None             # None: no limit
    publishers: frozenset[str] | None = None   # None: anyone

    @property
    def constrained(self) -> bool:
        """Whether anything about this queue needs counting (a lone plain `default` does not)."""
        return bool(self.guaranteed) or self.limit is not None or self.max_running is not None


def queue_refusal(job: Any, queues: Mapping[str, QueueConfig]) -> str | None:
    """Why a job may not enter its queue: no such queue (a seed-format job can name any), or its
    broker user is not among the queue's publishers. None: it may."""
    q = queues.get(job.queue)
    if q is None:
        return f"no queue named {job.queue!r}; the queues are {', '.join(sorted(queues))}"
    if q.publishers is not None and job.owner not in q.publishers:
        return f"broker user {job.owner!r} may not publish to queue {q.name!r} (its publishers: " \
               f"{', '.join(sorted(q.publishers))})"
    return None


def queue_of_key(intake_queue: str, name: str) -> str:
    """The RabbitMQ queue of queue `name`: the v1 intake queue for `default`, else `<intake>.<name>`."""
    return intake_queue if name == DEFAULT else f"{intake_queue}.{name}"


def routing_key_of(intake_key: str, name: str) -> str:
    return submit_key(name, intake_key)


def _amounts(raw: Any, key: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{key} must map resource names to numbers, e.g. {{CPU: 8, GPU: 2}}")
    out: dict[str, float] = {}
    for res, amount in raw.items():
        if not isinstance(res, str) or not res:
            raise ValueError(f"{key}: {res!r} is not a resource name")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount < 0:
            raise ValueError(f"{key}.{res} must be a finite number >= 0")
        out[res] = float(amount)
    return out


def parse_queue(name: Any, raw: Any) -> QueueConfig:
    key = f"queues.{name}"
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise ValueError(f"{key}: queue names must match [A-Za-z0-9_-]{{1,64}}")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"{key} must be a mapping of {', '.join(_KEYS)}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ValueError(f"{key}: unknown key {unknown[0]!r}; known: {', '.join(_KEYS)}")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{key}.weight must be a positive number")
    guaranteed = _amounts(raw.get("guaranteed") or {}, f"{key}.guaranteed")
    limit = None if raw.get("limit") is None else _amounts(raw["limit"], f"{key}.limit")
    if limit is not None:
        for res, amount in guaranteed.items():
            if res in limit and amount > limit[res]:
                raise ValueError(f"{key}.guaranteed.{res} ({amount:g}) is more than its limit ({limit[res]:g})")
    max_running = raw.get("max_running")
    if max_running is not None and (isinstance(max_running, bool) or not isinstance(max_running, int)
                                    or max_running < 1):
        raise ValueError(f"{key}.max_running must be an integer >= 1")
    publishers = raw.get("publishers")
    if publishers is not None:
        if not isinstance(publishers, list) or not all(isinstance(p, str) and p for p in publishers):
            raise ValueError(f"{key}.publishers must be a list of broker user names")
        publishers = frozenset(publishers)
    return QueueConfig(name, float(weight), guaranteed, limit, max_running, publishers)


def parse_queues(raw: Any) -> tuple[QueueConfig, ...]:
    """The `queues:` mapping (or its YAML text, from RMCS_QUEUES); `default` is always there, first."""
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"queues is not valid YAML: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValueError("queues must be a mapping of queue name to its settings")
    queues = {name: parse_queue(name, spec) for name, spec in raw.items()}
    first = queues.pop(DEFAULT, QueueConfig(DEFAULT))
    return (first, *queues.values())
