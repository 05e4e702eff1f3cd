"""Transport security: amqps:// against a real RabbitMQ TLS listener (a node of the test's own,
tests/tlskit.py), https:// Ray dashboards behind a CA bundle that require Ray's bearer token,
and secrets that never show: every log line of the daemon process, every event, every
dead-letter reason, every error message and every HTTP API answer is searched for them."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aio_pika
import aiohttp
import orjson
import pytest
import yaml

from fakeray import FakeCluster, FakeServer
from producers import aio as producer
from producers.config import load_config
from producers.tls import amqp_ssl_context, client_context
from scheduler_daemon.settings import ConfigError, Secret, Settings, load_clusters, load_settings
from support import Events, delete_topology, make_settings, sid
from tlskit import Pki, TlsBroker, make_pki, server_ssl_context

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A RabbitMQ node of our own with only a TLS listener that requires a client certificate."""
    broker = TlsBroker(tmp_path_factory.mktemp("rabbit"), pki, user=f"rmcs-{uuid.uuid4().hex[:6]}",
                       password="amqp-" + secrets.token_hex(12), require_client_cert=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def tls_settings(tmp_path: Path, broker: TlsBroker, pki: Pki, **kw: Any) -> Settings:
    return make_settings(tmp_path, amqp_url=broker.url(), amqp_ca_file=str(pki.ca_file),
                         amqp_cert_file=str(pki.client_cert), amqp_key_file=str(pki.client_key), **kw)


# ---- configuration: secrets are expanded, kept redacted, and never quoted in errors ----------

def _clusters_file(tmp_path: Path, headers: dict[str, str], **extra: Any) -> Path:
    path = tmp_path / "clusters.yaml"
    path.write_text(yaml.safe_dump({"clusters": {"a": {"dashboard_url": "https://ray.example:8265",
                                                         "headers": headers, **extra}}}))
    return path


def test_header_secrets_from_environment_and_file(tmp_path: Path, pki: Pki) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-123\n")
    path = _clusters_file(tmp_path, {"Authorization": "Bearer ${RAY_TOKEN}",
                                     "X-Other": "${file:" + str(token_file) + "}"}, ca_file=str(pki.ca_file))
    (c,) = load_clusters(path, environ={"RAY_TOKEN": "env-token-456"})
    assert c.headers["Authorization"].reveal() == "Bearer env-token-456"
    assert c.headers["X-Other"].reveal() == "file-token-123"  # the trailing newline is dropped
    assert c.ca_file == str(pki.ca_file) and isinstance(c.ssl_context(), ssl.SSLContext)
    shown = repr(c) + str(c) + repr(dict(c.headers)) + str(c.headers["Authorization"])
    assert "env-token-456" not in shown and "file-token-123" not in shown and "***" in shown


@pytest.mark.parametrize(("headers", "named"), [
    ({"Authorization": "Bearer ${NOT_SET_ANYWHERE}"}, "NOT_SET_ANYWHERE"),
    ({"Authorization": "Bearer ${file:/nonexistent/rmcs/token}"}, "/nonexistent/rmcs/token"),
    ({"Authorization": "Bearer ${file:relative/token}"}, "relative/token"),
    ({"Authorization": "Bearer ${MULTILINE}"}, "line break"),
    ({"Bad Name": "x"}, "'Bad Name'"),
])
def test_header_secret_errors_name_the_source_not_the_value(tmp_path: Path, headers: dict[str, str],
                                                            named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_clusters(_clusters_file(tmp_path, headers), environ={"MULTILINE": "top-secret\nInjected: 1"})
    assert named in str(info.value) and "top-secret" not in str(info.value)


def test_ca_file_needs_https_and_must_be_readable(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"clusters": {"a": {"dashboard_url": "http://h:8265", "ca_file": str(pki.ca_file)}}}))
    with pytest.raises(ConfigError, match="https"):
        load_clusters(path, environ={})
    with pytest.raises(ConfigError, match="/nonexistent/ca.pem"):
        load_clusters(_clusters_file(tmp_path, {}, ca_file="/nonexistent/ca.pem"), environ={})


