"""The asyncio engine behind both flavours of the producer helper.

Imports only aio-pika, aiohttp, orjson, pyyaml (through .config) and the standard library, so
`producers` can be installed and used without the daemon or Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import aio_pika
import aio_pika.exceptions as amqp_errors
import aiohttp
import orjson

from .config import ProducerConfig, load_config, secret_of
from .tls import amqp_connect_kwargs
from .schema import (MAX_ENTRYPOINT, MAX_MESSAGE_BYTES, PRIORITY_NAMES, SUBMISSION_ID, SUBMISSION_ID_RULE,  # noqa: F401
                     check_entrypoint, check_metadata, check_resources, check_strings)

log = logging.getLogger("producers")

# ---- rmcs state -> Ray job status -----------------------------------------------------------

RAY_STATUS = {
    "ACCEPTED": "PENDING", "DISPATCHED": "PENDING", "RETRYING": "PENDING",
    "RUNNING": "RUNNING",
    "SUCCEEDED": "SUCCEEDED",
    "FAILED": "FAILED", "LOST": "FAILED", "REJECTED": "FAILED", "EXPIRED": "FAILED",
    "STOPPED": "STOPPED", "CANCELLED": "STOPPED",
}


def ray_status(state: Any, final: Any = None) -> str:
    """Ray-style status of an rmcs state. FAILED or LOST with `final` false means a retry
    follows (max_retries), so the job is still PENDING as far as the caller is concerned."""
    if not isinstance(state, str):
        return "UNKNOWN"
    state = state.upper()
    if state in ("FAILED", "LOST") and final is False:
        return "PENDING"
    return RAY_STATUS.get(state, "UNKNOWN")


# ---- job validation (a small copy of the daemon's rules; the daemon checks again) -----------

def check_submission_id(sid: Any) -> str:
    if not isinstance(sid, str) or not SUBMISSION_ID.fullmatch(sid) or sid in (".", ".."):
        raise ValueError(f"submission id must be {SUBMISSION_ID_RULE}, got {sid!r}")
    return sid


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_job(entrypoint: Any, runtime_env: Any = None, job_id: Any = None, metadata: Any = None,
              submission_id: Any = None, preferred_cluster: Any = None, resource_requirements: Any = None,
              tags: Any = None, *, priority: Any = None, max_retries: Any = None, cluster_tags: Any = None,
              queue_timeout_s: Any = None) -> tuple[dict[str, Any], int | None]:
    """The contract's job body and the AMQP priority. ValueError for anything invalid."""
    check_entrypoint(entrypoint)
    sid = check_submission_id(submission_id) if submission_id is not None else f"sub_{uuid.uuid4().hex}"
    body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": sid}
    if job_id is not None:
        if not isinstance(job_id, str) or not 0 < len(job_id) <= 256:
            raise ValueError("job_id must be a string of 1 to 256 characters")
        body["job_id"] = job_id
    if runtime_env is not None:
        if not isinstance(runtime_env, Mapping):
            raise ValueError("runtime_env must be a mapping")
        body["runtime_env"] = dict(runtime_env)
    if metadata is not None:
        body["metadata"] = check_metadata(metadata)
    if preferred_cluster is not None:
        if not isinstance(preferred_cluster, str) or not preferred_cluster:
            raise ValueError("preferred_cluster must be a cluster name")
        body["preferred_cluster"] = preferred_cluster
    if resource_requirements is not None:
        check_resources(resource_requirements)
        body["resource_requirements"] = dict(resource_requirements)
    if tags is not None:
        body["tags"] = check_strings(tags, "tags")
    if cluster_tags is not None:
        body["cluster_tags"] = check_strings(cluster_tags, "cluster_tags")
    amqp_priority = None
    if priority is not None:
        if isinstance(priority, str) and priority.upper() in PRIORITY_NAMES:
            body["priority"], amqp_priority = priority.upper(), PRIORITY_NAMES[priority.upper()]
        elif isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority <= 9:
            body["priority"] = amqp_priority = priority
        else:
            raise ValueError(f"priority must be an integer 0..9 or HIGH, NORMAL or LOW, got {priority!r}")
    if max_retries is not None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 100:
            raise ValueError("max_retries must be an integer from 0 to 100")
        body["max_retries"] = max_retries
    if queue_timeout_s is not None:
        if not _number(queue_timeout_s) or queue_timeout_s <= 0:
            raise ValueError("queue_timeout_s must be a finite number > 0")
        body["queue_timeout_s"] = queue_timeout_s
    return body, amqp_priority


# ---- process-wide state: configuration, own submissions, interrupt tracking ----------------

