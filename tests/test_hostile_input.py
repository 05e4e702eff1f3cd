"""Hostile input at the intake edge: path rules, per-cluster entrypoint allow-lists, size and
resource limits, the per-job ceiling. One set of rules (producers/schema.py) serves the producer
helper and the daemon; every refusal carries a reason, and the daemon dead-letters it."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakeray import fake_fleet
from producers import schema
from producers.core import build_job
from scheduler_daemon.clusters import ClusterView, HealthState, Node
from scheduler_daemon.jobs import InvalidJob, Job, MessageMeta, parse_job
from scheduler_daemon.placement import NoFit, Placement, choose
from scheduler_daemon.settings import ClusterConfig, ConfigError, load_clusters, load_settings
from support import Events, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

LIMIT = 65_536


def parse(body: Any, *, ceiling: dict[str, float] | None = None) -> Job:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_job(raw, MessageMeta(), default_resources={"CPU": 1.0}, max_bytes=LIMIT, ceiling=ceiling)


def refused(body: Any, **kw: Any) -> str:
    with pytest.raises(InvalidJob) as info:
        parse(body, **kw)
    assert info.value.reason
    return info.value.reason


# ---- path rules: what the contract's entrypoints look like keeps working ----------------------

@pytest.mark.parametrize(("entrypoint", "program", "scripts"), [
    ("python /opt/jobs/train.py --epochs 3", "python", ("/opt/jobs/train.py",)),
    ("/usr/bin/python3 /opt/jobs/a.py", "/usr/bin/python3", ("/usr/bin/python3", "/opt/jobs/a.py")),
    ("OMP_NUM_THREADS=1 /opt/jobs/run.sh", "/opt/jobs/run.sh", ("/opt/jobs/run.sh",)),
    ("/bin/sleep 1", "/bin/sleep", ("/bin/sleep",)),
    ("sleep 1", "sleep", ()),
    ("python -c 'print(1)'", "python", ()),
    ("/opt//jobs/./x.py", "/opt/jobs/x.py", ("/opt/jobs/x.py",)),
])
def test_command_of(entrypoint: str, program: str, scripts: tuple[str, ...]) -> None:
    command = schema.command_of(entrypoint)
    assert (command.program, command.scripts) == (program, scripts)
    assert parse({"entrypoint": entrypoint}).command.first_arg == command.first_arg
    assert parse({"entrypoint": entrypoint}).command == command


@pytest.mark.parametrize("entrypoint", ["python ../x.py", "python /opt/../etc/x.py", "python jobs/x.py",
                                        "./run.sh", "bash run.sh", "x" * (schema.MAX_ENTRYPOINT + 1), "a\x00b"])
def test_path_and_length_rules_refuse(entrypoint: str) -> None:
    reason = refused({"entrypoint": entrypoint})
    with pytest.raises(ValueError) as info:  # the producer helper says the same, before publishing
        build_job(entrypoint)
    assert str(info.value) == reason


# ---- per-cluster allow-lists -----------------------------------------------------------------

DIRS = ("/opt/jobs",)
PY = ("/usr/bin/python3",)


@pytest.mark.parametrize(("entrypoint", "dirs", "interpreters", "why"), [
    ("/usr/bin/python3 /opt/jobs/train.py", DIRS, PY, None),
    ("/opt/jobs/run.sh --x 1", DIRS, PY, None),                      # a script under the dirs runs as program
    ("/opt/jobs/sub/deep.py", DIRS, (), None),
    ("echo hi", (), (), None),                                        # no allow-list: anything the rules allow
    ("/usr/bin/python3 /tmp/evil.py", DIRS, PY, "outside the allowed directories"),
    ("/opt/jobsX/evil.py", DIRS, (), "outside the allowed directories"),  # a prefix is not a directory
    ("python /opt/jobs/train.py", DIRS, PY, "interpreter 'python' is not allowed"),
    ("/bin/bash /opt/jobs/run.sh", DIRS, PY, "interpreter '/bin/bash' is not allowed"),
    ("/usr/bin/python3 -c 'import os'", DIRS, PY, "names no script"),
    ("/usr/bin/python3 -c 'import os' /opt/jobs/a.py", DIRS, PY, "got 'import os'"),
    ("/usr/bin/python3 -m evil /opt/jobs/a.py", DIRS, PY, "got 'evil'"),
    ("/usr/bin/python3 -u /opt/jobs/a.py --out /tmp/x", DIRS, PY, None),
    ("/usr/bin/python3 '/opt/jobs/a.py' \"(x)\" 'a;b'", DIRS, PY, None),   # quoted: no shell syntax
    ("/usr/bin/python3 /opt/jobs/a.py \"$HOME\"", DIRS, PY, "shell syntax"),  # $ expands in double quotes
    ("/usr/bin/python3 /opt/jobs/a.py; rm -rf /", DIRS, PY, "shell syntax"),
    ("/usr/bin/python3 /opt/jobs/a.py $(id)", DIRS, PY, "shell syntax"),
    ("/usr/bin/python3 /opt/jobs/a.py | sh", DIRS, PY, "shell syntax"),
    ("sleep 1", (), ("/bin/sleep",), "interpreter 'sleep' is not allowed"),
    ("/bin/sleep 1", (), ("/bin/sleep",), None),
])
def test_allow_list(entrypoint: str, dirs: tuple[str, ...], interpreters: tuple[str, ...], why: str | None) -> None:
    refusal = schema.entrypoint_refusal(schema.command_of(entrypoint), dirs, interpreters)
    assert (refusal is None) if why is None else (refusal is not None and why in refusal), refusal


def _view(name: str, **cfg: Any) -> ClusterView:
    return ClusterView(ClusterConfig(name, f"http://{name}:8265", **cfg), HealthState.UP,
                       (Node(f"{name}-n", {"CPU": 4.0}, {}),))


def test_placement_only_considers_clusters_whose_allow_list_admits_the_job() -> None:
    open_ = _view("open")
    locked = _view("locked", allowed_script_dirs=DIRS, allowed_interpreters=PY)
    job = parse({"entrypoint": "/usr/bin/python3 /opt/jobs/train.py", "preferred_cluster": "open"})
    assert isinstance(choose(job, [open_, locked]), Placement)
    inline = parse({"entrypoint": "/usr/bin/python3 -c 'print(1)'", "preferred_cluster": "locked"})
    p = choose(inline, [open_, locked])
    assert isinstance(p, Placement) and p.cluster == "open" and "locked: entrypoint names no script" in p.explanation
    nofit = choose(inline, [locked])
    assert isinstance(nofit, NoFit) and nofit.infeasible and "names no script" in nofit.explanation
    assert nofit.explanation.startswith("infeasible: no configured cluster both admits its entrypoint")


def test_allow_lists_in_clusters_file(tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text(yaml.safe_dump({"clusters": {"a": {"dashboard_url": "http://a:8265",
                                                       "allowed_script_dirs": ["/opt/jobs/"],
                                                       "allowed_interpreters": ["/usr/bin/python3", "python3"]}}}))
    (a,) = load_clusters(path, environ={})
    assert a.allowed_script_dirs == ("/opt/jobs",) and a.allowed_interpreters == ("/usr/bin/python3", "python3")
    for bad in (["relative/dir"], ["/opt/../etc"], "/opt/jobs", [""]):
        path.write_text(yaml.safe_dump({"clusters": {"a": {"dashboard_url": "http://a:8265",
                                                           "allowed_script_dirs": bad}}}))
        with pytest.raises(ConfigError, match="allowed_script_dirs"):
            load_clusters(path, environ={})


# ---- limits and the per-job ceiling ------------------------------------------------------------

@pytest.mark.parametrize(("body", "why"), [
    ({"resource_requirements": {"CPU": -1}}, "finite number >= 0"),
    ({"resource_requirements": {"CPU": 2e9}}, "absurdly large"),
    ({"resource_requirements": {"memory": 10**30}}, "absurdly large"),
    ({"resource_requirements": {f"R{i}": 1 for i in range(schema.MAX_RESOURCES + 1)}}, "at most"),
    ({"metadata": {f"k{i}": "v" for i in range(schema.MAX_METADATA_ITEMS + 1)}}, "metadata"),
    ({"metadata": {"k": "v" * (schema.MAX_METADATA_VALUE + 1)}}, "metadata"),
    ({"metadata": {"k" * (schema.MAX_METADATA_KEY + 1): "v"}}, "metadata"),
    ({"tags": ["t"] * (schema.MAX_TAGS + 1)}, "tags"),
    ({"tags": ["t" * (schema.MAX_TAG_LEN + 1)]}, "tags"),
    ({"cluster_tags": [""]}, "cluster_tags"),
])
def test_limits(body: dict[str, Any], why: str) -> None:
    assert why in refused({"entrypoint": "/bin/true", **body})


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0.0001"])
def test_non_finite_resources(text: bytes) -> None:
    refused(b'{"entrypoint": "/bin/true", "resource_requirements": {"GPU": ' + text + b"}}")


def test_message_size_limit() -> None:
    big = orjson.dumps({"entrypoint": "/bin/true", "runtime_env": {"env_vars": {"X": "y" * LIMIT}}})
    assert "larger than the limit" in refused(big)
    with pytest.raises(ValueError, match="bytes"):  # the producer helper refuses it too
        body, _ = build_job("/bin/true", runtime_env={"env_vars": {"X": "y" * schema.MAX_MESSAGE_BYTES}})
        asyncio.run(_encode_only(body))


async def _encode_only(body: dict[str, Any]) -> None:
    from producers.core import Client
    from producers.config import load_config

    client = Client(load_config(None, environ={}), False)
    try:
        await client.submit(body, None, False)
    finally:
        await client.close()


def test_per_job_ceiling() -> None:
    ceiling = {"CPU": 8.0, "GPU": 2.0}
    assert parse({"entrypoint": "/bin/true", "resource_requirements": {"CPU": 8, "GPU": 2}}, ceiling=ceiling)
    assert "ceiling of 2" in refused({"entrypoint": "/bin/true", "resource_requirements": {"GPU": 3}}, ceiling=ceiling)
    # Resources not in the ceiling are bounded only by the absurd-value limit.
    assert parse({"entrypoint": "/bin/true", "resource_requirements": {"A100": 64}}, ceiling=ceiling)


def test_ceiling_setting() -> None:
    s = load_settings(None, environ={"RMCS_MAX_JOB_RESOURCES": '{CPU: 32, GPU: 8, memory: 256}'})
    assert s.max_job_resources == {"CPU": 32.0, "GPU": 8.0, "memory": 256.0}
    for bad in ('{CPU: -1}', '{CPU: .nan}', '{"bad name": 1}', '{CPU: 0.5}'):  # 0.5 < default CPU 1
        with pytest.raises(ConfigError, match="max_job_resources|default_resources"):
            load_settings(None, environ={"RMCS_MAX_JOB_RESOURCES": bad})


# ---- hypothesis at the parse edge: no crash, every refusal explained, every job within limits ----

_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**40, max_value=10**40))
_words = st.sampled_from(["python", "/usr/bin/python3", "/opt/jobs/a.py", "../x.py", "a/b.sh", "-c", "'x'", "..",
                          "/bin/sleep", "1", "$(id)", ";", "|", "\"", "x.py", "/opt/../etc/p.py", "--flag=/tmp/x"])
_entrypoints = st.one_of(st.lists(_words, min_size=0, max_size=6).map(" ".join), st.text(max_size=60))
_json = st.recursive(st.none() | st.booleans() | _numbers | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                     max_leaves=12)
_bodies = st.fixed_dictionaries({"entrypoint": _entrypoints}, optional={
    "resource_requirements": st.one_of(st.dictionaries(st.sampled_from(["CPU", "GPU", "memory", "A100", "bad name"]),
                                                       _numbers | _json, max_size=4), _json),
    "metadata": st.one_of(st.dictionaries(st.text(max_size=300), st.text(max_size=5000), max_size=3), _json),
    "tags": st.one_of(st.lists(st.text(max_size=150), max_size=70), _json),
    "cluster_tags": _json,
    "priority": _json,
    "max_retries": _json,
    "queue_timeout_s": _numbers | _json,
    "submission_id": st.one_of(st.text(max_size=140), _json),
    "runtime_env": _json,
})


def _within_limits(job: Job) -> None:
    command = job.command
    assert all(s.startswith("/") and ".." not in s.split("/") for s in command.scripts)
    assert len(job.entrypoint) <= schema.MAX_ENTRYPOINT
    for value in job.resources.values():
        assert math.isfinite(value) and 0 < value <= min(schema.MAX_RESOURCE_VALUE, 16.0)
    assert len(job.metadata) <= schema.MAX_METADATA_ITEMS and len(job.tags) <= schema.MAX_TAGS
    assert all(len(v) <= schema.MAX_METADATA_VALUE for v in job.metadata.values())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies)
def test_parse_edge_never_crashes(body: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        raw = json.dumps(body, allow_nan=True).encode()
    try:
        job = parse_job(raw, MessageMeta(), default_resources={"CPU": 1.0}, max_bytes=LIMIT,
                        ceiling={"CPU": 16.0, "GPU": 16.0, "memory": 16.0, "A100": 16.0})
    except InvalidJob as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    _within_limits(job)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_edge_survives_any_bytes(raw: bytes) -> None:
    try:
        parse_job(raw, MessageMeta(), default_resources={"CPU": 1.0}, max_bytes=LIMIT)
    except InvalidJob as exc:
        assert exc.reason


# ---- the daemon dead-letters each refusal with its reason --------------------------------------

async def test_daemon_dead_letters_hostile_jobs_with_reasons(tmp_path: Path) -> None:
    async with fake_fleet(1, name="hostile") as fleet:
        s = make_settings(tmp_path, max_job_resources={"CPU": 2.0})
        locked = fleet[0].config(allowed_script_dirs=("/opt/jobs",), allowed_interpreters=("/usr/bin/python3",))
        refusals = {
            sid("trav"): ({"entrypoint": "python /opt/jobs/../../etc/x.py"}, "'..'"),
            sid("rel"): ({"entrypoint": "python jobs/x.py"}, "relative path"),
            sid("nan"): (b'{"entrypoint": "/bin/true", "resource_requirements": {"CPU": NaN}}', "JSON"),
            sid("neg"): ({"entrypoint": "/bin/true", "resource_requirements": {"CPU": -2}}, "finite number >= 0"),
            sid("ceil"): ({"entrypoint": "/bin/true", "resource_requirements": {"CPU": 3}}, "ceiling"),
            sid("meta"): ({"entrypoint": "/bin/true", "metadata": {"k": "v" * 5000}}, "metadata"),
            sid("shell"): ({"entrypoint": "/opt/jobs/a.sh; id"}, "shell syntax"),
            sid("interp"): ({"entrypoint": "/usr/bin/perl /opt/jobs/a.pl"}, "not allowed"),
            sid("outside"): ({"entrypoint": "/usr/bin/python3 /tmp/x.py"}, "outside the allowed directories"),
            sid("inline"): ({"entrypoint": "/usr/bin/python3 -c 'print(1)'"}, "names no script"),
        }
        admitted = sid("ok")
        async with running_daemon(s, (locked,)), Events(s) as ev:
            await publish(s, {"entrypoint": "/usr/bin/python3 /opt/jobs/train.py", "submission_id": admitted},
                          message_id=admitted)
            for key, (body, _) in refusals.items():
                await publish(s, body if isinstance(body, bytes) else {**body, "submission_id": key}, message_id=key)
            await ev.wait_final([admitted], timeout=60)
            assert ev.states(admitted)[-1] == "SUCCEEDED"
            reasons = await _dead_letters(s, len(refusals))
        for key, (_, why) in refusals.items():
            assert why in reasons.get(key, ""), (key, reasons.get(key))
        assert admitted not in reasons


async def _dead_letters(s: Any, n: int, timeout: float = 30.0) -> dict[str, str]:
    out: dict[str, str] = {}
    conn = await aio_pika.connect(s.amqp_url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(s.dead_letter_queue, passive=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < n and asyncio.get_running_loop().time() < deadline:
            msg = await q.get(fail=False, no_ack=True)
            if msg is None:
                await asyncio.sleep(0.1)
                continue
            out[str(msg.message_id)] = str((msg.headers or {}).get("x-rmcs-reason"))
    return out
