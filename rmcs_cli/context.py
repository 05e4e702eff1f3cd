"""What a command works with: the settings, and the producers' `Client` built from them (the one
broker connection and HTTP session of the command), with the client's errors worded as `rmcs`
errors and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import replace
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

from producers.core import Client
from producers.config import ProducerConfig
from producers.errors import BrokerUnreachable, DaemonUnreachable, MissingExchange, NotConfirmed, NotRouted, StreamBroken
from scheduler_daemon.settings import ConfigError, Settings, load_settings

from .output import JOB_FAILED, NOT_FOUND, UNREACHABLE, USAGE, CliError, Io

HTTP_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0


def producer_config(s: Settings, amqp_url: str | None = None, api: str | None = None,
                    api_token: str = "") -> ProducerConfig:
    """The producers' configuration for the daemon's settings `s` (ValueError if it is invalid)."""
    return replace(ProducerConfig(), amqp_url=amqp_url or s.amqp_url, amqp_ca_file=s.amqp_ca_file,
                   amqp_cert_file=s.amqp_cert_file, amqp_key_file=s.amqp_key_file, http_addr=api or s.http_addr,
                   intake_exchange=s.intake_exchange, intake_routing_key=s.intake_routing_key,
                   events_exchange=s.events_exchange, connect_timeout_s=CONNECT_TIMEOUT_S,
                   request_timeout_s=HTTP_TIMEOUT_S, api_token=api_token, source="rmcs").validate()


class Ctx:
    def __init__(self, args: argparse.Namespace, io: Io) -> None:
        self.args = args
        self.io = io
        try:
            self.settings: Settings = load_settings(getattr(args, "config", None))
        except ConfigError as exc:
            raise CliError(USAGE, f"configuration error: {exc}") from None
        self.amqp_url: str = getattr(args, "amqp_url", None) or self.settings.amqp_url
        if urlsplit(self.amqp_url).scheme not in ("amqp", "amqps"):
            raise CliError(USAGE, f"--amqp-url must be an amqp:// or amqps:// URL, got {self.amqp_url!r}")
        api = getattr(args, "api", None)
        if api is None:
            host, _, port = self.settings.http_addr.rpartition(":")
            host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
            api = f"http://{host}:{port}"
        elif "://" not in api:
            api = f"http://{api}"
        if urlsplit(api).scheme not in ("http", "https") or not urlsplit(api).netloc:
            raise CliError(USAGE, f"--api must be an http:// or https:// URL, got {api!r}")
        self.api = api.rstrip("/")
        try:
            # The daemon's API token, when it has api_tokens_file; from the environment only, never an argument.
            config = producer_config(self.settings, self.amqp_url, self.api, os.environ.get("RMCS_API_TOKEN", ""))
        except ValueError as exc:
            raise CliError(USAGE, f"configuration error: {exc}") from None
        self.client = Client(config, name="rmcs-cli")

    @property
    def broker_name(self) -> str:
        parts = urlsplit(self.amqp_url)
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        vhost = parts.path if parts.path not in ("", "/") else ""
        return f"{host}:{port}{vhost}"

    # ---- broker ----

    @contextlib.contextmanager
    def broker(self) -> Iterator[None]:
        """The Client's broker errors as CliErrors (exit 3, or 2 for a bad TLS configuration)."""
        try:
            yield
        except BrokerUnreachable as exc:
            raise CliError(UNREACHABLE, f"cannot reach the broker at {self.broker_name}: {exc.reason}") from None
        except MissingExchange as exc:
            raise CliError(UNREACHABLE, f"exchange {exc.exchange!r} does not exist on {self.broker_name}: "
                                        "run `rmcs declare` or start the daemon") from None
        except StreamBroken as exc:
            raise CliError(UNREACHABLE, f"lost the broker at {self.broker_name}"
                                        + (f": {exc.reason}" if exc.reason else "")) from None
        except (NotRouted, NotConfirmed) as exc:
            raise CliError(UNREACHABLE, str(exc)) from None

    async def connect(self) -> None:
        """Open the broker connection now, so that a bad address or TLS setting is named as such."""
        with self.broker():
            try:
                await self.client.connect()
            except ValueError as exc:  # the TLS files
                raise CliError(USAGE, f"configuration error: {exc}") from None

    # ---- HTTP API ----

    async def http(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                   body: Any = None, answers: tuple[int, ...] = ()) -> tuple[int, Any]:
        """One request; returns (status, JSON). Unreachable, 5xx (unless in `answers`) and
        answers that are not the rmcs API's are CliErrors; so is a 400 (bad arguments)."""
        try:
            status, data = await self.client.http(method, path, body, params=params)
        except DaemonUnreachable as exc:
            if exc.timed_out:
                raise CliError(UNREACHABLE, f"the daemon's API at {self.api} did not answer within "
                                            f"{HTTP_TIMEOUT_S:.0f}s") from None
            raise CliError(UNREACHABLE, f"cannot reach the daemon's API at {self.api}: {exc.reason}") from None
        text = data if isinstance(data, str) else ""  # not JSON
        if isinstance(data, str):
            data = None
        if status >= 500 and not (status in answers and isinstance(data, dict)):
            raise CliError(UNREACHABLE, f"the daemon's API failed: {method} {path}: HTTP {status}: "
                                        f"{_error_text(data, text)}")
        if (data is None or (status >= 400 and not isinstance(data, dict))
                or (status in (404, 405) and str(data.get("error", "")).startswith(("no such endpoint", "method ")))):
            raise CliError(UNREACHABLE, f"{self.api} does not serve {method} {path} as an rmcs API "
                                        f"(HTTP {status}: {_error_text(data, text)}); is it an rmcs daemon of this version?")
        if status == 400:
            raise CliError(USAGE, f"the API refused the request: {_error_text(data, text)}")
        return status, data

    async def job(self, sid: str) -> dict[str, Any]:
        status, data = await self.http("GET", f"/api/v1/jobs/{quote(sid, safe='')}")
        if status == 404:
            raise CliError(NOT_FOUND, f"unknown job {sid!r}: {data.get('error') or 'not found'}")
        if status != 200:
            raise CliError(JOB_FAILED, f"job {sid!r}: HTTP {status}: {data.get('error', data)}")
        return dict(data)

    async def close(self) -> None:
        await self.client.close()


def _error_text(data: Any, text: str) -> str:
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return text[:200].strip() or "empty answer"
