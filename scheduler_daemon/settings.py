"""Daemon settings: loaded and validated once, at start-up (the clusters file: clusterfile.py).

Every problem is reported as a `ConfigError` that names the offending key, so a bad
file fails the daemon at start and never later at run time.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from producers import tls
from producers.schema import MAX_MESSAGE_BYTES, RESOURCE_NAME
from producers.packages import MAX_PACKAGE_BYTES

from .clusterfile import (CLUSTER_NAME, ClusterConfig, ConfigError, Secret, read_yaml,  # noqa: F401 (re-exported)
                          load_clusters)
from .queueconf import QueueConfig, parse_queues

USER_NAME = re.compile(r"^[^\x00-\x1f\x7f,\s][^\x00-\x1f\x7f,]{0,254}$")  # a broker or API user name


@dataclass(frozen=True)
class Settings:
    """Daemon settings. Field names are the keys of the settings file; each can be
    overridden by the environment variable RMCS_<KEY upper-cased>."""

    amqp_url: str = field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)  # holds the password
    amqp_ca_file: str = ""    # CA bundle for an amqps:// broker (default: the system CAs)
    amqp_cert_file: str = ""  # client certificate (PEM) for brokers that ask for one
    amqp_key_file: str = ""   # its private key, unless it is in amqp_cert_file
    http_addr: str = "127.0.0.1:8600"
    intake_exchange: str = "rmcs.jobs"
    intake_queue: str = "rmcs.jobs.submit"
    intake_routing_key: str = "submit"
    dead_letter_exchange: str = "rmcs.jobs.dlx"
    dead_letter_queue: str = "rmcs.jobs.dead"
    events_exchange: str = "rmcs.events"
    status_queue: str = "rmcs.status"
    control_queue: str = "rmcs.control.stop"
    max_priority: int = 10
    window_size: int = 8
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    # With this many clusters or more, the probes run in a process of their own (0: always).
    probe_process_from: int = 200
    track_interval_s: float = 0.5
    dispatch_timeout_s: float = 10.0
    degraded_latency_s: float = 1.0
    down_after_failures: int = 3
    up_after_successes: int = 2
    lost_after_s: float = 30.0
    snapshot_margin_s: float = 0.25
    placement_strategy: str = "spread"
    default_resources: Mapping[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # The most of each resource a single job may ask for, e.g. {CPU: 32, GPU: 8, memory: 256};
    # a job asking for more is rejected at intake. Empty: only the absurd-value bound applies.
    max_job_resources: Mapping[str, float] = field(default_factory=dict)
    state_dir: str = "var/rmcs"
    # Journal and status history: "sqlite:" (files under state_dir, one host) or postgresql://...
    state_url: str = field(default="sqlite:", repr=False)  # may hold a password
    journal_retention_s: float = 7 * 86400.0
    max_waiting_jobs: int = 100_000  # jobs stored waiting for dependencies (depends_on); more are rejected
    max_package_bytes: int = MAX_PACKAGE_BYTES  # a job's zipped working_dir or py_modules entry (producers/packages.py)
    log_tail_bytes: int = 65_536  # the end of each job's logs kept when it ends (0: none), docs/scheduling.md
    autoscale_timeout_s: float = 300.0  # a job sent to a node yet to launch, not RUNNING by then, goes elsewhere
    ray_job_retention_s: float = 3600.0
    shutdown_grace_s: float = 20.0
    failover: bool = False
    # At start, give the intake exchange its alternate exchange (the contract: a message routed to
    # no queue never vanishes) with `rabbitmqctl`, when the broker runs on this host (broker.py).
    unrouted_policy: bool = True
    leader_tick_s: float = 0.5
    log_level: str = "info"
    # Access (docs/security.md): the owner of a job submitted without an AMQP user_id, the broker
    # users who may stop any job, and the file of API tokens (user name -> token).
    default_owner: str = "anonymous"
    admins: tuple[str, ...] = ()
    api_tokens_file: str = ""
    # Where the status service (HTTP API, event stream, status cache) runs: "process", a child
    # the daemon supervises (the default); "inline", in the daemon's own event loop (tests);
    # "off", not started by the daemon (run `rmcs-status` yourself).
    status_service: str = "process"
    # The status process's CPU priority (nice): it serves people, the scheduler dispatches, and on
    # a busy host the kernel gives the scheduler the CPU first (bench/api_load.py).
    status_service_nice: int = 10
    # The status service's HTTP API (docs/security.md): TLS (a PEM certificate chain and its key),
    # a token for reads too (logs: the job's owner or an admin), the most of a log one answer
    # carries (its tail), the most event streams open at once, and a per-client rate limit
    # (requests per second, with a burst; 0: none).
    http_cert_file: str = ""
    http_key_file: str = ""
    api_reads_need_token: bool = False
    max_log_bytes: int = 1_048_576
    max_event_streams: int = 1000
    api_rate_limit: float = 100.0
    api_rate_burst: int = 200
    # The status cache forgets a job this long after it ended and left its cluster, and keeps
    # at most this many jobs (the oldest that have left their clusters go first).
    status_retention_s: float = 30 * 86400.0
    status_max_jobs: int = 1_000_000
    queues: tuple[QueueConfig, ...] = (QueueConfig("default"),)  # docs/queues.md; `default` first

    def validate(self) -> "Settings":
        _check(self.placement_strategy in ("pack", "spread"), "placement_strategy", "must be 'pack' or 'spread'")
        _check(1 <= self.max_priority <= 255, "max_priority", "must be between 1 and 255")
        _check(1 <= self.window_size <= 10_000, "window_size", "must be between 1 and 10000")
        for name in ("probe_interval_s", "probe_timeout_s", "track_interval_s", "dispatch_timeout_s",
                     "degraded_latency_s", "lost_after_s", "shutdown_grace_s", "leader_tick_s", "journal_retention_s", "ray_job_retention_s",
                     "status_retention_s", "autoscale_timeout_s"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value > 0, name, "must be a positive number")
        _check(self.snapshot_margin_s >= 0, "snapshot_margin_s", "must be >= 0")
        _check(self.probe_process_from >= 0, "probe_process_from", "must be >= 0")
        _check(self.max_waiting_jobs >= 0, "max_waiting_jobs", "must be >= 0")
        _check(0 <= self.log_tail_bytes <= 16 * 1024 * 1024, "log_tail_bytes", "must be between 0 and 16 MiB")
        _check(0 <= self.max_package_bytes <= 1024 ** 3, "max_package_bytes", "must be between 0 and 1 GiB")
        _check(self.down_after_failures >= 1, "down_after_failures", "must be >= 1")
        _check(self.up_after_successes >= 1, "up_after_successes", "must be >= 1")
        _check(self.max_message_bytes >= 1024, "max_message_bytes", "must be >= 1024")
        _check(urlsplit(self.amqp_url).scheme in ("amqp", "amqps"), "amqp_url", "must be an amqp:// or amqps:// URL")
        _check(self.state_url == "sqlite:" or self.shared_state, "state_url", "must be sqlite: or postgresql://...")
        for name in ("amqp_ca_file", "amqp_cert_file", "amqp_key_file"):
            path = getattr(self, name)
            _check(not path or urlsplit(self.amqp_url).scheme == "amqps", name, "needs an amqps:// amqp_url")
            _check(not path or os.access(path, os.R_OK), name, f"cannot read {path}")
        _check(not self.amqp_key_file or bool(self.amqp_cert_file), "amqp_key_file", "needs amqp_cert_file")
        parse_http_addr(self.http_addr)
        for res, amount in self.default_resources.items():
            _check(isinstance(amount, (int, float)) and math.isfinite(amount) and amount >= 0,
                   f"default_resources.{res}", "must be a finite number >= 0")
        for res, amount in self.max_job_resources.items():
            _check(bool(RESOURCE_NAME.fullmatch(res)), f"max_job_resources.{res}", "is not a resource name")
            _check(isinstance(amount, (int, float)) and math.isfinite(amount) and amount >= 0,
                   f"max_job_resources.{res}", "must be a finite number >= 0")
            _check(self.default_resources.get(res, 0.0) <= amount, f"default_resources.{res}",
                   f"is more than max_job_resources.{res}")
        _check(self.log_level.lower() in ("debug", "info", "warning", "error"), "log_level",
               "must be debug, info, warning or error")
        _check(self.status_service in ("process", "inline", "off"), "status_service",
               "must be 'process', 'inline' or 'off'")
        _check(0 <= self.status_service_nice <= 19, "status_service_nice", "must be between 0 and 19")
        _check(bool(USER_NAME.fullmatch(self.default_owner)), "default_owner", "must be a user name")
        for name in ("http_cert_file", "http_key_file"):
            path = getattr(self, name)
            _check(not path or os.access(path, os.R_OK), name, f"cannot read {path}")
        _check(bool(self.http_cert_file) == bool(self.http_key_file), "http_cert_file",
               "http_cert_file and http_key_file go together")
        _check(self.max_log_bytes >= 1024, "max_log_bytes", "must be >= 1024")
        _check(self.max_event_streams >= 1, "max_event_streams", "must be >= 1")
        _check(math.isfinite(self.api_rate_limit) and self.api_rate_limit >= 0, "api_rate_limit", "must be >= 0")
        _check(self.api_rate_burst >= 1, "api_rate_burst", "must be >= 1")
        _check(self.status_max_jobs >= 1, "status_max_jobs", "must be >= 1")
        _check(all(isinstance(a, str) and USER_NAME.fullmatch(a) for a in self.admins), "admins",
               "must be a list of user names")
        return self

    @property
    def shared_state(self) -> bool:
        return self.state_url.startswith(("postgresql://", "postgres://"))

    def amqp_connect_kwargs(self) -> dict[str, Any]:
        """TLS keyword arguments for aio_pika.connect / connect_robust: the one way the daemon,
        its status consumer, the CLI and `rmcs-declare` reach the broker."""
        try:
            return tls.amqp_connect_kwargs(self.amqp_url, self.amqp_ca_file, self.amqp_cert_file, self.amqp_key_file)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid setting {key!r}: {why}")


def parse_http_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid setting 'http_addr': {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _coerce(key: str, raw: Any, default: Any) -> Any:
    """Turn a file or environment value into the type of the default."""
    try:
        if key in ("queues", "RMCS_QUEUES"):
            return parse_queues(raw)
        if isinstance(default, bool):
            if isinstance(raw, str):
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            if isinstance(raw, bool):
                return raw
            raise ValueError(raw)
        if isinstance(default, int):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if isinstance(default, float):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if isinstance(default, str):
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw
        if isinstance(default, tuple):  # a YAML list, or a comma-separated string
            if isinstance(raw, str):
                raw = [part.strip() for part in raw.split(",") if part.strip()]
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                raise ValueError(raw)
            return tuple(raw)
        if isinstance(default, Mapping):
            if isinstance(raw, str):
                raw = yaml.safe_load(raw)
            if not isinstance(raw, Mapping):
                raise ValueError(raw)
            return {str(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError, yaml.YAMLError) as exc:
        why = str(exc) if key in ("queues", "RMCS_QUEUES") else f"{key!r}: {raw!r} is not a valid {type(default).__name__}"
        raise ConfigError(f"invalid setting {why}") from None
    raise ConfigError(f"invalid setting {key!r}")


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the YAML settings file (if any), then RMCS_* environment variables."""
    environ = os.environ if environ is None else environ
    base = Settings()
    known = {f.name: getattr(base, f.name) for f in fields(Settings)}
    values: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
        if not isinstance(data, Mapping):
            raise ConfigError(f"settings file {path}: top level must be a mapping of setting names")
        for key, raw in data.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r} in {path}; known: {', '.join(sorted(known))}")
            values[key] = _coerce(key, raw, known[key])
    for key, default in known.items():
        env_key = f"RMCS_{key.upper()}"
        if env_key in environ:
            values[key] = _coerce(env_key, environ[env_key], default)
    return replace(base, **values).validate()
