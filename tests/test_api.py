"""The HTTP API against a daemon on fake Ray dashboards and the real RabbitMQ.

Every answer any test gets goes through `Api.call`, which checks it against the OpenAPI
document the daemon serves: the status is documented for the operation, the content type
matches and a JSON body validates against the documented schema."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import re
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from fakeray import GIB, FakeCluster, FakeServer
from producers.packages import package_name
from scheduler_daemon.status import openapi
from scheduler_daemon.daemon import Daemon
from support import make_settings, publish, publish_many, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

DOC_URI = "urn:rmcs:openapi"
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_time(value: object) -> bool:
    return not isinstance(value, str) or datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


class Api:
    """A client that validates every answer against the OpenAPI document."""

    def __init__(self, base: str, session: aiohttp.ClientSession, doc: dict[str, Any]) -> None:
        self.base = base
        self.session = session
        self.doc = doc
        self.registry = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(doc))
        self.templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in doc["paths"]]
        self.seen: set[tuple[str, str, int]] = set()

    def validate(self, instance: Any, pointer: str) -> None:
        validator = Draft202012Validator({"$ref": DOC_URI + pointer}, registry=self.registry,
                                         format_checker=FORMATS)
        errors = sorted(validator.iter_errors(instance), key=str)
        assert not errors, f"answer does not match {pointer}: {errors[0]}\n{instance}"

    def template(self, path: str) -> str | None:
        return next((t for rx, t in self.templates if rx.match(path)), None)

    async def call(self, method: str, path: str, *, params: Any = None, body: bytes | None = None,
                   expect: int | None = None) -> Any:
        async with self.session.request(method, self.base + path, params=params, data=body) as r:
            raw = await r.read()
            status, ctype = r.status, r.content_type
        template = self.template(path)
        op = self.doc["paths"].get(template or "", {}).get(method.lower())
        if op is None:  # an unknown route or method: still a JSON error
            assert ctype == "application/json", (path, ctype)
            data = orjson.loads(raw)
            self.validate(data, _pointer("components", "schemas", "Error"))
        else:
            assert str(status) in op["responses"], f"{method} {path}: undocumented status {status}: {raw[:300]!r}"
            content = op["responses"][str(status)]["content"]
            assert ctype in content, f"{method} {path} {status}: content type {ctype} not in {list(content)}"
            if ctype == "application/json":
                data = orjson.loads(raw)
                self.validate(data, _pointer("paths", template or "", method.lower(), "responses", str(status),
                                             "content", ctype, "schema"))
            else:
                data = raw.decode()
            self.seen.add((template or "", method.upper(), status))
        if expect is not None:
            assert status == expect, f"{method} {path} {params}: {status} {raw[:500]!r}"
        return data if expect is not None else (status, data)

    async def get(self, path: str, expect: int | None = 200, **params: Any) -> Any:
        return await self.call("GET", path, params=params or None, expect=expect)


@dataclass
class Env:
    daemon: Daemon
    api: Api
    big: FakeCluster
    solo: FakeCluster
    tag: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:8]}")

    async def submit(self, where: str, entrypoint: str = "/bin/true", *, tags: tuple[str, ...] = (),
                     name: str = "j") -> str:
        job = sid(name)
        await publish(self.daemon.settings, {"submission_id": job, "entrypoint": entrypoint,
                                             "cluster_tags": [where], "tags": [self.tag, *tags]})
        return job

    async def job(self, job: str) -> dict[str, Any]:
        return await self.api.get(f"/api/v1/jobs/{job}")  # type: ignore[no-any-return]

    async def wait_state(self, job: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
        last: Any = None

        async def seen() -> bool:
            nonlocal last
            status, last = await self.api.get(f"/api/v1/jobs/{job}", expect=None)
            return status == 200 and last["state"] == state

        await until(seen, timeout, lambda: f"{job} in {state}; last {last}")
        return last  # type: ignore[no-any-return]


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok = check()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what()}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def serving(*clusters: FakeCluster) -> AsyncIterator[None]:
    servers = [FakeServer([c]) for c in clusters]
    try:
        for server in servers:
            await server.start()
        yield
    finally:
        for server in servers:
            await server.stop()


@contextlib.asynccontextmanager
async def api_for(daemon: Daemon) -> AsyncIterator[Api]:
    base = f"http://{daemon.settings.http_addr}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(base + "/openapi.json") as r:
            assert r.status == 200
            doc = await r.json()
        api = Api(base, session, doc)
        await until(lambda: _ready(api), 15, lambda: "readyz 200")
        yield api


async def _ready(api: Api) -> bool:
    status, _ = await api.get("/readyz", expect=None)
    return bool(status == 200)


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    big = FakeCluster("big", nodes={"b1": {"CPU": 64, "memory": 64 * GIB}}, duration_s=0.2)
    solo = FakeCluster("solo", nodes={"s1": {"CPU": 1, "memory": 8 * GIB}}, duration_s=0.2)
    s = make_settings(tmp_path_factory.mktemp("api"), window_size=8, max_package_bytes=1024)
    async with serving(big, solo):
        configs = (big.config(tags=frozenset({"big"})), solo.config(tags=frozenset({"solo"})))
        async with running_daemon(s, configs) as daemon, api_for(daemon) as api:
            yield Env(daemon, api, big, solo)


class Sse:
    """A server-sent-events reader: (event name, data) pairs and comments, from raw chunks."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.buffer = b""
        self.comments: list[str] = []

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]] | None:
        """The next event, or None at the end of the stream."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.buffer:
                block, self.buffer = self.buffer.split(b"\n\n", 1)
                name, data = "message", None
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                    elif line.startswith("event: "):
                        name = line[len("event: "):]
                    elif line.startswith("data: "):
                        data = orjson.loads(line[len("data: "):])
                if data is not None:
                    return name, data
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event within {timeout}s; comments {self.comments[-3:]}")
            chunk = await asyncio.wait_for(self.response.content.readany(), left)
            if not chunk:
                return None
            self.buffer += chunk

    async def until_comment(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in c for c in self.comments):
            left = deadline - time.monotonic()
            assert left > 0, f"no comment {text!r}: {self.comments}"
            chunk = await asyncio.wait_for(self.response.content.readany(), left)
            assert chunk, "stream ended"
            self.buffer += chunk
            while b"\n\n" in self.buffer and not any(text in c for c in self.comments):
                block, self.buffer = self.buffer.split(b"\n\n", 1)
                self.comments += [ln[1:].strip() for ln in block.decode().split("\n") if ln.startswith(":")]


@contextlib.asynccontextmanager
async def event_stream(api: Api, pattern: str | None = None) -> AsyncIterator[Sse]:
    params = {"pattern": pattern} if pattern is not None else None
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with api.session.get(api.base + "/api/v1/events", params=params, timeout=timeout) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "text/event-stream"
        api.seen.add(("/api/v1/events", "GET", 200))
        stream = Sse(r)
        await stream.until_comment("subscribed")
        yield stream


def _validate_event(api: Api, data: dict[str, Any]) -> None:
    kind = {"job": "JobEvent", "cluster": "ClusterEvent", "dropped": "DroppedEvent"}[data["event"].split(".")[0]]
    api.validate(data, _pointer("components", "schemas", kind))


# ---- health, clusters, the document ----------------------------------------------------------


async def test_health_readiness_clusters_and_document(env: Env) -> None:
    api = env.api
    assert await api.get("/healthz") == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready == {"ready": True, "role": "leader", "broker": True, "scheduler": True, "clusters_probed": True,
                     "stopping": False}
    clusters = {c["name"]: c for c in (await api.get("/api/v1/clusters"))["clusters"]}
    assert set(clusters) == {"big", "solo"}
    assert clusters["solo"]["total"]["CPU"] == 1 and clusters["solo"]["tags"] == ["solo"]
    assert clusters["big"]["nodes"][0]["node_id"] == "b1" and clusters["big"]["health"] in ("up", "unknown")
    doc = await api.get("/openapi.json")
    assert doc["openapi"] == "3.1.0"
    assert doc == {**openapi.document(env.daemon.settings.max_log_bytes), "servers": [{"url": api.base}]}
    assert set(doc["paths"]) == {"/healthz", "/readyz", "/api/v1/jobs", "/api/v1/jobs/{submission_id}",
                                 "/api/v1/jobs/{submission_id}/logs", "/api/v1/jobs/{submission_id}/stop",
                                 "/api/v1/clusters", "/api/v1/queues", "/api/v1/packages/{name}", "/api/v1/events",
                                 "/metrics", "/openapi.json"}
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "500" in op["responses"], (path, method)
            for answer in op["responses"].values():
                for media in answer["content"].values():
                    Draft202012Validator.check_schema(media["schema"])
            names = re.findall(r"\{([^}]+)\}", path)
            assert [p["name"] for p in op.get("parameters", []) if p["in"] == "path"] == names


async def test_unknown_routes_and_methods_are_json(env: Env) -> None:
    api = env.api
    status, body = await api.call("GET", "/nowhere")
    assert status == 404 and "/nowhere" in body["error"]
    status, body = await api.call("GET", "/api/v1/jobs/x/y/z")
    assert status == 404
    status, body = await api.call("DELETE", "/api/v1/clusters")
    assert status == 405 and "DELETE" in body["error"]
    status, body = await api.call("GET", "/api/v1/jobs/abc/stop")
    assert status == 405


# ---- jobs ------------------------------------------------------------------------------------


async def test_running_job_status_logs_and_stop(env: Env) -> None:
    api = env.api
    job = await env.submit("big", "/bin/sleep 30", name="run")
    status = await env.wait_state(job, "RUNNING")
    assert status["cluster"] == "big" and status["attempt"] == 1 and not status["final"]
    assert [t["state"] for t in status["transitions"]] == ["ACCEPTED", "DISPATCHED", "RUNNING"]
    assert status["tags"] == [env.tag] and status["resource_requirements"] == {"CPU": 1.0}
    logs = await api.get(f"/api/v1/jobs/{job}/logs")
    assert logs == {"submission_id": job, "cluster": "big", "logs": "fake ray big: running /bin/sleep 30\n",
                    "truncated": False}

    answer = await api.call("POST", f"/api/v1/jobs/{job}/stop", body=b'{"reason": "enough"}', expect=202)
    assert answer["outcome"] == "stopping" and answer["submission_id"] == job and answer["message"]
    stopped = await env.wait_state(job, "STOPPED")
    assert stopped["final"] and [t["state"] for t in stopped["transitions"]][-1] == "STOPPED"
    assert all(t["ts"] for t in stopped["transitions"])
    again = await api.call("POST", f"/api/v1/jobs/{job}/stop", expect=409)
    assert again["outcome"] == "already_final" and "STOPPED" in again["message"]


async def test_held_job_is_cancelled_and_cluster_failures_are_502(env: Env) -> None:
    api = env.api
    long = await env.submit("solo", "/bin/sleep 60", name="long")
    await env.wait_state(long, "RUNNING")
    held = await env.submit("solo", "/bin/true", name="held")
    await env.wait_state(held, "ACCEPTED")
    assert held in env.daemon.window
    status, body = await api.call("GET", f"/api/v1/jobs/{held}/logs")
    assert status == 409 and "not been dispatched" in body["error"]

    answer = await api.call("POST", f"/api/v1/jobs/{held}/stop", expect=202)
    assert answer["outcome"] == "cancelled"
    cancelled = await env.wait_state(held, "CANCELLED")
    assert cancelled["final"] and cancelled["cluster"] is None
    assert held not in env.daemon.window and held not in env.solo.jobs

    env.solo.mode = "error500"
    try:
        status, body = await api.call("GET", f"/api/v1/jobs/{long}/logs")
        assert status == 502 and "solo" in body["error"]
        status, body = await api.call("POST", f"/api/v1/jobs/{long}/stop")
        assert status == 502 and body["outcome"] == "failed" and "solo" in body["message"]
    finally:
        env.solo.mode = "ok"
    answer = await api.call("POST", f"/api/v1/jobs/{long}/stop", expect=202)
    assert answer["outcome"] == "stopping"
    await env.wait_state(long, "STOPPED")

    never = sid("never")
    answer = await api.call("POST", f"/api/v1/jobs/{never}/stop", body=b"{}", expect=202)
    assert answer["outcome"] == "recorded"
    await api.call("GET", f"/api/v1/jobs/{never}", expect=404)


async def test_unknown_jobs_are_404(env: Env) -> None:
    missing = sid("missing")
    for path in (f"/api/v1/jobs/{missing}", f"/api/v1/jobs/{missing}/logs"):
        body = await env.api.get(path, expect=404)
        assert missing in body["error"]


async def test_list_filters_and_pages(env: Env) -> None:
    api = env.api
    jobs = [await env.submit("big", tags=("odd",) if i % 2 else (), name="ls") for i in range(5)]
    for job in jobs:
        await env.wait_state(job, "SUCCEEDED")
    mine = await api.get("/api/v1/jobs", tag=env.tag, limit=1000)
    ids = [j["submission_id"] for j in mine["jobs"]]
    assert mine["next_cursor"] is None and set(jobs) <= set(ids) and len(ids) == len(set(ids))
    assert all(j["transitions"] == [] for j in mine["jobs"])
    odd = await api.get("/api/v1/jobs", tag="odd")
    assert {j["submission_id"] for j in odd["jobs"]} == set(jobs[1::2])
    done = await api.get("/api/v1/jobs", tag=env.tag, state="succeeded", cluster="big", limit=1000)
    assert set(jobs) <= {j["submission_id"] for j in done["jobs"]}
    assert all(j["state"] == "SUCCEEDED" and j["cluster"] == "big" for j in done["jobs"])
    assert (await api.get("/api/v1/jobs", tag=env.tag, cluster="solo", state="SUCCEEDED"))["jobs"] == []

    created = {j["submission_id"]: j["created"] for j in mine["jobs"]}
    middle = sorted(created[j] for j in jobs)[2]
    since = await api.get("/api/v1/jobs", tag=env.tag, since=middle, until="2999-01-01T00:00:00+02:00")
    assert {j["submission_id"] for j in since["jobs"]} == {j for j, c in created.items() if c >= middle}
    before = await api.get("/api/v1/jobs", tag=env.tag, until=middle.replace("Z", "+00:00"), limit=1000)
    assert {j["submission_id"] for j in before["jobs"]} == {j for j, c in created.items() if c < middle}
    assert (await api.get("/api/v1/jobs", tag=env.tag, since="2999-01-01T00:00:00Z"))["jobs"] == []

    seen, cursor = [], None
    while True:
        page = await api.get("/api/v1/jobs", tag=env.tag, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["jobs"]) <= 2
        seen += [j["submission_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids, "pages give the same jobs in the same order as one big page"


async def test_pages_stay_exact_while_jobs_are_added(env: Env) -> None:
    api, tag = env.api, f"pg-{uuid.uuid4().hex[:8]}"
    body = {"entrypoint": "/bin/true", "cluster_tags": ["big"], "tags": [tag]}
    before = [sid("pg") for _ in range(10)]
    await publish_many(env.daemon.settings, [({**body, "submission_id": s}, 0) for s in before])

    async def all_listed() -> bool:
        listed = await api.get("/api/v1/jobs", tag=tag, limit=1000)
        return {j["submission_id"] for j in listed["jobs"]} >= set(before)

    await until(all_listed, 15, lambda: "the first jobs listed")
    added: list[str] = []

    async def add() -> None:
        for _ in range(15):
            job = sid("pg-new")
            await publish(env.daemon.settings, {**body, "submission_id": job})
            added.append(job)
            await asyncio.sleep(0.03)

    adder = asyncio.create_task(add())
    try:
        pages: list[list[str]] = []
        cursor = None
        busy_at_first_page = False
        while True:
            page = await api.get("/api/v1/jobs", tag=tag, limit=3, **({"cursor": cursor} if cursor else {}))
            busy_at_first_page = busy_at_first_page or (not pages and not adder.done())
            pages.append([j["submission_id"] for j in page["jobs"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            await asyncio.sleep(0.1)
        await adder
    finally:
        adder.cancel()
    seen = [job for page in pages for job in page]
    assert busy_at_first_page and len(pages) >= 4, pages
    assert len(seen) == len(set(seen)), f"a job on two pages: {pages}"
    assert all(seen.count(job) == 1 for job in before), pages
    assert set(seen[:10]) == set(before), "jobs come in the order they were first seen"
    assert set(seen) <= set(before) | set(added)


# ---- bad requests ----------------------------------------------------------------------------


BAD_LISTS = [
    ({"limit": "abc"}, "limit"), ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"limit": "1.5"}, "limit"), ({"limit": " 5"}, "limit"),
    ({"limit": "1_0"}, "limit"), ({"limit": "9" * 5000}, "limit"), ({"limit": ""}, "limit"),
    ({"state": "bogus"}, "state"), ({"state": ""}, "state"),
    ({"cursor": "garbage!"}, "cursor"), ({"cursor": "djI6MQ"}, "cursor"), ({"cursor": "\u00e9"}, "cursor"),
    ({"since": "yesterday"}, "since"), ({"until": "2026-13-01T00:00:00Z"}, "until"),
    ({"since": "0001-01-01T00:00:00+01:00"}, "since"), ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ({"cluster": "a\x00b"}, "cluster"), ({"tag": "x" * 2000}, "tag"),
    ({"colour": "red"}, "colour"), ({"Limit": "3"}, "Limit"),
    ([("state", "RUNNING"), ("state", "FAILED")], "more than once"),
]


@pytest.mark.parametrize(("params", "named"), BAD_LISTS, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD_LISTS)])
async def test_bad_list_parameters_are_400(env: Env, params: Any, named: str) -> None:
    body = await env.api.call("GET", "/api/v1/jobs", params=params, expect=400)
    assert named in body["error"], body


async def test_other_bad_requests_are_400(env: Env) -> None:
    api = env.api
    stop = f"/api/v1/jobs/{sid('bad')}/stop"
    for raw, named in ((b"{", "JSON"), (b"[1]", "JSON object"), (b'"stop"', "JSON object"),
                       (b'{"reason": 5}', "reason"), (b'{"reason": ""}', "reason"),
                       (b'{"why": "x"}', "why"), (b"\xff\xfe", "JSON")):
        body = await api.call("POST", stop, body=raw, expect=400)
        assert named in body["error"], (raw, body)
    status, body = await api.call("POST", stop, body=b" " * (70 * 1024))
    assert status == 413 and "64" in body["error"]
    for path in ("/api/v1/jobs/bad%20id", "/api/v1/jobs/" + "x" * 129, "/api/v1/jobs/a~2/logs",
                 "/api/v1/jobs/%C3%A9/stop"):
        method = "POST" if path.endswith("stop") else "GET"
        body = await api.call(method, path, expect=400)
        assert "submission_id" in body["error"], (path, body)
    for path in (f"/api/v1/jobs/{sid()}", f"/api/v1/jobs/{sid()}/logs", "/api/v1/clusters"):
        body = await api.call("GET", path, params={"verbose": "1"}, expect=400)
        assert "verbose" in body["error"]
    for pattern, named in (("job..x", "pattern"), (".", "pattern"), ("", "empty"), ("x" * 300, "pattern")):
        body = await api.call("GET", "/api/v1/events", params={"pattern": pattern}, expect=400)
        assert named in body["error"], (pattern, body)
    body = await api.call("GET", "/api/v1/events", params={"pattern": "#", "since": "1"}, expect=400)
    assert "since" in body["error"]


async def test_unexpected_errors_are_500_without_details(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken() -> dict[str, int]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(env.daemon.service.store, "counts_by_state", broken)
    status, body = await env.api.call("GET", "/metrics")
    assert status == 500 and body == {"error": "internal error"}


# ---- events ----------------------------------------------------------------------------------


async def test_event_stream_follows_a_job(env: Env) -> None:
    api, hub = env.api, env.daemon.service.hub
    before = len(hub)
    async with event_stream(api, "job.#") as everything, event_stream(api, "job.succeeded.*") as ends, \
            event_stream(api) as default:
        assert len(hub) == before + 3
        job = await env.submit("big", name="sse")
        got: list[tuple[str, dict[str, Any]]] = []
        while not got or not got[-1][1].get("final"):
            item = await everything.next()
            assert item is not None
            if item[1].get("submission_id") == job:
                got.append(item)
        for name, data in got:
            assert name == data["event"]
            _validate_event(api, data)
        assert [(n, d["state"]) for n, d in got] == [
            ("job.accepted._", "ACCEPTED"), ("job.dispatched.big", "DISPATCHED"),
            ("job.running.big", "RUNNING"), ("job.succeeded.big", "SUCCEEDED")]
        while True:
            item = await ends.next()
            assert item is not None and item[0].startswith("job.succeeded."), item
            if item[1]["submission_id"] == job:
                break
        while True:
            item = await default.next()
            assert item is not None
            if item[1].get("submission_id") == job and item[1]["final"]:
                break
    await until(lambda: len(hub) == before, 5, lambda: f"streams closed: {len(hub)} open")


async def test_slow_stream_client_loses_old_events_not_the_daemon(env: Env) -> None:
    api, hub = env.api, env.daemon.service.hub
    saved = hub.maxsize
    hub.maxsize = 20
    try:
        async with event_stream(api, "job.synthetic.#") as stream:
            big = {"event": "job.synthetic.x", "state": "RUNNING", "pad": "x" * 256 * 1024}
            t0 = time.monotonic()
            for i in range(400):  # ~100 MB offered to a client that reads nothing meanwhile
                hub.publish({**big, "n": i})
                if i % 20 == 0:
                    await asyncio.sleep(0.005)
            # Bounds far above the few ms these take, to tell "not held up" from "held up" on a
            # loaded machine (how fast is bench/api_load.py's question).
            assert time.monotonic() - t0 < 10.0, "offering events to a stuck client held up the publisher"
            t1 = time.monotonic()
            assert await api.get("/healthz") == {"status": "ok"}
            assert time.monotonic() - t1 < 5.0, "the API answers while a stream client is stuck"
            numbers, dropped = [], 0
            while not numbers or numbers[-1] != 399:
                item = await stream.next()
                assert item is not None
                if item[0] == "dropped":
                    _validate_event(api, item[1])
                    dropped += item[1]["count"]
                else:
                    numbers.append(item[1]["n"])
            assert dropped > 0 and len(numbers) + dropped == 400, (len(numbers), dropped)
            assert numbers == sorted(numbers)
    finally:
        hub.maxsize = saved


async def test_event_stream_ends_when_the_daemon_stops(tmp_path: Any) -> None:
    cluster = FakeCluster("lone")
    s = make_settings(tmp_path)
    async with serving(cluster):
        async with running_daemon(s, (cluster.config(),)) as daemon, api_for(daemon) as api:
            async with event_stream(api, "cluster.#") as stream:
                t0 = time.monotonic()
                stopping = asyncio.create_task(daemon.stop())
                while (item := await stream.next(timeout=8)) is not None:
                    _validate_event(api, item[1])
                assert "the daemon is stopping" in stream.comments
                await stopping
                assert time.monotonic() - t0 < 8, "the stream does not hold up the shutdown"


# ---- metrics and the document as a whole ---------------------------------------------------------


async def test_metrics(env: Env) -> None:
    api = env.api
    job = await env.submit("big", name="m")
    await env.wait_state(job, "SUCCEEDED")
    text = ""

    async def has_depth() -> bool:
        nonlocal text
        text = await api.get("/metrics")
        return "\nrmcs_queue_depth " in text

    await until(has_depth, 8, lambda: "rmcs_queue_depth (maintenance runs every 5 s)")
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) rmcs_\w+ \S", line), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
        assert name.startswith("rmcs_") and "{}" not in name, line
    assert samples["rmcs_window_size"] == 8 and "rmcs_window_jobs" in samples
    assert samples["rmcs_queue_depth"] >= 0
    assert samples['rmcs_jobs{state="SUCCEEDED"}'] >= 1 and samples['rmcs_jobs{state="EXPIRED"}'] == 0
    assert samples['rmcs_job_events_total{state="SUCCEEDED"}'] >= 1
    assert samples["rmcs_events_unconfirmed"] >= 0
    assert samples['rmcs_dispatch_latency_seconds_bucket{le="+Inf"}'] == samples["rmcs_dispatch_latency_seconds_count"]
    assert samples['rmcs_cluster_up{cluster="big",health="up"}'] == 1
    assert 'rmcs_probe_latency_seconds{cluster="solo"}' in samples
    assert "rmcs_event_stream_clients" in samples
    # The page as a whole parses with prometheus_client's own parser, each family once.
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    assert {"rmcs_jobs", "rmcs_job_events", "rmcs_dispatch_latency_seconds", "rmcs_cluster_up"} <= set(names)


async def test_every_operation_answers_as_documented(env: Env) -> None:
    """One call per documented operation and status that a healthy daemon can give; each is
    validated against the document by `Api.call`."""
    api = env.api
    api.seen.clear()
    job = await env.submit("big", "/bin/sleep 30", name="doc")
    await env.wait_state(job, "RUNNING")
    await api.get("/healthz")
    await api.get("/readyz")
    await api.get("/openapi.json")
    await api.get("/metrics")
    await api.get("/api/v1/clusters")
    await api.get("/api/v1/clusters", expect=400, x="1")
    await api.get("/api/v1/queues")
    await api.get("/api/v1/queues", expect=400, x="1")
    package = zip_of({"run.sh": b"echo hi\n"})
    name = package_name(package)
    await api.get(f"/api/v1/packages/{name}", expect=404)
    assert await api.call("PUT", f"/api/v1/packages/{name}", body=package, expect=201) == {
        "name": name, "size": len(package)}
    await api.call("PUT", f"/api/v1/packages/{name}", body=package, expect=200)
    assert await api.get(f"/api/v1/packages/{name}") == {"name": name, "size": len(package)}
    await api.call("PUT", f"/api/v1/packages/{package_name(b'other')}", body=package, expect=400)  # not its SHA-1
    await api.get("/api/v1/packages/run.zip", expect=400)
    await api.call("PUT", f"/api/v1/packages/{package_name(b'x' * 2000)}", body=b"x" * 2000, expect=413)
    await api.get("/api/v1/jobs", limit=1, queue="default")
    await api.get("/api/v1/jobs", expect=400, limit="x")
    await api.get(f"/api/v1/jobs/{job}")
    await api.get("/api/v1/jobs/no~such", expect=400)
    await api.get(f"/api/v1/jobs/{sid()}", expect=404)
    await api.get(f"/api/v1/jobs/{job}/logs")
    await api.get(f"/api/v1/jobs/{sid()}/logs", expect=404)
    await api.get(f"/api/v1/jobs/{job}/logs", expect=400, x="1")
    await api.call("POST", f"/api/v1/jobs/{job}/stop", body=b"nope", expect=400)
    await api.call("DELETE", f"/api/v1/jobs/{job}", expect=409)  # not ended yet
    await api.call("POST", f"/api/v1/jobs/{job}/stop", expect=202)
    await env.wait_state(job, "STOPPED")
    await api.call("POST", f"/api/v1/jobs/{job}/stop", expect=409)
    assert job in env.big.jobs
    assert await api.call("DELETE", f"/api/v1/jobs/{job}", expect=200) == {"submission_id": job, "deleted": True}
    assert job not in env.big.jobs  # deleted from its cluster too
    await api.get(f"/api/v1/jobs/{job}", expect=404)
    await api.call("DELETE", f"/api/v1/jobs/{job}", expect=404)
    await api.call("DELETE", "/api/v1/jobs/no~such", expect=400)
    await api.get("/api/v1/events", expect=400, pattern="a..b")
    async with event_stream(api, "cluster.#"):
        pass
    operations = {(p, m.upper()) for p, ops in api.doc["paths"].items() for m in ops}
    assert {(p, m) for p, m, _ in api.seen} == operations
