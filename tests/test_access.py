"""The access rules on their own: who may stop, API tokens, the exposure check, the settings
behind them, and the retry headers that only the daemon's own broker user may set."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from producers.config import ProducerConfig, broker_user
from scheduler_daemon import __main__ as entry
from scheduler_daemon import access
from scheduler_daemon.daemon import Daemon
from scheduler_daemon.intake import message_meta
from scheduler_daemon.jobs import ATTEMPT_HEADER, OWNER_HEADER
from scheduler_daemon.settings import ConfigError, Settings, load_settings

TOKEN_A = "a" * 8 + "-token-of-alice-0123"
TOKEN_B = "b" * 8 + "-token-of-bob-456789"


def tokens_file(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_owner_or_admin_may_stop() -> None:
    s = Settings(admins=("root",), default_owner="nobody")
    assert access.may_stop(access.broker_caller("alice", s), "alice")
    assert not access.may_stop(access.broker_caller("bob", s), "alice")
    assert access.may_stop(access.broker_caller("root", s), "alice")
    assert access.broker_caller(None, s) == access.Caller("nobody", False)
    assert access.may_stop(access.broker_caller(None, s), "nobody")
    assert not access.may_stop(access.broker_caller(None, s), "alice")
    assert access.may_stop(access.broker_caller("bob", s), None), "a job from before owners is anyone's"
    assert access.may_stop(access.TRUSTED_LOCAL, "alice")
    why = access.refusal(access.Caller("bob"), "alice")
    assert "'bob'" in why and "'alice'" in why and "goes on" in why


def test_admins_and_default_owner_settings(tmp_path: Path) -> None:
    s = load_settings(None, {"RMCS_ADMINS": "root, ops ,", "RMCS_DEFAULT_OWNER": "shared"})
    assert s.admins == ("root", "ops") and s.default_owner == "shared"
    path = tmp_path / "rmcs.yaml"
    path.write_text("admins: [root, ops]\napi_tokens_file: /etc/rmcs/tokens.yaml\n")
    s = load_settings(path, {})
    assert s.admins == ("root", "ops") and s.api_tokens_file == "/etc/rmcs/tokens.yaml"
    assert Settings().default_owner == "anonymous" and Settings().admins == () and Settings().api_tokens_file == ""
    for bad in ({"RMCS_DEFAULT_OWNER": ""}, {"RMCS_DEFAULT_OWNER": "a\nb"}):
        with pytest.raises(ConfigError, match="default_owner"):
            load_settings(None, bad)
    path.write_text("admins: root\n")
    assert load_settings(path, {}).admins == ("root",)
    path.write_text("admins: {root: 1}\n")
    with pytest.raises(ConfigError, match="admins"):
        load_settings(path, {})


def test_token_file(tmp_path: Path) -> None:
    assert access.load_api_tokens("") == {}
    assert access.load_api_tokens(tokens_file(tmp_path, {"alice": TOKEN_A, "bob": TOKEN_B})) == {
        TOKEN_A: "alice", TOKEN_B: "bob"}
    bad = [({"alice": "short"}, "at least 16"), ({"alice": TOKEN_A, "bob": TOKEN_A}, "same token"),
           ({"alice": 12345678901234567890}, "must be a string"), ([TOKEN_A], "map user names"),
           ({}, "map user names"), ({"": TOKEN_A}, "not a user name"), ("a: [", "not valid YAML"),
           ({"alice": "has a space in the token"}, "without spaces")]
    for data, why in bad:
        with pytest.raises(ConfigError, match=why) as err:
            access.load_api_tokens(tokens_file(tmp_path, data))
        secrets = [v for v in data.values() if isinstance(v, str)] if isinstance(data, dict) else []
        assert not any(s in str(err.value) for s in secrets), "a token in an error message"
    with pytest.raises(ConfigError, match="cannot read"):
        access.load_api_tokens(str(tmp_path / "missing.yaml"))


def test_bearer_header() -> None:
    tokens = {TOKEN_A: "alice", TOKEN_B: "bob"}
    assert access.token_user(f"Bearer {TOKEN_A}", tokens) == "alice"
    assert access.token_user(f"bearer   {TOKEN_B} ", tokens) == "bob"
    for header in (None, "", "Bearer", "Bearer ", f"Basic {TOKEN_A}", f"Bearer {TOKEN_A}x", f"Bearer {TOKEN_A[:-1]}",
                   f"Token {TOKEN_A}", "Bearer \udcff\u00e9", f"{TOKEN_A}"):
        assert access.token_user(header, tokens) is None, header
    assert access.token_user(f"Bearer {TOKEN_A}", {}) is None


def test_loopback_or_tokens() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "[::1]", "localhost"):
        access.check_exposure(Settings(http_addr=f"{host}:8600"), {})
    for host in ("0.0.0.0", "[::]", "10.1.2.3", "example.org", "localhost.example.org"):
        with pytest.raises(ConfigError, match="api_tokens_file"):
            access.check_exposure(Settings(http_addr=f"{host}:8600"), {})
        access.check_exposure(Settings(http_addr=f"{host}:8600"), {TOKEN_A: "alice"})


def test_an_exposed_api_without_tokens_never_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    s = Settings(http_addr="0.0.0.0:8600", state_dir=str(tmp_path / "state"))
    with pytest.raises(ConfigError, match="not a loopback address"):
        Daemon(s, ())
    assert not (tmp_path / "state").exists(), "nothing is opened before the check"
    Daemon(replace(s, api_tokens_file=tokens_file(tmp_path, {"alice": TOKEN_A})), ())

    clusters = tmp_path / "clusters.yaml"
    clusters.write_text("clusters: {a: {dashboard_url: 'http://127.0.0.1:1'}}\n")
    monkeypatch.setenv("RMCS_HTTP_ADDR", "0.0.0.0:8600")
    assert entry.main(["--clusters", str(clusters)]) == 2
    assert "api_tokens_file" in capsys.readouterr().err
    monkeypatch.setenv("RMCS_API_TOKENS_FILE", tokens_file(tmp_path, {"alice": "x"}))
    assert entry.main(["--clusters", str(clusters)]) == 2
    err = capsys.readouterr().err
    assert "at least 16" in err and "'x'" not in err


def _message(user_id: str | None, headers: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(user_id=user_id, headers=headers or {}, message_id="m", priority=0,
                           correlation_id=None, reply_to=None)


def test_retry_headers_count_only_from_the_daemons_user() -> None:
    retry = {ATTEMPT_HEADER: 2, OWNER_HEADER: "alice"}
    meta = message_meta(_message("rmcs-daemon", retry), "rmcs-daemon", "nobody")
    assert (meta.attempt, meta.owner) == (2, "alice")
    meta = message_meta(_message("mallory", retry), "rmcs-daemon", "nobody")
    assert (meta.attempt, meta.owner) == (1, "mallory")
    meta = message_meta(_message(None, retry), "rmcs-daemon", "nobody")
    assert (meta.attempt, meta.owner) == (1, "nobody")
    meta = message_meta(_message("rmcs-daemon", {ATTEMPT_HEADER: 3, OWNER_HEADER: b"bob"}), "rmcs-daemon", "nobody")
    assert (meta.attempt, meta.owner) == (3, "bob")
    meta = message_meta(_message("rmcs-daemon", {ATTEMPT_HEADER: 2}), "rmcs-daemon", "nobody")
    assert (meta.attempt, meta.owner) == (2, "rmcs-daemon")


def test_the_user_a_url_logs_in_as() -> None:
    assert broker_user("amqp://guest:guest@127.0.0.1:5672/") == "guest"
    assert broker_user("amqp://127.0.0.1/") == "guest"
    assert broker_user("amqps://svc%40a:pw@broker/rmcs") == "svc@a"
    assert broker_user("amqps://broker/rmcs?auth_mechanism=EXTERNAL") is None
    assert broker_user("amqps://svc-a@broker/rmcs?auth_mechanism=external") == "svc-a"
    assert ProducerConfig(amqp_url="amqp://alice:pw@h/").user == "alice"
    config = ProducerConfig(api_token=TOKEN_A)
    assert TOKEN_A not in repr(config) and TOKEN_A not in str(config)


def test_producer_helper_sends_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from producers.core import Client
    from producers.config import load_config

    config = load_config(None, {"RMCS_API_TOKEN": TOKEN_A, "RMCS_HTTP_ADDR": "127.0.0.1:1"})
    assert config.api_token == TOKEN_A
    seen: dict[str, Any] = {}

    class Session:
        closed = False

        def __init__(self, **kw: Any) -> None:
            pass

        def request(self, method: str, url: str, **kw: Any) -> Any:
            seen.update(kw["headers"])
            raise OSError("no daemon here")

        async def close(self) -> None:
            pass

    monkeypatch.setattr("producers.core.aiohttp.ClientSession", Session)

    async def call() -> str:
        client = Client(config)
        try:
            await client.http("POST", "/api/v1/jobs/x/stop", {"reason": "r"})
        except Exception as exc:
            return str(exc)
        return ""

    error = asyncio.run(call())
    assert seen["Authorization"] == f"Bearer {TOKEN_A}" and TOKEN_A not in error


async def test_stores_from_before_owners_open_and_keep_working(tmp_path: Path) -> None:
    """A status cache and a journal written by an earlier version gain the new columns; their
    jobs have no owner (anyone may stop them, as before)."""
    import sqlite3

    from scheduler_daemon.journal import Journal
    from scheduler_daemon.status.store import SqliteStatusStore

    path = tmp_path / "old.db"  # both tables in one file, as an earlier version would have left them
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, submission_id TEXT NOT NULL UNIQUE, job_id TEXT,
            state TEXT NOT NULL, rank INTEGER NOT NULL, cluster TEXT, attempt INTEGER NOT NULL, final INTEGER NOT NULL,
            message TEXT, priority INTEGER, tags TEXT NOT NULL, metadata TEXT NOT NULL, resources TEXT NOT NULL,
            created TEXT NOT NULL, updated TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
        INSERT INTO jobs (submission_id, state, rank, attempt, final, tags, metadata, resources, created, updated)
            VALUES ('old', 'RUNNING', 3, 1, 0, '[]', '{}', '{}', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
        CREATE TABLE cancellations (submission_id TEXT PRIMARY KEY, reason TEXT NOT NULL, ts REAL NOT NULL);
        INSERT INTO cancellations VALUES ('ahead', 'old stop', 0);
    """)
    old.commit()
    old.close()
    store = SqliteStatusStore(path)
    await store.open()
    try:
        status = await store.get("old")
        assert status is not None and status.owner is None and status.to_json()["owner"] is None
        await store.apply({"submission_id": "new", "state": "ACCEPTED", "owner": "alice", "ts": "2026-01-02T00:00:00Z"})
        assert (await store.get("new")).owner == "alice"  # type: ignore[union-attr]
    finally:
        await store.close()
    journal = Journal(path)
    await journal.open()
    try:
        assert (await journal.lookup("ahead")).cancellation == ("old stop", None)
        await journal.cancel("next", "mine", "alice")
        assert (await journal.lookup("next")).cancellation == ("mine", "alice")
    finally:
        await journal.close()
