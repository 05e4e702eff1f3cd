"""The asyncio engine behind both flavours of the producer helper, and behind `rmcs`: the
`Client`, one broker connection (`amqp.Broker`) and one HTTP session to the daemon's API, bound to
the event loop that uses them.

Imports only aio-pika, aiohttp, orjson, pyyaml (through .config) and the standard library, so
`producers` can be installed and used without the daemon or Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import aio_pika
import aiohttp
import orjson

from .amqp import Broker, EventStream
from .config import ProducerConfig
from .packages import local_paths, pack, package_name, with_uris
from .errors import BrokerUnreachable, DaemonUnreachable, DuplicateJob, MissingExchange, StreamBroken, describe  # noqa: F401
from .job import build_job, finite  # noqa: F401  (build_job: re-exported, the one job builder)
from .schema import MAX_MESSAGE_BYTES, check_submission_id
from .state import forget_submitted, is_ours, note_submitted
from .wire import JOB_EVENTS, RAY_STATUS, STOP_KEY, STOP_TAKEN, ray_status, submit_key  # noqa: F401

log = logging.getLogger("producers")


class Client:
    """One broker connection and one HTTP session, bound to the event loop that uses them.
    `name` is the broker connection's name, the `app_id` of what it publishes and the HTTP
    User-Agent."""

    def __init__(self, config: ProducerConfig, lazy: bool = False, name: str = "rmcs-producers") -> None:
        self.config = config
        self.lazy = lazy
        self.name = name
        self.broker = Broker(config, lazy, name)
        self._session: aiohttp.ClientSession | None = None

    # ---- broker ---------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.broker.connection()

    async def connection(self) -> aio_pika.abc.AbstractConnection:
        """The broker connection (opened now if need be), for a caller that declares topology."""
        return await self.broker.connection()

    async def publish(self, exchange: str, routing_key: str, message: aio_pika.Message, what: str) -> None:
        await self.broker.publish(exchange, routing_key, message, what)

    async def subscribe(self, patterns: Sequence[str]) -> EventStream:
        """Events matching the topic `patterns`, from now on (see amqp.Broker.subscribe)."""
        return await self.broker.subscribe(patterns)

    # ---- HTTP -------------------------------------------------------------------------------

    async def http(self, method: str, path: str, body: Any = None, timeout: float | None = None,
                   params: Mapping[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        """One request to the daemon's API, with a JSON `body` or `raw` bytes: (status, the JSON
        answer, or its text when it is not JSON). DaemonUnreachable when no answer came."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s),
                headers={"Accept": "application/json", "User-Agent": self.name})
        url = self.config.http_base + path
        data = orjson.dumps(body) if body is not None else raw
        headers = {"Content-Type": "application/json" if raw is None else "application/octet-stream"} if data is not None else {}
        if self.config.api_token:
            headers["Authorization"] = f"Bearer {self.config.api_token}"
        try:
            async with self._session.request(
                    method, url, data=data, headers=headers, params=params,
                    timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise DaemonUnreachable(self.config.http_base, describe(exc, self.config.api_token or None),
                                    timed_out=isinstance(exc, asyncio.TimeoutError)) from None
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, raw.decode("utf-8", "replace")

    @staticmethod
    def _error(status: int, data: Any) -> str:
        if isinstance(data, Mapping) and "error" in data:
            return f"{status}: {data['error']}"
        return f"{status}: {str(data)[:200]}"

    async def job(self, sid: str) -> dict[str, Any] | None:
        """The daemon's JobStatus JSON, or None if the daemon does not know the job."""
        check_submission_id(sid)
        status, data = await self.http("GET", f"/api/v1/jobs/{sid}")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise RuntimeError(f"the rmcs daemon answered GET /api/v1/jobs/{sid} with {self._error(status, data)}")
        return data

    async def logs(self, sid: str) -> str | None:
        try:
            status, data = await self.http("GET", f"/api/v1/jobs/{sid}/logs")
        except DaemonUnreachable:
            return None
        if status == 200 and isinstance(data, dict) and isinstance(data.get("logs"), str):
            return data["logs"]
        log.debug("no logs for %s: %s", sid, self._error(status, data))
        return None

    # ---- the API ----------------------------------------------------------------------------

    async def submit(self, body: dict[str, Any], amqp_priority: int | None, check_duplicate: bool) -> str:
        """Publish a job built by build_job (or a body in a format the daemon translates); returns
        its submission id once the broker confirmed it."""
        return await self.submit_as(body["submission_id"], body, amqp_priority, check_duplicate)

    async def submit_as(self, sid: str, body: dict[str, Any], amqp_priority: int | None,
                        check_duplicate: bool = False) -> str:
        """Publish `body` with message_id `sid`: a contract body carries it as its submission_id,
        a body in a format the daemon translates may not (the daemon then takes the message_id)."""
        check_submission_id(sid)
        if "entrypoint" in body and isinstance(body.get("runtime_env"), Mapping):
            body = {**body, "runtime_env": await self.ship_local_code(body["runtime_env"])}
        try:
            data = orjson.dumps(body)
        except TypeError as exc:
            raise ValueError(f"the job cannot be encoded as JSON: {exc}") from None
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"the job is {len(data)} bytes as JSON, more than the limit of {MAX_MESSAGE_BYTES}")
        if check_duplicate:  # best effort: tell the caller at once, as Ray does
            with contextlib.suppress(DaemonUnreachable):
                status, _ = await self.http("GET", f"/api/v1/jobs/{sid}", timeout=min(2.0, self.config.request_timeout_s))
                if status == 200:
                    raise DuplicateJob(sid)
        message = self.broker.job_message(data, sid, amqp_priority)
        # A native body's queue picks the routing key (submit.<queue>); a seed format goes to `submit`.
        queue = body.get("queue") if "entrypoint" in body else None
        await self.publish(self.config.intake_exchange, submit_key(queue, self.config.intake_routing_key),
                           message, f"job {sid}")
        note_submitted(sid)
        return sid

    async def ship_local_code(self, runtime_env: Mapping[str, Any]) -> dict[str, Any]:
        """`runtime_env` with each local `working_dir` or `py_modules` path zipped, uploaded to
        rmcs once, and named by its package's URI (packages.py)."""
        found = local_paths(runtime_env)
        uris: dict[tuple[str, int | None], str] = {}
        excludes = runtime_env.get("excludes") or ()
        for key, index, path in found:
            data = await asyncio.to_thread(pack, path, parent=key == "py_modules", excludes=excludes)
            name = package_name(data)
            try:
                status, answer = await self.http("GET", f"/api/v1/packages/{name}")
                if status == 404:
                    status, answer = await self.http("PUT", f"/api/v1/packages/{name}", raw=data,
                                                     timeout=max(60.0, self.config.request_timeout_s))
            except DaemonUnreachable as exc:
                raise RuntimeError(f"runtime_env.{key} {path!r} is uploaded to rmcs for the cluster the job goes "
                                   f"to, and the daemon's API did not answer: {exc}") from None
            if status not in (200, 201):
                raise RuntimeError(f"the rmcs daemon refused the package of runtime_env.{key} {path!r}: "
                                   f"{self._error(status, answer)}")
            uris[(key, index)] = f"gcs://{name}"
        return with_uris(runtime_env, uris)

    async def _read(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        status, data = await self.http("GET", path, params=params)
        if status != 200 or not isinstance(data, dict):
            raise RuntimeError(f"the rmcs daemon answered GET {path} with {self._error(status, data)}")
        return data

    async def clusters(self) -> list[dict[str, Any]]:
        return list((await self._read("/api/v1/clusters")).get("clusters") or [])

    async def jobs(self, filters: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
        """Jobs as `GET /api/v1/jobs` lists them (in the order they arrived), `limit` at most."""
        params = {k: str(v) for k, v in filters.items() if v is not None}
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            page = await self._read("/api/v1/jobs", {**params, "limit": str(min(1000, limit - len(found)))})
            found.extend(page.get("jobs") or [])
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return found

    async def job_logs(self, sid: str) -> str:
        status, data = await self.http("GET", f"/api/v1/jobs/{sid}/logs")
        if status == 200 and isinstance(data, dict) and isinstance(data.get("logs"), str):
            return data["logs"]
        raise RuntimeError(f"no logs for job {sid!r}: {self._error(status, data)}")

    async def status(self, sid: str) -> str:
        job = await self.job(sid)
        if job is None:
            return "PENDING" if is_ours(sid) else "UNKNOWN"
        return ray_status(job.get("state"), job.get("final"))

    async def info(self, sid: str) -> dict[str, Any] | None:
        job = await self.job(sid)
        if job is None:
            if not is_ours(sid):
                return None
            return {"submission_id": sid, "status": "PENDING", "state": None, "cluster": None, "attempt": 0,
                    "final": False, "message": "submitted; waiting in the intake queue for the daemon",
                    "transitions": [], "logs": None}
        info = {"status": ray_status(job.get("state"), job.get("final")), **job}
        info["logs"] = await self.logs(sid) if job.get("cluster") else None
        return info

    async def stop(self, sid: str, reason: str = "stop_job() from the producer helper") -> bool:
        """True when the daemon took the request (cancelled, stopping, or recorded for a job
        still in the queue); False when the job had already ended or its cluster refused."""
        check_submission_id(sid)
        try:
            status, data = await self.http("POST", f"/api/v1/jobs/{sid}/stop", {"reason": reason})
        except DaemonUnreachable as exc:
            log.warning("%s; asking over the broker instead", exc)
            outcome = await self.stop_via_broker(sid, reason)
        else:
            outcome = data.get("outcome") if isinstance(data, dict) else None
            if outcome is None:
                raise RuntimeError(f"the rmcs daemon answered POST /api/v1/jobs/{sid}/stop with "
                                   f"{self._error(status, data)}")
        if outcome not in STOP_TAKEN:
            log.info("stop %s: %s", sid, outcome)
        return outcome in STOP_TAKEN

    async def delete(self, sid: str) -> bool:
        """Delete a job that ended (seed 004's `delete_job`): True when deleted, False when the
        daemon does not know it; RuntimeError when it may not (not ended, someone else's)."""
        check_submission_id(sid)
        status, data = await self.http("DELETE", f"/api/v1/jobs/{sid}")
        if status == 404:
            return False
        if status != 200:
            raise RuntimeError(f"job {sid!r} not deleted: {self._error(status, data)}")
        forget_submitted(sid)
        return True

    async def stop_answer(self, sid: str, reason: str, answer_timeout: float = 5.0) -> dict[str, Any] | None:
        """Publish control.stop with a reply queue; the daemon's whole answer (`submission_id`,
        `outcome`, `message`), or None when none came within `answer_timeout` (the request
        waits durably for the daemon)."""
        check_submission_id(sid)
        return await self.broker.stop_answer(sid, reason, answer_timeout)

    async def stop_via_broker(self, sid: str, reason: str, answer_timeout: float = 5.0) -> str | None:
        """As stop_answer, but only the outcome."""
        answer = await self.stop_answer(sid, reason, answer_timeout)
        if answer is None:
            log.warning("stop %s: no answer from the daemon within %gs; it acts on the request when it runs",
                        sid, answer_timeout)
            return None
        return str(answer.get("outcome"))

    async def request_stops(self, sids: Sequence[str], reason: str) -> list[str]:
        """Publish control.stop for each job (durable: the daemon acts on it even if it is down
        now); over HTTP for any the broker did not take. Returns the ids no path took."""
        async def one(sid: str) -> str | None:
            try:
                await self.publish(self.config.events_exchange, STOP_KEY, self.broker.stop_message(sid, reason),
                                   f"the stop request for {sid}")
                return None
            except RuntimeError as exc:
                log.warning("stop %s over the broker failed (%s); trying the HTTP API", sid, exc)
            try:
                status, data = await self.http("POST", f"/api/v1/jobs/{sid}/stop", {"reason": reason})
                if isinstance(data, dict) and "outcome" in data:
                    return None
            except RuntimeError as exc:
                log.error("could not stop %s: %s", sid, exc)
            return sid

        results = await asyncio.gather(*(one(s) for s in dict.fromkeys(sids)))
        return [s for s in results if s is not None]

    async def wait(self, submission_ids: Iterable[str], check_interval: float = 5,
                   timeout: float | None = None) -> bool:
        if isinstance(submission_ids, str):
            raise ValueError("submission_ids must be a list of submission ids, not one string")
        sids = list(dict.fromkeys(submission_ids))
        for sid in sids:
            check_submission_id(sid)
        if not finite(check_interval) or check_interval <= 0:
            raise ValueError("check_interval must be a positive number")
        if timeout is not None and (not finite(timeout) or timeout < 0):
            raise ValueError("timeout must be a number >= 0 or None")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        ended: dict[str, tuple[str, Any]] = {}
        pending = set(sids)
        warned = False
        while pending:
            try:
                await self._follow(pending, ended, deadline, timeout)
            except StreamBroken as exc:
                log.log(logging.DEBUG if warned else logging.WARNING,
                        "no event stream (%s); polling every %gs until it is back", exc, check_interval)
                warned = True
                await self._check(pending, ended)
                if pending:
                    self._raise_if_late(deadline, pending, ended, timeout)
                    left = math.inf if deadline is None else deadline - loop.time()
                    await asyncio.sleep(max(0.0, min(check_interval, left)))
                    self._raise_if_late(deadline, pending, ended, timeout)
        failed = [(sid, *ended[sid]) for sid in sids if ended[sid][0] != "SUCCEEDED"]
        if failed:
            detail = "; ".join(f"{sid} {state}" + (f" ({msg})" if msg else "") for sid, state, msg in failed)
            raise RuntimeError(f"{len(failed)} of {len(sids)} job(s) did not succeed: {detail}")
        return True

    @staticmethod
    def _raise_if_late(deadline: float | None, pending: set[str], ended: dict[str, tuple[str, Any]],
                       timeout: float | None) -> None:
        if deadline is None or asyncio.get_running_loop().time() < deadline:
            return
        failed = [f"{s} {st}" for s, (st, _) in ended.items() if st != "SUCCEEDED"]
        raise TimeoutError(f"{len(pending)} job(s) not finished after {timeout:g}s: {', '.join(sorted(pending))}"
                           + (f"; already failed: {', '.join(failed)}" if failed else ""))

    async def _check(self, pending: set[str], ended: dict[str, tuple[str, Any]]) -> None:
        """Look each pending job up once over HTTP; a final one is done."""
        gate = asyncio.Semaphore(16)
        errors: list[str] = []

        async def one(sid: str) -> None:
            async with gate:
                try:
                    job = await self.job(sid)
                except RuntimeError as exc:
                    errors.append(str(exc))
                    return
            if job is None:
                if not is_ours(sid):
                    log.info("job %s is unknown to the daemon (yet); waiting for its events", sid)
                return
            if job.get("final") and sid in pending:
                pending.discard(sid)
                ended[sid] = (str(job.get("state")), job.get("message"))

        await asyncio.gather(*(one(s) for s in list(pending)))
        if errors:
            log.warning("could not look up %d job(s): %s", len(errors), errors[0])

    async def _follow(self, pending: set[str], ended: dict[str, tuple[str, Any]], deadline: float | None,
                      timeout: float | None) -> None:
        """Subscribe to job.# first, then look each job up once, then take the final events as
        they come. A few safety look-ups (1, 2, 4 ... s apart, at most 60 s) cover a job that
        ended just before the binding while the daemon's status cache had not recorded it yet."""
        loop = asyncio.get_running_loop()
        try:
            stream = await self.subscribe([JOB_EVENTS])
        except MissingExchange:
            raise StreamBroken(f"exchange {self.config.events_exchange!r} does not exist (has the daemon "
                               "ever run with these names?)") from None
        except (RuntimeError, OSError) as exc:
            raise StreamBroken(str(exc)) from None
        async with stream:
            await self._check(pending, ended)
            gap = 1.0
            next_check = loop.time() + gap
            while pending:
                self._raise_if_late(deadline, pending, ended, timeout)
                until = next_check if deadline is None else min(next_check, deadline)
                try:
                    event = await stream.get(until - loop.time())
                except TimeoutError:
                    if loop.time() >= next_check:
                        await self._check(pending, ended)
                        gap = min(gap * 2, 60.0)
                        next_check = loop.time() + gap
                    continue
                sid = event.get("submission_id")
                if isinstance(sid, str) and sid in pending and event.get("final"):
                    pending.discard(sid)
                    ended[sid] = (str(event.get("state")), event.get("message"))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()
        await self.broker.close()
