"""Where the producer helper finds the broker and the daemon's HTTP API.

Precedence, the same as the daemon's so one settings file plus one environment point both at the
same broker: defaults, then the YAML file given to `initialize_scheduler_environment`, then the
environment variables `RMCS_<KEY>` (upper case), then keyword overrides passed in code.

The YAML file may be the daemon's settings file (a flat mapping: the keys below are used, the
daemon's other keys ignored) or a seed 000 `clusters.yaml` (only `clusters:`, which the helper
does not need: the daemon places the jobs; the broker and API then come from the environment or
the defaults).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import yaml

from .wire import EVENTS_EXCHANGE, INTAKE_EXCHANGE, SUBMIT_KEY

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_HTTP_ADDR = "127.0.0.1:8600"


@dataclass(frozen=True, repr=False)
class ProducerConfig:
    amqp_url: str = DEFAULT_AMQP_URL
    amqp_ca_file: str = ""    # CA bundle for an amqps:// broker (default: the system CAs)
    amqp_cert_file: str = ""  # client certificate (PEM), if the broker asks for one
    amqp_key_file: str = ""   # its private key, unless it is in amqp_cert_file
    http_addr: str = DEFAULT_HTTP_ADDR
    intake_exchange: str = INTAKE_EXCHANGE
    intake_routing_key: str = SUBMIT_KEY
    events_exchange: str = EVENTS_EXCHANGE
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    broker_retry_s: float = 30.0
    # Bearer token for the daemon's HTTP API (RMCS_API_TOKEN), when the daemon has api_tokens_file.
    api_token: str = ""
    source: str = "defaults"

    def validate(self) -> "ProducerConfig":
        parts = urlsplit(self.amqp_url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(f"amqp_url must be an amqp:// or amqps:// URL with a host, got {redact_url(self.amqp_url)!r}")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"amqp_url has an invalid port: {redact_url(self.amqp_url)!r}") from None
        for name in ("amqp_ca_file", "amqp_cert_file", "amqp_key_file"):
            path = getattr(self, name)
            if path and parts.scheme != "amqps":
                raise ValueError(f"{name} needs an amqps:// amqp_url")
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: cannot read {path}")
        if self.amqp_key_file and not self.amqp_cert_file:
            raise ValueError("amqp_key_file needs amqp_cert_file")
        base = self.http_base
        hp = urlsplit(base)
        try:
            port_ok = hp.port is not None or "://" in self.http_addr
        except ValueError:
            port_ok = False
        if hp.scheme not in ("http", "https") or not hp.hostname or not port_ok:
            raise ValueError(f"http_addr must be HOST:PORT or an http(s):// URL, got {self.http_addr!r}")
        for name in ("intake_exchange", "intake_routing_key", "events_exchange", "api_token"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        for name in ("connect_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        retry = self.broker_retry_s
        if not (isinstance(retry, (int, float)) and not isinstance(retry, bool) and math.isfinite(retry) and retry >= 0):
            raise ValueError(f"broker_retry_s must be a number >= 0, got {retry!r}")
        return self

    def __repr__(self) -> str:
        return (f"ProducerConfig(amqp_url={self.broker!r}, http_addr={self.http_addr!r}, "
                f"intake_exchange={self.intake_exchange!r}, intake_routing_key={self.intake_routing_key!r}, "
                f"events_exchange={self.events_exchange!r}, source={self.source!r})")

    @property
    def http_base(self) -> str:
        """Base URL of the daemon's HTTP API, without a trailing slash."""
        addr = self.http_addr.strip()
        return (addr if "://" in addr else f"http://{addr}").rstrip("/")

    @property
    def user(self) -> str | None:
        """The broker user of amqp_url: the user_id stamped on every message, so the broker
        vouches for who submitted a job (its owner) and who asks for a stop."""
        return broker_user(self.amqp_url)

    @property
    def broker(self) -> str:
        """The broker URL without credentials, for messages."""
        return redact_url(self.amqp_url)


_KEYS = {f.name: f for f in fields(ProducerConfig) if f.name != "source"}


def redact_url(url: str) -> str:
    """`scheme://host:port/vhost` with any user name and password removed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


def _coerce(key: str, raw: Any, where: str) -> Any:
    default = getattr(ProducerConfig, key)
    if isinstance(default, float):
        if isinstance(raw, bool):
            raise ValueError(f"{where}: {key} must be a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key} must be a number, got {raw!r}") from None
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"{where}: {key} must be a non-empty string")
    return raw


def load_config(config_file_path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None, **overrides: Any) -> ProducerConfig:
    """Defaults < YAML file < RMCS_* environment < keyword overrides. Raises FileNotFoundError
    for a missing file and ValueError for invalid contents."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = []
    if config_file_path is not None:
        path = Path(config_file_path)
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: the top level must be a mapping")
        for key, raw in data.items():
            if key in _KEYS:
                values[key] = _coerce(key, raw, str(path))
        sources.append(str(path))
    for key in _KEYS:
        env_key = f"RMCS_{key.upper()}"
        if environ.get(env_key):
            values[key] = _coerce(key, environ[env_key], env_key)
            sources.append(env_key)
    for key, raw in overrides.items():
        if key not in _KEYS:
            raise TypeError(f"unknown setting {key!r}; known: {', '.join(sorted(_KEYS))}")
        if raw is not None:
            values[key] = _coerce(key, raw, "argument")
            sources.append(key)
    return replace(ProducerConfig(), **values, source=", ".join(sources) or "defaults").validate()


def broker_user(url: str) -> str | None:
    """The broker user an amqp URL logs in as (aio-pika's default is guest), which is what the
    broker accepts as a message's `user_id`. With EXTERNAL (certificate) authentication the user
    name comes from the certificate: the URL's user name if it gives one, else None (unknown)."""
    try:
        parts = urlsplit(url)
        username = parts.username
    except ValueError:
        return None
    if username:
        return unquote(username)
    return None if "auth_mechanism=external" in parts.query.lower() else "guest"


def secret_of(url: str) -> str | None:
    """The password in an amqp URL, to scrub it from error messages."""
    try:
        pw = urlsplit(url).password
    except ValueError:
        return None
    return unquote(pw) if pw else None
