"""Daemon settings and cluster configs: loaded and validated once, at start-up.

Every problem is reported as a `ConfigError` that names the offending key, so a bad
file fails the daemon at start and never later at run time.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from producers import tls
from producers.schema import MAX_MESSAGE_BYTES, RESOURCE_NAME

from .queueconf import QueueConfig, parse_queues

CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# ${NAME}: an environment variable; ${file:/path}: the contents of a file (trailing newline dropped).
_SECRET_REF = re.compile(r"\$\{(?:file:([^}]+)|([A-Za-z_][A-Za-z0-9_]*))\}")
_MAX_SECRET_FILE = 65_536
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
USER_NAME = re.compile(r"^[^\x00-\x1f\x7f,\s][^\x00-\x1f\x7f,]{0,254}$")  # a broker or API user name


class ConfigError(ValueError):
    """Invalid configuration; the message names the key."""


class Secret:
    """A value that must never be shown: its repr and str are redacted. `reveal()` is the one
    way to the value, used only where it is sent (an HTTP header)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return isinstance(other, str) and self._value == other

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    dashboard_url: str
    head_address: str = ""
    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    prefer: bool = False
    weight: float = 1.0
    tags: frozenset[str] = frozenset()
    # Sent with every dashboard request (e.g. Ray's `Authorization: Bearer` token); values redacted.
    headers: Mapping[str, Secret] = field(default_factory=dict)
    ca_file: str = ""  # CA bundle for an https:// dashboard (default: the system CAs)
    # Per-cluster entrypoint allow-lists (producers/schema.entrypoint_refusal); empty admits all.
    allowed_script_dirs: tuple[str, ...] = ()
    allowed_interpreters: tuple[str, ...] = ()

    def revealed_headers(self) -> dict[str, str]:
        """The dashboard headers as sent: secrets revealed (for the request alone, never a log)."""
        return {name: value.reveal() if isinstance(value, Secret) else value for name, value in self.headers.items()}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https:// dashboard with a CA bundle (None: aiohttp's default)."""
        if not self.ca_file:
            return None
        try:
            return tls.client_context(self.ca_file, what=f"clusters.{self.name}.ca_file")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


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
    journal_retention_s: float = 7 * 86400.0
    ray_job_retention_s: float = 3600.0
    shutdown_grace_s: float = 20.0
    failover: bool = False
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
    # a busy host the kernel gives the scheduler the CPU first (bench/status_load.py).
    status_service_nice: int = 10
    queues: tuple[QueueConfig, ...] = (QueueConfig("default"),)  # docs/queues.md; `default` first

    def validate(self) -> "Settings":
        _check(self.placement_strategy in ("pack", "spread"), "placement_strategy", "must be 'pack' or 'spread'")
        _check(1 <= self.max_priority <= 255, "max_priority", "must be between 1 and 255")
        _check(1 <= self.window_size <= 10_000, "window_size", "must be between 1 and 10000")
        for name in ("probe_interval_s", "probe_timeout_s", "track_interval_s", "dispatch_timeout_s",
                     "degraded_latency_s", "lost_after_s", "shutdown_grace_s", "leader_tick_s", "journal_retention_s", "ray_job_retention_s"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value > 0, name, "must be a positive number")
        _check(self.snapshot_margin_s >= 0, "snapshot_margin_s", "must be >= 0")
        _check(self.probe_process_from >= 0, "probe_process_from", "must be >= 0")
        _check(self.down_after_failures >= 1, "down_after_failures", "must be >= 1")
        _check(self.up_after_successes >= 1, "up_after_successes", "must be >= 1")
        _check(self.max_message_bytes >= 1024, "max_message_bytes", "must be >= 1024")
        _check(urlsplit(self.amqp_url).scheme in ("amqp", "amqps"), "amqp_url", "must be an amqp:// or amqps:// URL")
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
        _check(all(isinstance(a, str) and USER_NAME.fullmatch(a) for a in self.admins), "admins",
               "must be a list of user names")
        return self

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
        data = _read_yaml(path)
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


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def _expand_secrets(value: str, key: str, environ: Mapping[str, str]) -> Secret:
    """Expand `${NAME}` from the environment and `${file:/path}` from a file. Errors name the
    variable or the file, never a value."""
    def sub(match: re.Match[str]) -> str:
        path, name = match.group(1), match.group(2)
        if name is not None:
            if name not in environ:
                raise ConfigError(f"{key}: environment variable {name} is not set")
            return environ[name]
        if not path.startswith("/"):
            raise ConfigError(f"{key}: secret file {path} must be an absolute path")
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None
        if len(raw) > _MAX_SECRET_FILE:
            raise ConfigError(f"{key}: secret file {path} is larger than {_MAX_SECRET_FILE} bytes")
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"{key}: secret file {path} is not UTF-8 text") from None
        if "\n" in text or "\r" in text:
            raise ConfigError(f"{key}: secret file {path} holds more than one line")
        return text

    expanded = _SECRET_REF.sub(sub, value)
    if "\r" in expanded or "\n" in expanded:
        raise ConfigError(f"{key}: the value contains a line break")
    return Secret(expanded)


