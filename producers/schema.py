"""The job schema rules shared by producers and the daemon: one copy, standard library only.

Every check raises ValueError with a reason a person can act on; the daemon turns it into the
dead-letter reason, the producer helper raises it to the caller before anything is published.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# The contract's 1 to 128 of [A-Za-z0-9._-], except ids made only of dots: `.` and `..` are path
# segments that URL libraries rewrite (`/api/jobs/..` is `/api/`), so the contract's own
# `GET /api/v1/jobs/{submission_id}` could not name them. `-`, `_` or `-.-` are ids like any other.
# The pattern has no look-ahead (OpenAPI's regex dialect); the length is MAX_SUBMISSION_ID.
SUBMISSION_ID_PATTERN = "^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$"
MAX_SUBMISSION_ID = 128
SUBMISSION_ID = re.compile(r"^(?=[A-Za-z0-9._-]{1,128}$)[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$")
SUBMISSION_ID_RULE = "1 to 128 of [A-Za-z0-9._-], not only dots"
PRIORITY_NAMES = {"HIGH": 9, "NORMAL": 5, "LOW": 1}

# Retries made at most, whatever `max_retries` a job asks for (the contract takes any integer
# >= 0): a job that always fails cannot hold a cluster for ever.
MAX_RETRIES = 100


def check_max_retries(raw: Any) -> int:
    """`max_retries` as the contract has it: an integer >= 0 (ValueError otherwise)."""
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {raw!r}")
    return raw


# Size limits. The daemon's message limit is a setting (max_message_bytes) with this default.
MAX_MESSAGE_BYTES = 1_048_576
MAX_ENTRYPOINT = 16_384
MAX_TAGS = 64
MAX_TAG_LEN = 128
MAX_METADATA_ITEMS = 64
MAX_METADATA_KEY = 256
MAX_METADATA_VALUE = 4096
MAX_RESOURCES = 64
# No real cluster has a billion of anything (memory is in GiB here): larger is a mistake or an attack.
MAX_RESOURCE_VALUE = 1e9
RESOURCE_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # an rmcs queue (docs/queues.md)

_PATHLIKE = re.compile(r"^[A-Za-z0-9_.~/+-]+$")
_SCRIPT_SUFFIXES = (".py", ".sh", ".R", ".jl", ".rb", ".pl")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Shell syntax that chains, substitutes or redirects: a command using it is more than one program.
SHELL_SYNTAX = frozenset(";&|<>`$()\n\r{}")
_EXPANDS_IN_DOUBLE_QUOTES = frozenset("`$")


def check_submission_id(sid: Any) -> str:
    """A submission id: SUBMISSION_ID_RULE."""
    if not isinstance(sid, str) or not SUBMISSION_ID.fullmatch(sid):
        raise ValueError(f"submission id must be {SUBMISSION_ID_RULE}, got {sid!r}")
    return sid


MAX_DEPENDS_ON = 64


def check_depends_on(raw: Any, submission_id: Any = None) -> list[str]:
    """`depends_on`: up to MAX_DEPENDS_ON submission ids, none of them the job's own."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise ValueError("depends_on must be a list of submission ids")
    if len(raw) > MAX_DEPENDS_ON:
        raise ValueError(f"depends_on: at most {MAX_DEPENDS_ON} submission ids, got {len(raw)}")
    ids = [check_submission_id(dep) for dep in raw]
    if submission_id is not None and submission_id in ids:
        raise ValueError(f"depends_on: the job {submission_id!r} cannot depend on itself")
    return list(dict.fromkeys(ids))


