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

from .settings import ClusterConfig, Secret


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
        self._limit = limit
        self._ssl = config.ssl_context()  # built once: a bad CA bundle fails at start, not per request
        self._headers = {name: value.reveal() if isinstance(value, Secret) else value
                         for name, value in config.headers.items()}
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
        if self._session is not None:
            await self._session.close()

    def _url(self, path: str) -> yarl.URL:
        """Parsed once per path (the probe and the job list ask the same ones every second)."""
        url = self._urls.get(path)
        if url is None:
            url = yarl.URL(self.base + path)
            if len(self._urls) < 64:
                self._urls[path] = url
        return url

    async def _request(self, method: str, path: str, *, body: Any = None,
                       timeout: aiohttp.ClientTimeout | None = None) -> tuple[int, bytes]:
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self.session.request(method, self._url(path), data=data, headers=headers,
                                            timeout=timeout or self.timeout) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            raise RayUnreachable(f"{self.config.name}: cannot connect: {exc}") from None
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise RayAmbiguous(f"{self.config.name}: {type(exc).__name__} on {method} {path}: {exc}") from None

    def _text(self, raw: bytes) -> str:
        """The last line of an answer, for an error message, with any header secret blanked."""
        text = _last_line(raw.decode(errors="replace"))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        status, raw = await self._request(method, path, **kw)
        if status == 404:
            raise RayNotFound(status, self._text(raw))
        if status >= 400:
            raise RayRejected(status, self._text(raw))
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RayRejected(status, f"answer is not JSON: {self._text(raw[:80])!r}") from None

    async def version(self) -> Any:
        return await self._json("GET", "/api/version")

    async def cluster_status(self) -> Any:
        return await self._json("GET", "/api/cluster_status")

    async def submit(self, body: Mapping[str, Any]) -> bool:
        """Submit a job. True if created, False if a job with that submission id already
        exists there (Ray answers 500 "already exists"): both mean the job is on the cluster."""
        status, raw = await self._request("POST", "/api/jobs/", body=body)
        if status < 300:
            return True
        if b"already exists" in raw:
            return False
        raise RayRejected(status, self._text(raw))

    async def job(self, ray_id: str) -> Mapping[str, Any]:
        return await self._json("GET", f"/api/jobs/{quote(ray_id, safe='')}")

    async def list_jobs(self) -> list[Mapping[str, Any]]:
        answer = await self._json("GET", "/api/jobs/")
        if isinstance(answer, dict):  # older Ray answered a mapping of id to info
            answer = [dict(v, submission_id=v.get("submission_id") or k) for k, v in answer.items()]
        if not isinstance(answer, list):
            raise RayRejected(200, "job list is not a list")
        return answer

    async def stop(self, ray_id: str) -> bool:
        answer = await self._json("POST", f"/api/jobs/{quote(ray_id, safe='')}/stop")
        return bool(answer.get("stopped")) if isinstance(answer, dict) else False

    async def logs(self, ray_id: str) -> str:
        answer = await self._json("GET", f"/api/jobs/{quote(ray_id, safe='')}/logs")
        return str(answer.get("logs", "")) if isinstance(answer, dict) else ""

    async def delete(self, ray_id: str) -> bool:
        answer = await self._json("DELETE", f"/api/jobs/{quote(ray_id, safe='')}")
        return bool(answer) if not isinstance(answer, dict) else True