def _normalize_runtime_env(raw: Any, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be a mapping")
    env = dict(raw)
    env_vars = env.get("env_vars")
    if isinstance(env_vars, list):
        # Seed 000 writes env_vars as a list of "NAME=value" strings; Ray wants a mapping.
        mapped: dict[str, str] = {}
        for item in env_vars:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{key}.env_vars: {item!r} is not NAME=value")
            name, _, value = item.partition("=")
            mapped[name] = value
        env["env_vars"] = mapped
    elif env_vars is not None:
        if not isinstance(env_vars, Mapping) or not all(isinstance(v, str) for v in env_vars.values()):
            raise ConfigError(f"{key}.env_vars must map names to strings")
        env["env_vars"] = {str(k): v for k, v in env_vars.items()}
    return env


_CLUSTER_KEYS = {"head_address", "dashboard_url", "runtime_env", "prefer", "weight", "tags", "headers", "ca_file",
                 "allowed_script_dirs", "allowed_interpreters"}


def _path_list(raw: Any, key: str, *, dirs: bool) -> tuple[str, ...]:
    raw = raw or []
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise ConfigError(f"{key} must be a list of strings")
    for p in raw:
        if dirs and (not p.startswith("/") or ".." in p.split("/")):
            raise ConfigError(f"{key}: {p!r} must be an absolute directory without '..'")
        if any(c.isspace() for c in p):
            raise ConfigError(f"{key}: {p!r} contains white space")
    return tuple(p.rstrip("/") or "/" for p in raw) if dirs else tuple(raw)


def load_clusters(path: str | os.PathLike[str],
                  environ: Mapping[str, str] | None = None) -> tuple[ClusterConfig, ...]:
    """Parse a clusters file (seed 000's keys plus dashboard_url and headers)."""
    environ = os.environ if environ is None else environ
    data = _read_yaml(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("clusters"), Mapping) or not data["clusters"]:
        raise ConfigError(f"{path}: 'clusters' must be a non-empty mapping of cluster name to settings")
    extra = set(data) - {"clusters"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key {sorted(extra)[0]!r}")
    out = []
    for name, raw in data["clusters"].items():
        key = f"clusters.{name}"
        if not isinstance(name, str) or not CLUSTER_NAME.fullmatch(name):
            raise ConfigError(f"{key}: cluster names must match [A-Za-z0-9_-]+")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{key} must be a mapping")
        unknown = set(raw) - _CLUSTER_KEYS
        if unknown:
            raise ConfigError(f"{key}: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(_CLUSTER_KEYS))}")
        head = raw.get("head_address", "") or ""
        if not isinstance(head, str):
            raise ConfigError(f"{key}.head_address must be a string HOST:PORT")
        url = raw.get("dashboard_url")
        if url is None:
            if not head:
                raise ConfigError(f"{key}: needs dashboard_url or head_address")
            host = urlsplit(head if "://" in head else f"//{head}").hostname or ""
            url = f"http://[{host}]:8265" if ":" in host else f"http://{host}:8265"
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ConfigError(f"{key}.dashboard_url must be an http:// or https:// URL")
        if "@" in urlsplit(url).netloc:
            raise ConfigError(f"{key}.dashboard_url must not carry credentials (it is shown by the HTTP API); "
                              "send them in headers")
        prefer = raw.get("prefer", False)
        if not isinstance(prefer, bool):
            raise ConfigError(f"{key}.prefer must be true or false")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"{key}.weight must be a positive number")
        tags = raw.get("tags", []) or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConfigError(f"{key}.tags must be a list of strings")
        headers = raw.get("headers", {}) or {}
        if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{key}.headers must map header names to strings")
        for header in headers:
            if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
                raise ConfigError(f"{key}.headers: {header!r} is not a valid header name")
        ca_file = raw.get("ca_file", "") or ""
        if not isinstance(ca_file, str):
            raise ConfigError(f"{key}.ca_file must be a path")
        if ca_file and urlsplit(url).scheme != "https":
            raise ConfigError(f"{key}.ca_file needs an https:// dashboard_url")
        if ca_file and not os.access(ca_file, os.R_OK):
            raise ConfigError(f"{key}.ca_file: cannot read {ca_file}")
        out.append(ClusterConfig(
            name=name,
            dashboard_url=url.rstrip("/"),
            head_address=head,
            runtime_env=_normalize_runtime_env(raw.get("runtime_env"), f"{key}.runtime_env"),
            prefer=prefer,
            weight=float(weight),
            tags=frozenset(tags),
            headers={str(k): _expand_secrets(v, f"{key}.headers.{k}", environ) for k, v in headers.items()},
            ca_file=ca_file,
            allowed_script_dirs=_path_list(raw.get("allowed_script_dirs"), f"{key}.allowed_script_dirs", dirs=True),
            allowed_interpreters=_path_list(raw.get("allowed_interpreters"), f"{key}.allowed_interpreters", dirs=False),
        ))
    return tuple(out)