def test_broker_tls_settings(tmp_path: Path, pki: Pki) -> None:
    env = {"RMCS_AMQP_URL": "amqps://user:broker-pw-789@broker.example:5671/vh",
           "RMCS_AMQP_CA_FILE": str(pki.ca_file), "RMCS_AMQP_CERT_FILE": str(pki.client_cert),
           "RMCS_AMQP_KEY_FILE": str(pki.client_key)}
    s = load_settings(None, environ=env)
    assert isinstance(s.amqp_connect_kwargs()["ssl_context"], ssl.SSLContext)
    assert "broker-pw-789" not in repr(s) and "broker-pw-789" not in str(s)
    p = load_config(None, environ=env)
    assert p.amqp_ca_file == str(pki.ca_file) and "broker-pw-789" not in repr(p)
    with pytest.raises(ConfigError, match="amqps"):
        load_settings(None, environ={**env, "RMCS_AMQP_URL": "amqp://u:p@h/"})
    with pytest.raises(ConfigError, match="/nonexistent/ca.pem"):
        load_settings(None, environ={**env, "RMCS_AMQP_CA_FILE": "/nonexistent/ca.pem"})
    with pytest.raises(ConfigError, match="amqp_cert_file"):
        load_settings(None, environ={**env, "RMCS_AMQP_CERT_FILE": ""})
    with pytest.raises(ValueError, match="amqps"):
        load_config(None, environ={**env, "RMCS_AMQP_URL": "amqp://u:p@h/"})
    assert amqp_ssl_context("amqp://h/") is None
    with pytest.raises(ValueError, match=str(pki.server_key)):  # a key that does not match the certificate
        client_context(str(pki.ca_file), str(pki.client_cert), str(pki.server_key))


# ---- a real TLS listener ------------------------------------------------------------------

async def test_broker_refuses_unverified_and_anonymous_tls(tls_broker: TlsBroker, pki: Pki) -> None:
    # The broker's certificate does not verify against another CA.
    wrong_ca = client_context(str(pki.other_ca_file), str(pki.client_cert), str(pki.client_key))
    with pytest.raises(Exception) as info:
        await aio_pika.connect(tls_broker.url(), ssl_context=wrong_ca, timeout=10)
    assert "certificate verify failed" in str(info.value) or isinstance(info.value, ssl.SSLError)
    # The broker asks for a client certificate; a client without one is refused.
    with pytest.raises(Exception):
        conn = await aio_pika.connect(tls_broker.url(), ssl_context=client_context(str(pki.ca_file)), timeout=10)
        await conn.close()
    # With the CA bundle and the client certificate it works.
    ok = client_context(str(pki.ca_file), str(pki.client_cert), str(pki.client_key))
    conn = await aio_pika.connect(tls_broker.url(), ssl_context=ok, timeout=10)
    await conn.close()
    # The producer helper's error for a refused TLS handshake names the broker, not the password.
    await producer.shutdown_scheduler_environment()
    with pytest.raises(RuntimeError) as err:
        await producer.initialize_scheduler_environment(amqp_url=tls_broker.url(),
                                                        amqp_ca_file=str(pki.other_ca_file), connect_timeout_s=10)
    await producer.shutdown_scheduler_environment()
    assert f"127.0.0.1:{tls_broker.tls_port}" in str(err.value) and tls_broker.password not in str(err.value)


async def _daemon_api(base: str, http: aiohttp.ClientSession, path: str, method: str = "GET") -> tuple[int, bytes]:
    async with http.request(method, base + path) as resp:
        return resp.status, await resp.read()


async def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if (await _daemon_api(base, http, "/readyz"))[0] == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError(f"daemon not ready:\n{log.read_text()[-3000:]}")


@pytest.fixture
async def https_dashboards(pki: Pki) -> AsyncIterator[dict[str, Any]]:
    """Two fake Ray dashboards over https that require a bearer token (one token from the
    environment, one from a file) and one whose configured token is wrong."""
    tokens = {"env": "ray-env-" + secrets.token_hex(12), "file": "ray-file-" + secrets.token_hex(12),
              "wrong": "ray-wrong-" + secrets.token_hex(12)}
    servers = {}
    for name in ("env", "file", "wrong"):
        cluster = FakeCluster(f"tls_{name}")
        servers[name] = FakeServer([cluster], ssl_context=server_ssl_context(pki), token=tokens[name])
        await servers[name].start()
    try:
        yield {"tokens": tokens, "servers": servers}
    finally:
        await asyncio.gather(*(s.stop() for s in servers.values()), return_exceptions=True)


