"""A thin client for one Ray dashboard: one aiohttp session, explicit timeouts.

Retry rule: nothing here retries. Callers decide, and only idempotent calls (GETs,
and a submit with a fixed submission id) are ever repeated. Failures come out as one of
three errors, because the caller's next step differs:

- `RayUnreachable`: the request never reached Ray (connection refused, DNS): safe to
  send the job elsewhere.
- `RayAmbiguous`: it may have reached Ray (timeout, dropped connection): the job might
  exist there; look before sending it elsewhere.
- `RayRejected`: Ray answered no (4xx, or a 5xx that is not a duplicate).
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping
from urllib.parse import quote

import aiohttp
import orjson
import yarl

from .settings import ClusterConfig


class RayError(Exception):
    pass


class RayUnreachable(RayError):
    pass


class RayAmbiguous(RayError):
    pass


class RayRejected(RayError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class RayNotFound(RayRejected):
    pass


PACKAGE_TIMEOUT_S = 300.0  # an upload of up to max_package_bytes (producers/packages.py)


def job_path(ray_id: str, rest: str = "") -> str:
    """`/api/jobs/<id><rest>` with the id as one encoded segment. An id that is empty or only
    dots would be read as a path step (`/api/jobs/..` is `/api/`), so it is refused (RayRejected)
    rather than sent; ids of rmcs are never only dots (producers/schema.py)."""
    if not ray_id.strip(".~"):
        raise RayRejected(400, f"job id {ray_id!r} is not a path segment")
    return f"/api/jobs/{quote(ray_id, safe='')}{rest}"


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:limit]


class RayDashboard:
    """Client for one cluster's dashboard."""

    def __init__(self, config: ClusterConfig, timeout_s: float, *, limit: int = 16) -> None:
        self.config = config
        self.base = config.dashboard_url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 2.0))
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}
        self._probe: _ProbeConnection | None = None
        self._limit = limit
        self._ssl = config.ssl_context()  # built once: a bad CA bundle fails at start, not per request
        self._headers = config.revealed_headers()
        # Header values to blank out of any error text (a proxy or dashboard may echo a request).
        self._secrets = sorted((v for v in self._headers.values() if len(v) >= 4), key=len, reverse=True)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300,
                                               ssl=self._ssl if self._ssl is not None else True),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        if self._session is not None:
            await self._session.close()

    def url(self, path: str) -> yarl.URL:
        """Parsed once per path (the probe and the job list ask the same ones every second)."""
        url = self._urls.get(path)
        if url is None:
            # Our paths are encoded already (job_path): yarl must not decode or normalise them.
            url = yarl.URL(str(yarl.URL(self.base)) + path, encoded=True)
            if len(self._urls) < 64:
                self._urls[path] = url
        return url

    async def _request(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
                       timeout: aiohttp.ClientTimeout | None = None) -> tuple[int, bytes]:
        data = orjson.dumps(body) if body is not None else raw
        headers = None if data is None else {"Content-Type": "application/json" if raw is None
                                             else "application/octet-stream"}
        try:
            async with self.session.request(method, self.url(path), data=data, headers=headers,
                                            timeout=timeout or self.timeout) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            raise RayUnreachable(f"{self.config.name}: cannot connect: {exc}") from None
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise RayAmbiguous(f"{self.config.name}: {type(exc).__name__} on {method} {path}: {exc}") from None

    def error_text(self, raw: bytes) -> str:
        """The last line of an answer, for an error message, with any header secret blanked."""
        text = _last_line(raw.decode(errors="replace"))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        status, raw = await self._request(method, path, **kw)
        return self._decode(status, raw)

    def _decode(self, status: int, raw: bytes) -> Any:
        if status == 404:
            raise RayNotFound(status, self.error_text(raw))
        if status >= 400:
            raise RayRejected(status, self.error_text(raw))
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RayRejected(status, f"answer is not JSON: {self.error_text(raw[:80])!r}") from None

    async def version(self) -> Any:
        return await self._json("GET", "/api/version")

    async def cluster_status(self, *, caller_bounds_time: bool = False) -> Any:
        """The probe: over a kept-alive connection of its own (`_ProbeConnection`). With
        `caller_bounds_time` the caller limits how long it may take (the probes do, one deadline
        for many, since a timer per probe is a good part of a probe's cost)."""
        if self._probe is None:
            self._probe = _ProbeConnection(self.config.name, yarl.URL(self.base), self._headers, self._ssl,
                                           self.timeout.total or 10.0)
        get = self._probe.get_unbounded if caller_bounds_time else self._probe.get
        status, raw = await get("/api/cluster_status")
        return self._decode(status, raw)

    async def submit(self, body: Mapping[str, Any]) -> bool:
        """Submit a job. True if created, False if a job with that submission id already
        exists there (Ray answers 500 "already exists"): both mean the job is on the cluster."""
        status, raw = await self._request("POST", "/api/jobs/", body=body)
        if status < 300:
            return True
        if b"already exists" in raw:
            return False
        raise RayRejected(status, self.error_text(raw))

    async def job(self, ray_id: str) -> Mapping[str, Any]:
        return await self._json("GET", job_path(ray_id))

    async def list_jobs(self) -> list[Mapping[str, Any]]:
        answer = await self._json("GET", "/api/jobs/")
        if isinstance(answer, dict):  # older Ray answered a mapping of id to info
            answer = [dict(v, submission_id=v.get("submission_id") or k) for k, v in answer.items()]
        if not isinstance(answer, list):
            raise RayRejected(200, "job list is not a list")
        return answer

    async def stop(self, ray_id: str) -> bool:
        answer = await self._json("POST", job_path(ray_id, "/stop"))
        return bool(answer.get("stopped")) if isinstance(answer, dict) else False

    async def logs(self, ray_id: str) -> str:
        answer = await self._json("GET", job_path(ray_id, "/logs"))
        return str(answer.get("logs", "")) if isinstance(answer, dict) else ""

    async def has_package(self, name: str) -> bool:
        """Whether the cluster holds the package `gcs://<name>` (Ray pins it for a while then)."""
        status, raw = await self._request("GET", f"/api/packages/gcs/{quote(name, safe='')}")
        if status == 404:
            return False
        if status >= 400:
            raise RayRejected(status, self.error_text(raw))
        return True

    async def put_package(self, name: str, data: bytes) -> None:
        """Upload a package as Ray's own client does, for jobs that name `gcs://<name>`."""
        status, raw = await self._request("PUT", f"/api/packages/gcs/{quote(name, safe='')}", raw=data,
                                          timeout=aiohttp.ClientTimeout(total=PACKAGE_TIMEOUT_S))
        if status >= 400:
            raise RayRejected(status, self.error_text(raw))

    async def delete(self, ray_id: str) -> bool:
        answer = await self._json("DELETE", job_path(ray_id))
        return bool(answer) if not isinstance(answer, dict) else True


