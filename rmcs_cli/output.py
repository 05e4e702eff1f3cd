"""What `rmcs` prints and how it ends: exit codes, the one-line error, and the text formats of
jobs, events and tables."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import IO, Any

OK, JOB_FAILED, USAGE, UNREACHABLE, NOT_FOUND, TIMED_OUT, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
GIB = 1024 ** 3


class CliError(Exception):
    """Ends a command with `code`; `message` is its one line on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Io:
    """Where a command writes: stdout for results, stderr for diagnostics. Each line is flushed."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out_stream, self.err_stream = out, err

    def out(self, text: str = "", end: str = "\n") -> None:
        self.out_stream.write(text + end)
        self.out_stream.flush()

    def err(self, text: str) -> None:
        self.err_stream.write(text + "\n")
        self.err_stream.flush()


def dumps(data: Any, pretty: bool = False) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2 if pretty else None, sort_keys=False)


def short_ts(ts: Any) -> str:
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, (int, float)):
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = str(ts)
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if m:
        return m.group(1) + ("Z" if m.group(2) in (None, "Z", "+00:00") else m.group(2))
    return text


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def clip(text: Any, width: int = 60) -> str:
    if text is None or text == "":
        return "-"
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


def num(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def transition_line(e: dict[str, Any]) -> str:
    parts = [short_ts(e.get("ts")), f"{e.get('state', '?'):<10}", f"attempt {e.get('attempt', '-')}",
             f"cluster {e.get('cluster') or '-'}"]
    if e.get("message"):
        parts.append(clip(e["message"], 200))
    return "  ".join(parts)


def event_line(e: dict[str, Any]) -> str:
    key = str(e.get("event", ""))
    if key.startswith("job."):
        parts = [short_ts(e.get("ts")), key, str(e.get("submission_id")), f"attempt {e.get('attempt', '-')}"]
        if e.get("final"):
            parts.append("final")
        if e.get("message"):
            parts.append(clip(e["message"], 200))
        return "  ".join(parts)
    if key.startswith("cluster."):
        return "  ".join([short_ts(e.get("ts")), key, *([clip(e["message"], 200)] if e.get("message") else [])])
    extra = {k: v for k, v in e.items() if k != "event"}
    return f"{short_ts(e.get('ts')) if e.get('ts') else '-'}  {key}  {dumps(extra)}"