async def test_daemon_over_tls_with_bearer_tokens_and_no_secret_anywhere(
        tmp_path: Path, tls_broker: TlsBroker, pki: Pki, https_dashboards: dict[str, Any]) -> None:
    tokens, servers = https_dashboards["tokens"], https_dashboards["servers"]
    settings = tls_settings(tmp_path, tls_broker, pki)
    token_file = tmp_path / "ray-token"
    token_file.write_text(tokens["file"] + "\n")
    token_file.chmod(0o600)
    clusters_file = tmp_path / "clusters.yaml"
    clusters_file.write_text(yaml.safe_dump({"clusters": {
        "tls_env": {"dashboard_url": servers["env"].clusters["tls_env"].url, "ca_file": str(pki.ca_file),
                    "headers": {"Authorization": "Bearer ${RAY_TOKEN_ENV}"}, "tags": ["env"]},
        "tls_file": {"dashboard_url": servers["file"].clusters["tls_file"].url, "ca_file": str(pki.ca_file),
                     "headers": {"Authorization": "Bearer ${file:" + str(token_file) + "}"}, "tags": ["file"]},
        "tls_wrong": {"dashboard_url": servers["wrong"].clusters["tls_wrong"].url, "ca_file": str(pki.ca_file),
                      "headers": {"Authorization": "Bearer ${RAY_TOKEN_WRONG}"}, "tags": ["wrong"]},
    }}))
    wrong_token = "not-" + tokens["wrong"]
    env = {**os.environ, "RAY_TOKEN_ENV": tokens["env"], "RAY_TOKEN_WRONG": wrong_token,
           "RMCS_LOG_LEVEL": "debug", "PYTHONUNBUFFERED": "1"}
    for key, value in vars(settings).items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            env[f"RMCS_{key.upper()}"] = str(value)
    secrets_to_hide = [tokens["env"], tokens["file"], tokens["wrong"], wrong_token, tls_broker.password]

    # The dashboards really do refuse requests without the token.
    async with aiohttp.ClientSession() as http:
        async with http.get(servers["env"].clusters["tls_env"].url + "/api/version",
                            ssl=client_context(str(pki.ca_file))) as resp:
            assert resp.status == 401

    log_path = tmp_path / "daemon.log"
    base = f"http://{settings.http_addr}"
    seen: list[str] = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "scheduler_daemon", "--clusters", str(clusters_file)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await _wait_ready(base, proc, log_path)
        async with Events(settings) as ev:
            await producer.initialize_scheduler_environment(
                amqp_url=settings.amqp_url, amqp_ca_file=str(pki.ca_file), amqp_cert_file=str(pki.client_cert),
                amqp_key_file=str(pki.client_key), http_addr=settings.http_addr,
                intake_exchange=settings.intake_exchange, events_exchange=settings.events_exchange)
            try:
                ok_env = await producer.submit_job("/bin/sleep 0.2", submission_id=sid("env"), cluster_tags=["env"],
                                                   metadata={"note": "over tls"})
                ok_file = await producer.submit_job("/bin/sleep 0.2", submission_id=sid("file"),
                                                    cluster_tags=["file"])
                never = await producer.submit_job("/bin/sleep 0.2", submission_id=sid("wrong"),
                                                  cluster_tags=["wrong"], queue_timeout_s=3)
                # Refused at intake: sent raw, as a hostile producer would.
                bad = sid("bad")
                conn = await aio_pika.connect(settings.amqp_url, **settings.amqp_connect_kwargs())
                async with conn:
                    ch = await conn.channel(publisher_confirms=True)
                    ex = await ch.get_exchange(settings.intake_exchange)
                    await ex.publish(aio_pika.Message(orjson.dumps({"entrypoint": "python ../x.py",
                                                                    "submission_id": bad})),
                                     routing_key=settings.intake_routing_key)
                await ev.wait_final([ok_env, ok_file, never, bad], timeout=60)
                assert ev.states(ok_env)[-1] == "SUCCEEDED" and ev.states(ok_file)[-1] == "SUCCEEDED"
                assert ev.states(never)[-1] == "EXPIRED" and ev.states(bad)[-1] == "REJECTED"
                assert servers["env"].clusters["tls_env"].jobs and servers["file"].clusters["tls_file"].jobs
                assert not servers["wrong"].clusters["tls_wrong"].jobs and servers["wrong"].unauthorized > 0
                assert await producer.get_job_status(ok_env) == "SUCCEEDED"
                info = await producer.get_job_info(ok_env)
                seen.append(orjson.dumps(info).decode())
            finally:
                await producer.shutdown_scheduler_environment()
            # Every HTTP API answer, the error answers included.
            async with aiohttp.ClientSession() as http:
                for method, path in [
                        ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json"), ("GET", "/metrics"),
                        ("GET", "/api/v1/clusters"), ("GET", "/api/v1/jobs"), ("GET", "/api/v1/jobs?limit=abc"),
                        ("GET", f"/api/v1/jobs/{ok_env}"), ("GET", f"/api/v1/jobs/{ok_env}/logs"),
                        ("GET", f"/api/v1/jobs/{never}"), ("GET", f"/api/v1/jobs/{bad}"),
                        ("GET", "/api/v1/jobs/nope"), ("GET", "/nowhere"), ("POST", f"/api/v1/jobs/{ok_env}/stop")]:
                    status, raw = await _daemon_api(base, http, path, method)
                    assert status < 500, (path, status, raw[:300])
                    seen.append(f"{method} {path} {status} {raw.decode(errors='replace')}")
                clusters = orjson.loads((await _daemon_api(base, http, "/api/v1/clusters"))[1])
                by_name = {c["name"]: c for c in (clusters["clusters"] if isinstance(clusters, dict) else clusters)}
                assert by_name["tls_env"]["health"] == "up" and by_name["tls_wrong"]["health"] == "down"
                assert "401" in orjson.dumps(by_name["tls_wrong"]).decode()
        seen.extend(orjson.dumps(e).decode() for e in ev.items)
        # Every dead-lettered message and its reason.
        conn = await aio_pika.connect(settings.amqp_url, **settings.amqp_connect_kwargs())
        async with conn:
            ch = await conn.channel()
            dead = await ch.declare_queue(settings.dead_letter_queue, passive=True)
            while (msg := await dead.get(fail=False, no_ack=True)) is not None:
                seen.append(f"{msg.headers} {msg.body!r}")
        assert any("'..'" in s for s in seen if "x-rmcs-reason" in s)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)
        await delete_topology(settings)
    log_text = log_path.read_text(errors="replace")
    seen.extend(log_text.splitlines())
    assert proc.returncode == 0, log_text[-3000:]
    assert any("401" in line for line in seen), "the wrong token's refusal is reported somewhere"
    leaks = [(s[:200], secret) for s in seen for secret in secrets_to_hide if secret in s]
    assert not leaks, f"secrets leaked: {leaks[:5]}"
    assert len(log_text.splitlines()) > 20  # the log was captured, at debug level


