"""The job schema rules shared by producers and the daemon: one copy, standard library only."""

from __future__ import annotations

import re
import shlex
from typing import Any

SUBMISSION_ID_PATTERN = "^[A-Za-z0-9._-]{1,128}$"
SUBMISSION_ID = re.compile(SUBMISSION_ID_PATTERN)
PRIORITY_NAMES = {"HIGH": 9, "NORMAL": 5, "LOW": 1}
MAX_ENTRYPOINT = 16_384
_PATHLIKE = re.compile(r"^[A-Za-z0-9_.~/+-]+$")
_SCRIPT_SUFFIXES = (".py", ".sh", ".R", ".jl", ".rb", ".pl")


def check_entrypoint(entrypoint: Any) -> None:
    """Scripts and programs must be named by absolute path (seed 000), with no `..`; ValueError
    says why not. Only plain path-like words are looked at; quoted code (`python -c '...'`) is
    left alone."""
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
    for word in (w for w in words if _PATHLIKE.fullmatch(w)):
        if ".." in word.split("/"):
            raise ValueError(f"entrypoint path {word!r} contains '..'")
        if word.startswith("-"):
            continue
        if word.endswith(_SCRIPT_SUFFIXES) and not word.startswith("/"):
            raise ValueError(f"entrypoint names script {word!r} by a relative path; use an absolute path")
        if "/" in word and not word.startswith("/"):
            raise ValueError(f"entrypoint names {word!r} by a relative path; use an absolute path")