class _ProbeConnection:
    """GET over one kept-alive HTTP/1.1 connection, for the probe alone.

    A thousand clusters probed every second make the probe the most frequent request by far,
    and a general client's per-request machinery then costs more than the rest of the
    probe's work together. This asks one thing the one way: a GET, no redirects, no cookies,
    the body by Content-Length or chunks. Any failure closes the connection; the next GET
    opens a new one. Errors are the module's own: `RayUnreachable` when no connection could be
    opened, `RayAmbiguous` for anything that broke after.
    """

    MAX_BODY = 64 * 1024 * 1024

    def __init__(self, name: str, base: yarl.URL, headers: Mapping[str, str], ssl: Any, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.host = base.raw_host or ""
        self.port = base.port or (443 if base.scheme == "https" else 80)
        self.ssl = (ssl if ssl is not None else True) if base.scheme == "https" else None
        self.prefix = base.raw_path.rstrip("/")
        host = base.raw_authority.rsplit("@", 1)[-1]
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, "Accept": "application/json",
                                                         **headers}.items())
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def get(self, path: str) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.get_unbounded(path)
        except TimeoutError:
            raise RayAmbiguous(f"{self.name}: TimeoutError on GET {path} after {self.timeout_s:g}s") from None

    async def get_unbounded(self, path: str) -> tuple[int, bytes]:
        """`get` without a time limit of its own: the caller's."""
        async with self._lock:
            while True:
                reused = self._conn is not None
                try:
                    return await self._get(path)
                except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ValueError) as exc:
                    self.close()
                    if reused and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                        continue  # a kept-alive connection the server had closed meanwhile: once more, afresh
                    raise RayAmbiguous(f"{self.name}: {type(exc).__name__} on GET {path}: {exc}") from None
                except BaseException:  # cancelled (a timeout) midway: the connection's state is unknown
                    self.close()
                    raise

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self._conn is None:
            try:
                self._conn = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
            except OSError as exc:
                raise RayUnreachable(f"{self.name}: cannot connect: {exc}") from None
        reader, writer = self._conn
        writer.write(f"GET {self.prefix}{path} HTTP/1.1\r\n{self.head}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP/1 status line: {status_line[:80]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunks(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= self.MAX_BODY:
                raise ValueError(f"Content-Length {length}")
            body = await reader.readexactly(length)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body, keep = await reader.read(self.MAX_BODY), False  # to the end of the connection
        if not keep:
            self.close()
        return status, body

    async def _chunks(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return bytes(body)
            if len(body) + size > self.MAX_BODY:
                raise ValueError("chunked body too large")
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None