_state_lock = threading.Lock()
_config: ProducerConfig | None = None
_lazy = False
_OURS: "OrderedDict[str, None]" = OrderedDict()   # submitted by this process, newest last
_OURS_MAX = 100_000
# One list per active call of a function decorated with graceful_shutdown_on_keyboard_interrupt
# (outermost first); a submission is added to each of them.
TRACK: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar("rmcs_producers_track", default=())


def set_config(config: ProducerConfig | None, lazy: bool = False) -> None:
    global _config, _lazy
    with _state_lock:
        _config, _lazy = config, lazy


def config_for_use() -> tuple[ProducerConfig, bool]:
    """The configuration; lazily from the environment (or the defaults) when nobody called
    initialize_scheduler_environment. Returns (config, loaded_lazily)."""
    global _config, _lazy
    with _state_lock:
        if _config is None:
            try:
                _config, _lazy = load_config(None), True
            except Exception as exc:
                raise RuntimeError("the scheduler environment is not initialised and lazy initialisation "
                                   f"from RMCS_AMQP_URL / RMCS_HTTP_ADDR failed: {exc}; call "
                                   "initialize_scheduler_environment(config_file_path=...)") from None
        return _config, _lazy


def note_submitted(sid: str) -> None:
    with _state_lock:
        _OURS[sid] = None
        _OURS.move_to_end(sid)
        while len(_OURS) > _OURS_MAX:
            _OURS.popitem(last=False)


def track(sid: str) -> None:
    """Remember `sid` for every active decorated call of this context (before publishing, so
    an interrupt during the publish still stops it)."""
    for tracked in TRACK.get():
        tracked.append(sid)


def untrack(sid: str) -> None:
    for tracked in TRACK.get():
        with contextlib.suppress(ValueError):
            tracked.remove(sid)


def is_ours(sid: str) -> bool:
    with _state_lock:
        return sid in _OURS


# ---- errors ------------------------------------------------------------------------------------

class DaemonUnreachable(RuntimeError):
    """The daemon's HTTP API did not answer."""


def describe(exc: BaseException, secret: str | None = None) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        text = "timed out"
    if secret:
        text = text.replace(secret, "***")
    return text


_STOP_OK = ("cancelled", "stopping", "recorded")


class BrokerUnreachable(RuntimeError):
    """No connection to the broker could be made; the message says where and why."""