def test_secret_type_keeps_values_out_of_formatting() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in f"{s} {s!r} {[s]} {({'a': s})}" and s.reveal() == "hunter2"
    assert s == "hunter2" and s == Secret("hunter2") and s != "other"



def test_dashboard_url_may_not_carry_credentials(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"clusters": {"a": {"dashboard_url": "https://u:url-pw-321@h:8265"}}}))
    with pytest.raises(ConfigError, match="headers") as info:
        load_clusters(path, environ={})
    assert "url-pw-321" not in str(info.value)


async def test_dashboard_errors_never_echo_a_header_secret(pki: Pki) -> None:
    """A dashboard (or a proxy in front of it) that echoes the request into an error answer does
    not get the token into the daemon's error messages."""
    from scheduler_daemon.rayapi import RayDashboard, RayRejected

    token = "echo-" + secrets.token_hex(12)
    cluster = FakeCluster("echo")
    server = FakeServer([cluster], ssl_context=server_ssl_context(pki), token=token)
    await server.start()
    config = cluster.config(ca_file=str(pki.ca_file), headers={"Authorization": Secret(f"Bearer {token}")})
    dashboard = RayDashboard(config, 2.0)
    try:
        assert (await dashboard.version())["ray_version"]
        cluster.garbage_body = f"<html>bad request with Authorization: Bearer {token}</html>".encode()
        cluster.mode = "garbage"
        with pytest.raises(RayRejected) as info:
            await dashboard.cluster_status()
        assert token not in str(info.value) and "***" in str(info.value)
    finally:
        await dashboard.close()
        await server.stop()


async def test_cli_and_declare_over_tls(tmp_path: Path, tls_broker: TlsBroker, pki: Pki) -> None:
    """The CLI and `rmcs-declare` reach the broker through the same TLS settings."""
    import io

    from scheduler_daemon.broker import declare
    from rmcs_cli import main as rmcs

    settings = tls_settings(tmp_path, tls_broker, pki)
    await declare(settings)  # rmcs-declare's path
    config = tmp_path / "rmcs.yaml"
    keys = ("amqp_url", "amqp_ca_file", "amqp_cert_file", "amqp_key_file", "intake_exchange", "intake_queue",
            "intake_routing_key", "dead_letter_exchange", "dead_letter_queue", "events_exchange")
    config.write_text(yaml.safe_dump({k: getattr(settings, k) for k in keys}))

    def run(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = rmcs(list(argv), stdout=out, stderr=err)
        return code, out.getvalue() + err.getvalue()

    try:
        code, text = await asyncio.to_thread(run, "declare", "--config", str(config))
        assert code == 0, text
        # Without the CA bundle the broker's certificate does not verify: a clear error, no password.
        plain = tmp_path / "plain.yaml"
        plain.write_text(yaml.safe_dump({"amqp_url": settings.amqp_url}))
        code, text = await asyncio.to_thread(run, "declare", "--config", str(plain))
        assert code != 0 and f"127.0.0.1:{tls_broker.tls_port}" in text and tls_broker.password not in text, text
    finally:
        await delete_topology(settings)
