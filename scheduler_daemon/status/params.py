"""The checks of what a client sends the HTTP API (status/api.py): query parameters, the job id
in the path, times, limits, event patterns and a stop's body. Each failure is an `ApiError`
(400 naming the parameter)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable, Mapping

import orjson
from aiohttp import web

from producers import schema

from .records import ListQuery

SUBMISSION_ID = schema.SUBMISSION_ID
MAX_PARAM_CHARS = 1024
MAX_REASON_CHARS = 1024
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ApiError(Exception):
    """An answer other than 200, with `{"error": message}` as its body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})



def params_of(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters, each known, given once, non-empty and printable."""
    allowed = tuple(allowed)
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(400, f"unknown query parameter {name!r} (allowed: {known})")
        if name in out:
            raise ApiError(400, f"query parameter {name!r} given more than once")
        if not value:
            raise ApiError(400, f"query parameter {name!r} is empty")
        if len(value) > MAX_PARAM_CHARS or CONTROL.search(value):
            raise ApiError(400, f"query parameter {name!r} is too long or has control characters")
        out[name] = value
    return out


def submission_id_of(request: web.Request) -> str:
    sid = request.match_info["submission_id"]
    if not SUBMISSION_ID.fullmatch(sid):
        raise ApiError(400, f"submission_id must be {schema.SUBMISSION_ID_RULE}")
    return sid


def time_param(value: str, name: str) -> str:
    """An RFC 3339 time (UTC when it has no offset), normalised to UTC with a Z."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError):
        raise ApiError(400, f"{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z") from None


def limit_param(value: str | None) -> int:
    if value is None:
        return ListQuery.limit
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 1000:
        raise ApiError(400, "limit must be an integer between 1 and 1000")
    return int(value)


def pattern_param(value: str) -> str:
    if len(value) > 255 or any(not word for word in value.split(".")):
        raise ApiError(400, "pattern must be an AMQP topic pattern of non-empty dot-separated words, "
                            "such as job.# or job.*.gpu (at most 255 characters)")
    return value


def stop_reason_of(body: bytes) -> str | None:
    if not body.strip():
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body must be a JSON object such as {\"reason\": \"...\"}") from None
    if not isinstance(request, dict):
        raise ApiError(400, "the body must be a JSON object such as {\"reason\": \"...\"}")
    unknown = sorted(set(request) - {"reason"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} in the body (allowed: reason)")
    reason = request.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str) or not 1 <= len(reason) <= MAX_REASON_CHARS:
        raise ApiError(400, f"reason must be a string of 1 to {MAX_REASON_CHARS} characters")
    return reason