class Client:
    """One broker connection and one HTTP session, bound to the event loop that uses them."""

    def __init__(self, config: ProducerConfig, lazy: bool = False) -> None:
        self.config = config
        self.lazy = lazy
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._pub: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._session: aiohttp.ClientSession | None = None
        self._lock: asyncio.Lock | None = None
        self._ever_connected = False

    # ---- broker ---------------------------------------------------------------------------

    async def connection(self) -> aio_pika.abc.AbstractConnection:
        if _usable(self._conn):
            return self._conn  # type: ignore[return-value]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not _usable(self._conn):
                old, self._conn, self._pub, self._exchanges = self._conn, None, None, {}
                if old is not None:  # lost: drop it and connect again
                    with contextlib.suppress(Exception):
                        await old.close()
                self._conn = await self._connect()
                self._ever_connected = True
        return self._conn  # type: ignore[return-value]

    async def _connect(self) -> aio_pika.abc.AbstractConnection:
        cfg = self.config
        prefix = ("the scheduler environment is not initialised and lazy initialisation failed: "
                  if self.lazy and not self._ever_connected else "")
        tls_kwargs = amqp_connect_kwargs(cfg.amqp_url, cfg.amqp_ca_file, cfg.amqp_cert_file, cfg.amqp_key_file)
        try:
            return await aio_pika.connect(cfg.amqp_url, timeout=cfg.connect_timeout_s,
                                          client_properties={"connection_name": "rmcs-producers"},
                                          connection_class=_Connection, **tls_kwargs)
        except (amqp_errors.ProbableAuthenticationError, amqp_errors.AuthenticationError):
            raise RuntimeError(f"{prefix}the RabbitMQ broker at {cfg.broker} refused the credentials of "
                               "amqp_url") from None
        except (asyncio.TimeoutError, *amqp_errors.CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnreachable(f"{prefix}cannot reach the RabbitMQ broker at {cfg.broker}: "
                                    f"{describe(exc, secret_of(cfg.amqp_url))}") from None

    async def connect(self) -> None:
        await self.connection()

    async def _drop_connection(self) -> None:
        conn, self._conn, self._pub, self._exchanges = self._conn, None, None, {}
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        conn = await self.connection()
        if self._pub is None or self._pub.is_closed:
            try:
                self._pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
            except RuntimeError as exc:  # aio-pika: "<Connection ...> closed"
                raise amqp_errors.ConnectionClosed(describe(exc)) from None
            self._exchanges = {}
        exchange = self._exchanges.get(name)
        if exchange is None:
            try:
                exchange = await self._pub.get_exchange(name, ensure=True)
            except amqp_errors.ChannelNotFoundEntity:
                self._pub = None
                raise RuntimeError(f"exchange {name!r} does not exist on the broker at {self.config.broker}: "
                                   "start the rmcs daemon once, or run `rmcs-declare`, with the same names") from None
            self._exchanges[name] = exchange
        return exchange

    async def publish(self, exchange: str, routing_key: str, message: aio_pika.Message, what: str) -> None:
        """Publish with mandatory routing and wait for the broker's confirm. If the connection
        breaks, publish again on a new one, for up to `broker_retry_s` while the broker is away
        (a restart); then fail with the reason. Publishing twice is harmless: the daemon drops
        duplicate submission ids."""
        timeout = self.config.request_timeout_s
        loop = asyncio.get_running_loop()
        give_up: float | None = None
        for attempt in itertools.count(1):
            try:
                ex = await self._exchange(exchange)
                await ex.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout)
                return
            except BrokerUnreachable:
                if not self._ever_connected:  # never connected: a configuration problem, most likely
                    raise
                if give_up is None:
                    give_up = loop.time() + self.config.broker_retry_s
                if loop.time() >= give_up:
                    raise
                await asyncio.sleep(min(2.0, 0.25 * attempt))
                continue
            except amqp_errors.PublishError:
                raise RuntimeError(f"no queue is bound to exchange {exchange!r} with key {routing_key!r} on "
                                   f"{self.config.broker}, so {what} was dropped: start the rmcs daemon once, "
                                   "or run `rmcs-declare`, with the same names") from None
            except amqp_errors.DeliveryError as exc:
                raise RuntimeError(f"the broker at {self.config.broker} refused {what}: {describe(exc)}") from None
            except asyncio.TimeoutError:
                raise RuntimeError(f"the broker at {self.config.broker} did not confirm {what} within "
                                   f"{timeout:g}s; it may or may not have been queued") from None
            except (amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, ConnectionError, OSError) as exc:
                self._pub = None
                if not isinstance(exc, amqp_errors.AMQPChannelError):
                    await self._drop_connection()
                if give_up is None:
                    give_up = loop.time() + self.config.broker_retry_s
                if attempt > 1 and loop.time() >= give_up:
                    raise RuntimeError(f"lost the connection to the broker at {self.config.broker} while "
                                       f"publishing {what}, and it did not come back within broker_retry_s="
                                       f"{self.config.broker_retry_s:g}: "
                                       f"{describe(exc, secret_of(self.config.amqp_url))}") from None
                log.warning("broker connection broke while publishing %s (%s); trying again", what, describe(exc))

    # ---- HTTP -------------------------------------------------------------------------------

    async def http(self, method: str, path: str, body: Any = None,
                   timeout: float | None = None) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s),
                headers={"Accept": "application/json", "User-Agent": "rmcs-producers"})
        url = self.config.http_base + path
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.config.api_token:
            headers["Authorization"] = f"Bearer {self.config.api_token}"
        try:
            async with self._session.request(
                    method, url, data=data, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise DaemonUnreachable(f"cannot reach the rmcs daemon's HTTP API at {self.config.http_base}: "
                                    f"{describe(exc, self.config.api_token or None)}") from None
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
        """Publish a job built by build_job; returns its submission id once the broker confirmed it."""
        sid = body["submission_id"]
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
                    raise RuntimeError(f"a job with submission id {sid!r} already exists")
        message = aio_pika.Message(
            data, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=sid, priority=amqp_priority, timestamp=time.time(), app_id="rmcs-producers",
            user_id=self.config.user)
        await self.publish(self.config.intake_exchange, self.config.intake_routing_key, message, f"job {sid}")
        note_submitted(sid)
        return sid

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
        if outcome not in _STOP_OK:
            log.info("stop %s: %s", sid, outcome)
        return outcome in _STOP_OK

    async def stop_via_broker(self, sid: str, reason: str, answer_timeout: float = 5.0) -> str | None:
        """Publish control.stop with a reply queue and wait a little for the daemon's answer;
        None when none came (the request waits durably for the daemon)."""
        conn = await self.connection()
        channel = await conn.channel()
        try:
            replies = await channel.declare_queue(exclusive=True, auto_delete=True)
            answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            correlation = uuid.uuid4().hex

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                if message.correlation_id == correlation:
                    with contextlib.suppress(ValueError):
                        answers.put_nowait(orjson.loads(message.body))

            await replies.consume(on_reply, no_ack=True)
            await self.publish(self.config.events_exchange, "control.stop",
                               _stop_message(sid, reason, self.config.user, correlation, replies.name),
                               f"the stop request for {sid}")
            try:
                async with asyncio.timeout(answer_timeout):
                    answer = await answers.get()
            except TimeoutError:
                log.warning("stop %s: no answer from the daemon within %gs; it acts on the request when it runs",
                            sid, answer_timeout)
                return None
            return str(answer.get("outcome"))
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def request_stops(self, sids: Sequence[str], reason: str) -> list[str]:
        """Publish control.stop for each job (durable: the daemon acts on it even if it is down
        now); over HTTP for any the broker did not take. Returns the ids no path took."""
        async def one(sid: str) -> str | None:
            try:
                await self.publish(self.config.events_exchange, "control.stop",
                                   _stop_message(sid, reason, self.config.user), f"the stop request for {sid}")
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
        if not _number(check_interval) or check_interval <= 0:
            raise ValueError("check_interval must be a positive number")
        if timeout is not None and (not _number(timeout) or timeout < 0):
            raise ValueError("timeout must be a number >= 0 or None")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        ended: dict[str, tuple[str, Any]] = {}
        pending = set(sids)
        warned = False
        while pending:
            try:
                await self._follow(pending, ended, deadline, timeout)
            except _StreamBroken as exc:
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
        """Bind an exclusive queue to job.# first, then look each job up once, then take the
        final events as they come. A few safety look-ups (1, 2, 4 ... s apart, at most 60 s)
        cover a job that ended just before the binding while the daemon's status cache had not
        recorded it yet."""
        loop = asyncio.get_running_loop()
        try:
            conn = await self.connection()
            channel = await conn.channel()
        except (RuntimeError, amqp_errors.AMQPError, OSError) as exc:
            raise _StreamBroken(str(exc)) from None
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        try:
            try:
                events = await channel.get_exchange(self.config.events_exchange, ensure=True)
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                await queue.bind(events, "job.#")
                channel.close_callbacks.add(lambda *_: inbox.put_nowait(None))

                async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                    inbox.put_nowait(message.body)

                await queue.consume(on_event, no_ack=True)
            except amqp_errors.ChannelNotFoundEntity:
                raise _StreamBroken(f"exchange {self.config.events_exchange!r} does not exist (has the daemon "
                                    "ever run with these names?)") from None
            except (amqp_errors.AMQPError, OSError) as exc:
                raise _StreamBroken(describe(exc)) from None
            await self._check(pending, ended)
            gap = 1.0
            next_check = loop.time() + gap
            while pending:
                now = loop.time()
                self._raise_if_late(deadline, pending, ended, timeout)
                until = next_check if deadline is None else min(next_check, deadline)
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                    async with asyncio.timeout(max(0.0, until - now)):
                        body = await inbox.get()
                except TimeoutError:
                    if loop.time() >= next_check:
                        await self._check(pending, ended)
                        gap = min(gap * 2, 60.0)
                        next_check = loop.time() + gap
                    continue
                if body is None:
                    raise _StreamBroken("the channel closed")
                try:
                    event = orjson.loads(body)
                except orjson.JSONDecodeError:
                    continue
                sid = event.get("submission_id") if isinstance(event, dict) else None
                if sid in pending and event.get("final"):
                    pending.discard(sid)
                    ended[sid] = (str(event.get("state")), event.get("message"))
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(Exception):
                await conn.close()


def _usable(conn: Any) -> bool:
    connected = getattr(conn, "connected", None)
    return conn is not None and not conn.is_closed and (connected is None or connected.is_set())


class _StreamBroken(Exception):
    pass


class _Connection(aio_pika.Connection):
    """A connection that marks itself closed when connecting fails, so that its __del__ does not
    leave an un-awaited close() coroutine behind (a RuntimeWarning at garbage collection)."""

    async def connect(self, timeout: Any = None) -> None:
        try:
            await super().connect(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise


def _stop_message(sid: str, reason: str, user: str | None, correlation: str | None = None,
                  reply_to: str | None = None) -> aio_pika.Message:
    return aio_pika.Message(orjson.dumps({"submission_id": sid, "reason": reason}), content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=uuid.uuid4().hex,
                            correlation_id=correlation, reply_to=reply_to, app_id="rmcs-producers", user_id=user)
