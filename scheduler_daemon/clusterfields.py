"""Checks of single fields of a clusters file, shared by `settings.load_clusters`: a runtime
environment (seed 000's env_vars list or a mapping) and lists of paths."""

from __future__ import annotations

from typing import Any, Mapping


class ConfigError(ValueError):
    """Invalid configuration; the message names the key."""


def normalize_runtime_env(raw: Any, key: str) -> dict[str, Any]:
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


def path_list(raw: Any, key: str, *, dirs: bool) -> tuple[str, ...]:
    raw = raw or []
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise ConfigError(f"{key} must be a list of strings")
    for p in raw:
        if dirs and (not p.startswith("/") or ".." in p.split("/")):
            raise ConfigError(f"{key}: {p!r} must be an absolute directory without '..'")
        if any(c.isspace() for c in p):
            raise ConfigError(f"{key}: {p!r} contains white space")
    return tuple(p.rstrip("/") or "/" for p in raw) if dirs else tuple(raw)
