"""The broker edge of a client: one connection, confirmed mandatory publishes that survive a
broker restart, event streams on queues of their own, and the stop request with its answer.

Every failure leaves as one of the exceptions of `errors.py` (all RuntimeErrors), never as an
aio-pika exception, so callers word them without knowing aio-pika.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from typing import Any, Sequence

import aio_pika
import aio_pika.exceptions as amqp_errors
import orjson

from .config import ProducerConfig, secret_of
from .errors import BrokerUnreachable, MissingExchange, NotConfirmed, NotRouted, StreamBroken, describe
from .tls import amqp_connect_kwargs
from .wire import STOP_KEY

log = logging.getLogger("producers")


class Broker:
    """One broker connection, opened on first use and opened again after it is lost."""

    def __init__(self, config: ProducerConfig, lazy: bool = False, name: str = "rmcs-producers") -> None:
        self.config = config
        self.lazy = lazy
        self.name = name  # the connection's name and the app_id of what it publishes
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._pub: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._lock: asyncio.Lock | None = None
        self._ever_connected = False

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
                                          client_properties={"connection_name": self.name},
                                          connection_class=_Connection, **tls_kwargs)
        except (amqp_errors.ProbableAuthenticationError, amqp_errors.AuthenticationError) as exc:
            raise BrokerUnreachable(f"{prefix}the RabbitMQ broker at {cfg.broker} refused the credentials of "
                                    "amqp_url", cfg.broker, _innermost(exc, secret_of(cfg.amqp_url)),
                                    refused=True) from None
        except (asyncio.TimeoutError, *amqp_errors.CONNECTION_EXCEPTIONS) as exc:
            reason = describe(exc, secret_of(cfg.amqp_url))
            raise BrokerUnreachable(f"{prefix}cannot reach the RabbitMQ broker at {cfg.broker}: {reason}",
                                    cfg.broker, reason) from None

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
                raise MissingExchange(name, self.config.broker) from None
            self._exchanges[name] = exchange
        return exchange

    async def publish(self, exchange: str, routing_key: str, message: aio_pika.Message, what: str) -> None:
        """Publish with mandatory routing and wait for the broker's confirm. If the connection
        breaks, publish again on a new one, for up to `broker_retry_s` while the broker is away
        (a restart); then fail with the reason. Publishing twice is harmless: the daemon drops
        duplicate submission ids, and a second stop request is answered like the first."""
        cfg = self.config
        timeout = cfg.request_timeout_s
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
                    give_up = loop.time() + cfg.broker_retry_s
                if loop.time() >= give_up:
                    raise
                await asyncio.sleep(min(2.0, 0.25 * attempt))
                continue
            except amqp_errors.PublishError:
                raise NotRouted(exchange, routing_key, cfg.broker, what) from None
            except amqp_errors.DeliveryError as exc:
                raise NotConfirmed(f"the broker at {cfg.broker} refused {what}: {describe(exc)}",
                                   describe(exc)) from None
            except asyncio.TimeoutError:
                raise NotConfirmed(f"the broker at {cfg.broker} did not confirm {what} within "
                                   f"{timeout:g}s; it may or may not have been queued", "timed out") from None
            except (amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, ConnectionError, OSError) as exc:
                self._pub = None
                if not isinstance(exc, amqp_errors.AMQPChannelError):
                    await self._drop_connection()
                if give_up is None:
                    give_up = loop.time() + cfg.broker_retry_s
                reason = describe(exc, secret_of(cfg.amqp_url))
                if attempt > 1 and loop.time() >= give_up:
                    raise BrokerUnreachable(f"lost the connection to the broker at {cfg.broker} while publishing "
                                            f"{what}, and it did not come back within broker_retry_s="
                                            f"{cfg.broker_retry_s:g}: {reason}", cfg.broker, reason) from None
                log.warning("broker connection broke while publishing %s (%s); trying again", what, reason)

    async def subscribe(self, patterns: Sequence[str]) -> "EventStream":
        """An EventStream on a queue of its own bound to the event exchange with `patterns`
        (topic patterns: job.#, job.*.gpu, cluster.#, control.#). Bound when this returns, so
        nothing published afterwards is missed. Use it as an async context manager."""
        conn = await self.connection()
        try:
            channel = await conn.channel()
        except (RuntimeError, amqp_errors.AMQPError, OSError) as exc:  # the connection closed under us
            raise StreamBroken(describe(exc)) from None
        try:
            exchange = await channel.get_exchange(self.config.events_exchange, ensure=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            for pattern in patterns:
                await queue.bind(exchange, pattern)
            stream = EventStream(conn, channel)
            await queue.consume(stream._on_message, no_ack=True)
            return stream
        except amqp_errors.ChannelNotFoundEntity:
            raise MissingExchange(self.config.events_exchange, self.config.broker) from None
        except (amqp_errors.AMQPError, OSError) as exc:
            with contextlib.suppress(Exception):
                await channel.close()
            raise StreamBroken(describe(exc)) from None

    async def stop_answer(self, sid: str, reason: str, answer_timeout: float = 5.0) -> dict[str, Any] | None:
        """Publish control.stop with a reply queue and wait up to `answer_timeout` for the
        daemon's answer (`submission_id`, `outcome`, `message`); None when none came (the
        request waits durably for the daemon)."""
        conn = await self.connection()
        channel = await conn.channel()
        try:
            replies = await channel.declare_queue(exclusive=True, auto_delete=True)
            answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            correlation = uuid.uuid4().hex

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                if message.correlation_id == correlation:
                    with contextlib.suppress(ValueError):
                        answer = orjson.loads(message.body)
                        if isinstance(answer, dict):
                            answers.put_nowait(answer)

            await replies.consume(on_reply, no_ack=True)
            await self.publish(self.config.events_exchange, STOP_KEY, self.stop_message(sid, reason, correlation,
                                                                                        replies.name),
                               f"the stop request for {sid}")
            try:
                async with asyncio.timeout(answer_timeout):
                    return await answers.get()
            except TimeoutError:
                return None
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    def stop_message(self, sid: str, reason: str, correlation: str | None = None,
                     reply_to: str | None = None) -> aio_pika.Message:
        return aio_pika.Message(orjson.dumps({"submission_id": sid, "reason": reason}), content_type="application/json",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=uuid.uuid4().hex,
                                correlation_id=correlation, reply_to=reply_to, app_id=self.name,
                                user_id=self.config.user)

    def job_message(self, body: bytes, sid: str, priority: int | None) -> aio_pika.Message:
        return aio_pika.Message(body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=sid, priority=priority, timestamp=time.time(), app_id=self.name,
                                user_id=self.config.user)

    async def close(self) -> None:
        conn, self._conn, self._pub, self._exchanges = self._conn, None, None, {}
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(Exception):
                await conn.close()


class EventStream:
    """Events from a queue of its own (exclusive, deleted when closed), as dicts in arrival order;
    each has `event` (its routing key). A body that is not JSON arrives as `{"event", "unreadable"}`.
    A lost channel or connection ends the stream with StreamBroken."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel) -> None:
        self._conn, self._channel = connection, channel
        self._inbox: asyncio.Queue[dict[str, Any] | StreamBroken] = asyncio.Queue()
        self._closing = False
        connection.close_callbacks.add(self._on_close)
        channel.close_callbacks.add(self._on_close)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            event = {"event": message.routing_key, "unreadable": message.body[:200].decode("utf-8", "replace")}
        if isinstance(event, dict):
            event.setdefault("event", message.routing_key)
            self._inbox.put_nowait(event)

    def _on_close(self, _: Any, exc: BaseException | None = None) -> None:
        if not self._closing:
            self._closing = True
            self._inbox.put_nowait(StreamBroken(_innermost(exc) if exc is not None else ""))

    async def get(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event; TimeoutError after `timeout` seconds (None: wait for ever)."""
        if timeout is None:
            item = await self._inbox.get()
        else:
            if timeout <= 0 and self._inbox.empty():
                raise TimeoutError
            async with asyncio.timeout(max(0.0, timeout)):  # not wait_for: 3.11's can swallow a cancel
                item = await self._inbox.get()
        if isinstance(item, StreamBroken):
            self._inbox.put_nowait(item)  # every later get() says so too
            raise item
        return item

    async def close(self) -> None:
        self._closing = True
        self._conn.close_callbacks.discard(self._on_close)
        if not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def _usable(conn: Any) -> bool:
    connected = getattr(conn, "connected", None)
    return conn is not None and not conn.is_closed and (connected is None or connected.is_set())


def _innermost(exc: BaseException, secret: str | None = None) -> str:
    """The plainest reason in an aiormq exception (it wraps the broker's text in its causes)."""
    text = str(exc).strip() or type(exc).__name__
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
        text = str(exc).strip() or text
    text = text.splitlines()[0][:300]
    return text.replace(secret, "***") if secret else text


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
