"""The clusters file: cluster configs, loaded and validated once, at start-up, and the
`Secret` and `ConfigError` types the settings share.

Every problem is reported as a `ConfigError` that names the offending key.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from producers import tls

from .nodetypes import Autoscaling, AutoscalingError, parse_autoscaling

CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# ${NAME}: an environment variable; ${file:/path}: the contents of a file (trailing newline dropped).
_SECRET_REF = re.compile(r"\$\{(?:file:([^}]+)|([A-Za-z_][A-Za-z0-9_]*))\}")
_MAX_SECRET_FILE = 65_536
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")

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
    # On a cluster with any allow-list (lockdown.py): the runtime_env keys and the env_vars names
    # (glob patterns) a job may set. None: the defaults of lockdown.py.
    allowed_runtime_env: tuple[str, ...] | None = None
    allowed_env_vars: tuple[str, ...] | None = None
    autoscaling: Autoscaling | None = None  # node types it may grow by (docs/scheduling.md)

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


def read_yaml(path: str | os.PathLike[str]) -> Any:
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
                 "allowed_script_dirs", "allowed_interpreters", "allowed_runtime_env", "allowed_env_vars", "autoscaling"}


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


def _names(raw: Any, key: str) -> tuple[str, ...] | None:
    """An optional list of names (or glob patterns); absent: None (the defaults apply)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(p, str) and p and not any(c.isspace() for c in p) for p in raw):
        raise ConfigError(f"{key} must be a list of names without white space")
    return tuple(raw)


def load_clusters(path: str | os.PathLike[str],
                  environ: Mapping[str, str] | None = None) -> tuple[ClusterConfig, ...]:
    """Parse a clusters file (seed 000's keys plus dashboard_url and headers)."""
    environ = os.environ if environ is None else environ
    data = read_yaml(path)
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
        try:
            scaling = parse_autoscaling(raw.get("autoscaling"), f"{key}.autoscaling")
        except AutoscalingError as exc:
            raise ConfigError(str(exc)) from None
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
            allowed_runtime_env=_names(raw.get("allowed_runtime_env"), f"{key}.allowed_runtime_env"),
            allowed_env_vars=_names(raw.get("allowed_env_vars"), f"{key}.allowed_env_vars"),
            autoscaling=scaling,
        ))
    return tuple(out)
