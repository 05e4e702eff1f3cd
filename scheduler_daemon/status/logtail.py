"""The tail of a job's log from its Ray dashboard, in bounded memory.

Ray answers `GET /api/jobs/<id>/logs` with the whole log in one JSON string, however large.
The answer is read in chunks and only its last bytes are kept: enough for `tail` characters
of text even when every one is escaped (`\\uXXXX`, six bytes). The kept bytes are cut at the
first escaped line break whose backslash is surely not itself escaped, so the tail starts at
the start of a line and decodes as JSON (a log of one long line is cut where no escape can be
under way).
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from ..rayapi import RayAmbiguous, RayDashboard, RayNotFound, RayRejected, RayUnreachable, job_path

_ESCAPED_MAX = 6   # bytes of JSON for one character at most (\uXXXX)
_CHUNK = 256 * 1024


async def log_tail(dashboard: RayDashboard, ray_id: str, tail: int) -> tuple[str, bool]:
    """The last `tail` characters (at most) of the job's log, and whether it was cut."""
    keep = tail * _ESCAPED_MAX + 64
    buf = bytearray()
    seen = 0
    try:
        async with dashboard.session.get(dashboard.url(job_path(ray_id, "/logs")),
                                         timeout=dashboard.timeout) as resp:
            if resp.status >= 400:
                text = dashboard.error_text(await resp.content.read(4096))
                raise (RayNotFound if resp.status == 404 else RayRejected)(resp.status, text)
            async for chunk in resp.content.iter_chunked(_CHUNK):
                seen += len(chunk)
                buf += chunk
                if len(buf) > 2 * keep:
                    del buf[: len(buf) - keep]
    except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
        raise RayUnreachable(f"{dashboard.config.name}: cannot connect: {exc}") from None
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        raise RayAmbiguous(f"{dashboard.config.name}: {type(exc).__name__} on GET logs: {exc}") from None
    if seen == len(buf):  # the whole answer: parse it as it is
        try:
            answer = orjson.loads(bytes(buf))
        except orjson.JSONDecodeError:
            raise RayRejected(200, "the logs answer is not JSON") from None
        text = str(answer.get("logs", "")) if isinstance(answer, dict) else ""
        return (_from_a_line(text, tail), True) if len(text) > tail else (text, False)
    return _from_a_line(_decode_tail(bytes(buf[-keep:]), keep), tail), True


def _from_a_line(text: str, tail: int) -> str:
    """The last `tail` characters of `text`, from the first line that starts within them."""
    cut = text[-tail:]
    if len(text) > tail and text[-tail - 1] != "\n":
        newline = cut.find("\n", 0, len(cut) - 1)
        if newline != -1:
            cut = cut[newline + 1:]
    return cut


def _decode_tail(raw: bytes, tail: int) -> str:
    """The text of the end of `{"logs": "..."}`, from the first line start that is sure."""
    end = raw.rstrip().rstrip(b"}").rstrip()
    if not end.endswith(b'"'):
        raise RayRejected(200, "the logs answer does not end as expected")
    body = end[:-1]
    start = 0
    at = body.find(b"\\n")
    while at != -1:
        run = 0
        while at - run - 1 >= 0 and body[at - run - 1] == ord("\\"):
            run += 1
        if at - run > 0 and run % 2 == 0:  # the run of backslashes is whole and this one escapes "n"
            start = at + 2
            break
        at = body.find(b"\\n", at + 2)
    if start == 0:  # one long line: start where no escape can be under way (no backslash in the 5 bytes before)
        start = next((p for p in range(5, len(body))
                      if b"\\" not in body[p - 5:p] and body[p] & 0xC0 != 0x80), len(body))  # nor mid-UTF-8
    try:
        text = orjson.loads(b'"' + body[start:] + b'"')
    except orjson.JSONDecodeError:
        raise RayRejected(200, "the tail of the logs answer is not JSON text") from None
    return text[-tail:]
