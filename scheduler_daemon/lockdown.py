"""Whether a locked cluster runs a job: its entrypoint and its runtime_env (pure, no I/O).

A cluster is locked when its clusters-file entry has an allow-list (`allowed_script_dirs`,
`allowed_interpreters`, `allowed_runtime_env`, `allowed_env_vars`). An entrypoint allow-list
vouches for one program run in the cluster's environment, and a runtime_env can run code of
the producer's choosing before that program starts (`pip`, `conda`, `uv`, `working_dir`,
`py_modules`, `container`/`image_uri`, or `LD_PRELOAD`, `PYTHONPATH` in `env_vars`). So on a
locked cluster a job may set only the runtime_env keys, and the `env_vars` names, that the
cluster allows, and none that the cluster's own `runtime_env` sets.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Mapping

from producers.schema import Command, entrypoint_refusal

from .clusterfile import ClusterConfig

# The runtime_env keys a job may set on a locked cluster unless the cluster says otherwise.
DEFAULT_RUNTIME_ENV_KEYS = ("env_vars", "config")
# env_vars names refused on a locked cluster unless the cluster lists its own allowed names:
# each makes a loader, an interpreter or Ray run code named by the variable.
REFUSED_ENV_VARS = ("LD_*", "PYTHON*", "PATH", "BASH_ENV", "ENV", "IFS", "PERL5*", "RUBY*",
                    "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "RAY_*")


def locked(config: ClusterConfig) -> bool:
    return bool(config.allowed_script_dirs or config.allowed_interpreters
                or config.allowed_runtime_env is not None or config.allowed_env_vars is not None)


def refusal(command: Command, runtime_env: Mapping[str, Any], config: ClusterConfig) -> str | None:
    """Why `config`'s cluster refuses a job (None when it runs it, or is not locked)."""
    if not locked(config):
        return None
    why = entrypoint_refusal(command, config.allowed_script_dirs, config.allowed_interpreters)
    if why is not None:
        return why
    if not (config.allowed_script_dirs or config.allowed_interpreters) and command.assignments:
        return (f"entrypoint sets environment variables before the program ({', '.join(command.assignments)}), "
                "which the allow-list refuses")
    return runtime_env_refusal(runtime_env, config)


def runtime_env_refusal(runtime_env: Mapping[str, Any], config: ClusterConfig) -> str | None:
    keys = DEFAULT_RUNTIME_ENV_KEYS if config.allowed_runtime_env is None else config.allowed_runtime_env
    own = config.runtime_env
    for key in runtime_env:
        if key not in keys:
            return (f"runtime_env key {key!r} is not allowed on this cluster "
                    f"(allowed: {', '.join(keys) or 'none'})")
        if key in own and key != "env_vars":
            return f"runtime_env key {key!r} is set by the cluster and cannot be overridden"
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, Mapping):
        return "runtime_env.env_vars must be an object of name to string"
    own_vars = own.get("env_vars") or {}
    for name in env_vars:
        if not isinstance(name, str):
            return f"runtime_env.env_vars name {name!r} is not a string"
        if name in own_vars:
            return f"runtime_env.env_vars {name} is set by the cluster and cannot be overridden"
        if config.allowed_env_vars is None:
            hit = next((p for p in REFUSED_ENV_VARS if fnmatchcase(name, p)), None)
            if hit is not None:
                return f"runtime_env.env_vars {name} is refused on this cluster (matches {hit})"
        elif not any(fnmatchcase(name, p) for p in config.allowed_env_vars):
            return (f"runtime_env.env_vars {name} is not allowed on this cluster "
                    f"(allowed: {', '.join(config.allowed_env_vars) or 'none'})")
    return None