def check_seconds(raw: Any, name: str) -> float:
    """A duration: a finite number > 0."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
        raise ValueError(f"{name} must be a finite number > 0")
    return float(raw)


def check_priority(raw: Any, where: str = "priority") -> int:
    """0..9, or HIGH (9), NORMAL (5), LOW (1) in any case; the AMQP priority."""
    if isinstance(raw, str) and raw.upper() in PRIORITY_NAMES:
        return PRIORITY_NAMES[raw.upper()]
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 9:
        return raw
    raise ValueError(f"{where} must be an integer 0..9 or HIGH, NORMAL or LOW, got {raw!r}")


def check_entrypoint(entrypoint: Any, *, in_working_dir: bool = False) -> None:
    """Scripts and programs must be named by absolute path (seed 000), with no `..`; ValueError
    says why not. Only plain path-like words are looked at; quoted code (`python -c '...'`) is
    left alone. A job with a `working_dir` runs in it: there a relative path names a file of it."""
    command_of(entrypoint, in_working_dir=in_working_dir)


@dataclass(frozen=True)
class Command:
    """What an entrypoint runs, as far as the path rules and the per-cluster allow-lists care."""

    program: str                # the first word after any leading NAME=value assignments
    scripts: tuple[str, ...]    # absolute paths of the scripts it names (and the program, if a path)
    shell_syntax: bool          # the shell would see an operator or an expansion (; & | $ ...)
    first_arg: str = ""         # the program's first argument that is not an option
    assignments: tuple[str, ...] = ()  # the names of leading NAME=value words (environment for the program)


def command_of(entrypoint: Any, *, in_working_dir: bool = False) -> Command:
    """Check an entrypoint and say what it runs (ValueError if it breaks a rule)."""
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise ValueError("entrypoint must be a non-empty string")
    if len(entrypoint) > MAX_ENTRYPOINT:
        raise ValueError(f"entrypoint is longer than {MAX_ENTRYPOINT} characters")
    if "\x00" in entrypoint:
        raise ValueError("entrypoint contains a NUL character")
    try:
        words = shlex.split(entrypoint)
    except ValueError as exc:
        raise ValueError(f"entrypoint cannot be parsed as a shell command: {exc}") from None
    scripts: list[str] = []
    for word in (w for w in words if _PATHLIKE.fullmatch(w)):
        if ".." in word.split("/"):
            raise ValueError(f"entrypoint path {word!r} contains '..'")
        if word.startswith("-"):
            continue
        if not word.startswith("/") and not in_working_dir:
            if word.endswith(_SCRIPT_SUFFIXES):
                raise ValueError(f"entrypoint names script {word!r} by a relative path; use an absolute path "
                                 "(or ship it in a working_dir)")
            if "/" in word:
                raise ValueError(f"entrypoint names {word!r} by a relative path; use an absolute path "
                                 "(or ship it in a working_dir)")
        if word.endswith(_SCRIPT_SUFFIXES):
            scripts.append(posixpath.normpath(word))
    rest = [w for w in words]
    assignments: list[str] = []
    while rest and _ASSIGNMENT.match(rest[0]):
        assignments.append(rest.pop(0).partition("=")[0])
    program = rest[0] if rest else ""
    if program.startswith("/") and _PATHLIKE.fullmatch(program):
        program = posixpath.normpath(program)
        if program not in scripts:
            scripts.insert(0, program)
    first_arg = next((w for w in rest[1:] if not w.startswith("-")), "")
    if first_arg.startswith("/") and _PATHLIKE.fullmatch(first_arg):
        first_arg = posixpath.normpath(first_arg)
    return Command(program, tuple(scripts), _has_shell_syntax(entrypoint), first_arg, tuple(assignments))


def _has_shell_syntax(text: str) -> bool:
    """Whether the shell would see an operator or an expansion: any of SHELL_SYNTAX outside
    quotes, `$` or a backtick inside double quotes; nothing inside single quotes."""
    quote = ""
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quote == "'":
            quote = "" if ch == "'" else quote
        elif quote == '"':
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quote = ""
            elif ch in _EXPANDS_IN_DOUBLE_QUOTES:
                return True
        elif ch == "\\":
            escaped = True
        elif ch in "'\"":
            quote = ch
        elif ch in SHELL_SYNTAX:
            return True
    return False


def entrypoint_refusal(command: Command, script_dirs: Iterable[str], interpreters: Iterable[str]) -> str | None:
    """Why a cluster's allow-list refuses `command` (None when it admits it).

    - `interpreters` (if any): the program must be one of them, or a script under `script_dirs`.
    - `script_dirs` (if any): every script the command names must lie under one of them; the
      program must be such a script, or an interpreter whose first argument that is not an
      option is one (so `python -c '...'` and `python -m module` are refused).
    - With either list set, shell syntax that chains or substitutes commands is refused, and so
      are leading `NAME=value` words: the allow-list can only vouch for a single program, run in
      the cluster's environment.
    """
    dirs = tuple(d.rstrip("/") + "/" for d in script_dirs)
    allowed = frozenset(interpreters)
    if not dirs and not allowed:
        return None
    if command.shell_syntax:
        return "entrypoint uses shell syntax (; & | < > ` $ ( ) { } or a newline), which the allow-list refuses"
    if command.assignments:
        # LD_PRELOAD=/tmp/x.so /usr/bin/python3 /opt/jobs/a.py runs the producer's code first.
        return (f"entrypoint sets environment variables before the program ({', '.join(command.assignments)}), "
                "which the allow-list refuses")
    under = [s for s in command.scripts if s.startswith(dirs)] if dirs else []
    if allowed and command.program not in allowed and command.program not in under:
        return f"interpreter {command.program!r} is not allowed (allowed: {', '.join(sorted(allowed))})"
    if dirs:
        outside = [s for s in command.scripts if s not in under and s not in allowed]
        if outside:
            return f"script {outside[0]!r} is outside the allowed directories ({', '.join(dirs)})"
        if not under:
            return f"entrypoint names no script under the allowed directories ({', '.join(dirs)})"
        if command.program not in under and command.first_arg not in under:
            return (f"the first argument of {command.program!r} that is not an option must be a script under "
                    f"the allowed directories ({', '.join(dirs)}), got {command.first_arg!r}")
    return None


def check_resources(raw: Any, ceiling: Mapping[str, float] | None = None) -> dict[str, float]:
    """Resource name to amount: finite, >= 0, not absurd, and within the per-job ceiling."""
    if not isinstance(raw, Mapping):
        raise ValueError("resource_requirements must be an object of resource name to number")
    if len(raw) > MAX_RESOURCES:
        raise ValueError(f"resource_requirements: at most {MAX_RESOURCES} resources")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not RESOURCE_NAME.fullmatch(name):
            raise ValueError(f"resource name {name!r} is not valid")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"resource {name} must be a number, got {value!r}")
        if isinstance(value, int) and abs(value) > MAX_RESOURCE_VALUE:
            raise ValueError(f"resource {name} = {value!r} is absurdly large (limit {MAX_RESOURCE_VALUE:g})")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"resource {name} must be a finite number >= 0, got {value!r}")
        if value > MAX_RESOURCE_VALUE:
            raise ValueError(f"resource {name} = {value!r} is absurdly large (limit {MAX_RESOURCE_VALUE:g})")
        if ceiling and name in ceiling and value > ceiling[name]:
            raise ValueError(f"resource {name} = {value:g} is more than the per-job ceiling of {ceiling[name]:g}")
        if value:
            out[name] = float(value)
    return out


def check_strings(raw: Any, name: str) -> list[str]:
    """A list of tags: at most MAX_TAGS non-empty strings of at most MAX_TAG_LEN characters."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple, set, frozenset)) \
            or not all(isinstance(t, str) for t in raw):
        raise ValueError(f"{name} must be a list of strings")
    if len(raw) > MAX_TAGS or any(len(t) > MAX_TAG_LEN or not t for t in raw):
        raise ValueError(f"{name}: at most {MAX_TAGS} non-empty strings of at most {MAX_TAG_LEN} characters")
    return list(raw)


def check_metadata(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ValueError("metadata must be an object of string to string")
    if len(raw) > MAX_METADATA_ITEMS or any(len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE
                                            for k, v in raw.items()):
        raise ValueError(f"metadata: at most {MAX_METADATA_ITEMS} items, keys of {MAX_METADATA_KEY} "
                         f"and values of {MAX_METADATA_VALUE} characters")
    return dict(raw)
