"""Parsing intake messages into jobs: what is accepted, and the reason for what is not."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_daemon.jobs import (
    GIB,
    InvalidJob,
    Job,
    MessageMeta,
    merge_runtime_env,
    parse_job,
    ray_id_to_submission,
)

DEFAULTS = {"CPU": 1.0}
MAX = 1_048_576


def parse(body: Any, meta: MessageMeta | None = None, *, max_bytes: int = MAX) -> Job:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_job(raw, meta or MessageMeta(), default_resources=DEFAULTS, max_bytes=max_bytes)


def rejected(body: Any, meta: MessageMeta | None = None, **kw: Any) -> str:
    with pytest.raises(InvalidJob) as info:
        parse(body, meta, **kw)
    assert info.value.reason == str(info.value)
    return info.value.reason


# --- valid bodies -------------------------------------------------------------------------------


def test_minimal_body() -> None:
    job = parse({"entrypoint": "/usr/bin/python3 /opt/jobs/train.py"})
    assert job.entrypoint == "/usr/bin/python3 /opt/jobs/train.py"
    assert re.fullmatch(r"sub_[0-9a-f]{32}", job.submission_id)
    assert re.fullmatch(r"job_[0-9a-f]{32}", job.job_id)
    assert job.resources == DEFAULTS
    assert job.priority == 0 and job.max_retries == 0 and job.queue_timeout_s is None
    assert job.tags == () and job.cluster_tags == frozenset()
    assert job.runtime_env == {} and job.metadata == {}
    assert job.preferred_cluster is None
    assert job.attempt == 1


def test_generated_ids_are_unique() -> None:
    a, b = parse({"entrypoint": "echo hi"}), parse({"entrypoint": "echo hi"})
    assert a.submission_id != b.submission_id and a.job_id != b.job_id


def test_full_body() -> None:
    body = {
        "entrypoint": "python /opt/jobs/train.py --epochs 3",
        "submission_id": "train-42.v1_a",
        "job_id": "train the model",
        "runtime_env": {"pip": ["numpy"], "env_vars": {"A": "1"}},
        "metadata": {"owner": "alice"},
        "preferred_cluster": "gpu_cluster",
        "resource_requirements": {"CPU": 2, "GPU": 1, "memory": 1.5, "GPU_fake": 0.5},
        "tags": ["ml", "nightly"],
        "cluster_tags": ["gpu"],
        "priority": "HIGH",
        "max_retries": 2,
        "queue_timeout_s": 30,
    }
    meta = MessageMeta(message_id="ignored", priority=9, correlation_id="c1", reply_to="r1")
    job = parse(body, meta)
    assert job.submission_id == "train-42.v1_a"
    assert job.job_id == "train the model"
    assert job.runtime_env == {"pip": ["numpy"], "env_vars": {"A": "1"}}
    assert job.metadata == {"owner": "alice"}
    assert job.preferred_cluster == "gpu_cluster"
    assert job.resources == {"CPU": 2.0, "GPU": 1.0, "memory": 1.5, "GPU_fake": 0.5}
    assert job.tags == ("ml", "nightly")
    assert job.cluster_tags == frozenset({"gpu"})
    assert job.priority == 9
    assert job.max_retries == 2
    # The contract takes any integer >= 0; at most MAX_RETRIES (100) retries are made.
    big = parse({"entrypoint": "/bin/true", "max_retries": 1000})
    assert big.max_retries == 100
    assert job.queue_timeout_s == 30.0
    assert (job.correlation_id, job.reply_to) == ("c1", "r1")
    assert job.body == json.dumps(body).encode()


def test_submission_id_from_message_id_when_body_has_none() -> None:
    job = parse({"entrypoint": "echo hi"}, MessageMeta(message_id="from-property"))
    assert job.submission_id == "from-property"
    job = parse({"entrypoint": "echo hi", "submission_id": "from-body"}, MessageMeta(message_id="from-property"))
    assert job.submission_id == "from-body"


@pytest.mark.parametrize(("raw", "expected"), [
    (0, 0), (9, 9), (5, 5), ("HIGH", 9), ("NORMAL", 5), ("LOW", 1), ("high", 9), ("low", 1),
])
def test_priority_in_body(raw: Any, expected: int) -> None:
    assert parse({"entrypoint": "echo", "priority": raw}).priority == expected


def test_priority_from_amqp_property() -> None:
    assert parse({"entrypoint": "echo"}, MessageMeta(priority=7)).priority == 7
    assert parse({"entrypoint": "echo"}, MessageMeta(priority=None)).priority == 0
    # The body wins when both are given.
    assert parse({"entrypoint": "echo", "priority": "LOW"}, MessageMeta(priority=7)).priority == 1


@pytest.mark.parametrize("raw", [10, -1, 3.5, True, "URGENT", "", [1], {"p": 1}])
def test_bad_priority(raw: Any) -> None:
    assert "priority" in rejected({"entrypoint": "echo", "priority": raw})


def test_bad_priority_property() -> None:
    assert "priority" in rejected({"entrypoint": "echo"}, MessageMeta(priority=200))


@pytest.mark.parametrize("entrypoint", [
    "python -c 'import a/b'",
    "python -c \"print('x/../y')\"",
    "/usr/bin/python3 -c 'import os; print(os.getcwd())'",
    "/bin/bash /opt/scripts/run.sh --out /tmp/out",
    "echo hello world",
    "sleep 1.5",
    "python -m mypkg.main --flag",
    "/opt/bin/tool --threshold=0.5",
])
def test_accepted_entrypoints(entrypoint: str) -> None:
    assert parse({"entrypoint": entrypoint}).entrypoint == entrypoint


def test_memory_in_gib_becomes_bytes_for_ray() -> None:
    job = parse({"entrypoint": "echo", "resource_requirements": {"CPU": 1, "memory": 2, "A100": 1}})
    assert job.resources["memory"] == 2.0
    assert job.ray_resources == {"CPU": 1.0, "memory": 2 * GIB, "A100": 1.0}
    half = parse({"entrypoint": "echo", "resource_requirements": {"memory": 0.5}})
    assert half.ray_resources == {"memory": GIB / 2}


def test_zero_resources_are_dropped() -> None:
    job = parse({"entrypoint": "echo", "resource_requirements": {"CPU": 1, "GPU": 0}})
    assert job.resources == {"CPU": 1.0}


def test_ray_submission_id_per_attempt() -> None:
    first = parse({"entrypoint": "echo", "submission_id": "abc"})
    again = parse({"entrypoint": "echo", "submission_id": "abc"}, MessageMeta(attempt=2))
    assert first.ray_submission_id == "abc"
    assert again.attempt == 2 and again.ray_submission_id == "abc~2"
    assert ray_id_to_submission(first.ray_submission_id) == ("abc", 1)
    assert ray_id_to_submission(again.ray_submission_id) == ("abc", 2)
    assert ray_id_to_submission("raysubmit_xyz") == ("raysubmit_xyz", 1)


def test_merge_runtime_env() -> None:
    cluster = {"pip": ["numpy"], "env_vars": {"A": "cluster", "B": "cluster"}, "working_dir": "/c"}
    job = {"pip": ["torch"], "env_vars": {"B": "job", "C": "job"}}
    merged = merge_runtime_env(cluster, job)
    assert merged == {"pip": ["torch"], "env_vars": {"A": "cluster", "B": "job", "C": "job"}, "working_dir": "/c"}
    assert cluster["env_vars"] == {"A": "cluster", "B": "cluster"}  # inputs untouched
    assert merge_runtime_env({}, job) == job
    assert merge_runtime_env(cluster, {}) == cluster


# --- rejected bodies ----------------------------------------------------------------------------


def test_not_json() -> None:
    assert "JSON" in rejected(b"{entrypoint: oops")
    assert "JSON" in rejected(b"\xff\xfe")
    assert "JSON" in rejected(b"")


@pytest.mark.parametrize("body", [b"[]", b"\"echo\"", b"42", b"null", b"true"])
def test_not_an_object(body: bytes) -> None:
    assert "object" in rejected(body)


@pytest.mark.parametrize("body", [{}, {"entrypoint": None}, {"entrypoint": 42}, {"entrypoint": ["echo"]}])
def test_missing_or_non_string_entrypoint(body: dict[str, Any]) -> None:
    assert "entrypoint" in rejected(body)


@pytest.mark.parametrize("entrypoint", ["", "   ", "echo \x00", "echo 'unterminated", "x" * 20_000])
def test_unusable_entrypoint(entrypoint: str) -> None:
    assert "entrypoint" in rejected({"entrypoint": entrypoint})


@pytest.mark.parametrize("entrypoint", [
    "python script.py",
    "python ./a.py",
    "bash run.sh",
    "python jobs/train.py",
    "./bin/tool",
])
def test_relative_script_path(entrypoint: str) -> None:
    assert "relative path" in rejected({"entrypoint": entrypoint})


@pytest.mark.parametrize("entrypoint", [
    "python /opt/jobs/../secret.py",
    "/opt/../bin/tool",
    "cat ../etc/passwd",
])
def test_dot_dot_in_path(entrypoint: str) -> None:
    assert "'..'" in rejected({"entrypoint": entrypoint})


@pytest.mark.parametrize("value", [-1, -0.5, True, False, "2", None, [1], {"n": 1}, 1e16, 10**20])
def test_bad_resource_values(value: Any) -> None:
    reason = rejected({"entrypoint": "echo", "resource_requirements": {"CPU": value}})
    assert "CPU" in reason


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_resources(text: bytes) -> None:
    body = b'{"entrypoint": "echo", "resource_requirements": {"CPU": ' + text + b"}}"
    rejected(body)


@pytest.mark.parametrize("raw", [[{"CPU": 1}], "CPU=1", 4, {"bad name!": 1}, {"": 1}, {"CPU\n": 1}])
def test_bad_resource_requirements(raw: Any) -> None:
    assert "resource" in rejected({"entrypoint": "echo", "resource_requirements": raw})


@pytest.mark.parametrize("sid", ["", "has space", "a/b", "a~2", "x" * 129, 12, ["a"], "ü", "abc\n", "\nabc"])
def test_bad_submission_id(sid: Any) -> None:
    assert "submission_id" in rejected({"entrypoint": "echo", "submission_id": sid})


def test_null_submission_id_falls_back_to_message_id() -> None:
    job = parse({"entrypoint": "echo", "submission_id": None}, MessageMeta(message_id="from-property"))
    assert job.submission_id == "from-property"


def test_bad_message_id() -> None:
    assert "submission_id" in rejected({"entrypoint": "echo"}, MessageMeta(message_id="not ok"))


def test_reason_carries_ids_when_known() -> None:
    with pytest.raises(InvalidJob) as info:
        parse({"entrypoint": "python x.py", "submission_id": "s1", "job_id": "j1"})
    assert (info.value.submission_id, info.value.job_id) == ("s1", "j1")


@pytest.mark.parametrize(("field", "value"), [
    ("tags", "ml"),
    ("tags", [1, 2]),
    ("tags", [""]),
    ("tags", ["x" * 200]),
    ("tags", ["t"] * 100),
    ("tags", {"a": "b"}),
    ("cluster_tags", "gpu"),
    ("cluster_tags", [None]),
    ("metadata", ["a", "b"]),
    ("metadata", {"a": 1}),
    ("metadata", {"a": None}),
    ("metadata", "owner=alice"),
    ("metadata", {"k": "v" * 5000}),
    ("metadata", []),
    ("metadata", ""),
    ("metadata", 0),
    ("metadata", False),
    ("runtime_env", "conda"),
    ("runtime_env", ["pip"]),
    ("runtime_env", 3),
    ("runtime_env", []),
    ("runtime_env", ""),
    ("runtime_env", 0),
    ("runtime_env", False),
    ("job_id", 5),
    ("job_id", ""),
    ("preferred_cluster", 1),
    ("max_retries", -1),
    ("max_retries", 1.5),
    ("max_retries", True),
    ("max_retries", "3"),
    ("queue_timeout_s", 0),
    ("queue_timeout_s", -5),
    ("queue_timeout_s", "10"),
    ("queue_timeout_s", True),
])
def test_wrong_field_types(field: str, value: Any) -> None:
    assert field in rejected({"entrypoint": "echo", field: value})


def test_null_optional_fields_mean_absent() -> None:
    job = parse({"entrypoint": "echo", "runtime_env": None, "metadata": None, "tags": None,
                 "cluster_tags": None, "priority": None, "resource_requirements": None})
    assert job.runtime_env == {} and job.metadata == {} and job.tags == ()
    assert job.resources == DEFAULTS


def test_oversized_message() -> None:
    body = orjson.dumps({"entrypoint": "echo", "metadata": {"pad": "x" * 2000}})
    reason = rejected(body, max_bytes=1024)
    assert "larger than the limit" in reason and "1024" in reason
    assert parse(body, max_bytes=len(body)).entrypoint == "echo"


def test_unknown_field() -> None:
    assert "'entry_point'" in rejected({"entrypoint": "echo", "entry_point": "echo"})


# --- property: nothing but InvalidJob escapes ---------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from([
    "entrypoint", "submission_id", "job_id", "runtime_env", "metadata", "preferred_cluster",
    "resource_requirements", "tags", "cluster_tags", "priority", "max_retries", "queue_timeout_s",
]) | st.text(max_size=12)
entrypoints = st.sampled_from(["echo hi", "python x.py", "/bin/true", "python -c 'a/b'"]) | st.text(max_size=40)
metas = st.builds(
    MessageMeta,
    message_id=st.none() | st.text(max_size=20),
    priority=st.none() | st.integers(min_value=-5, max_value=300),
    attempt=st.integers(min_value=1, max_value=5),
)


def _check_never_crashes(body: bytes, meta: MessageMeta) -> None:
    try:
        job = parse_job(body, meta, default_resources=DEFAULTS, max_bytes=4096)
    except InvalidJob as exc:
        assert exc.reason
        return
    assert isinstance(job, Job)
    assert isinstance(job.entrypoint, str) and job.entrypoint.strip()
    assert 0 <= job.priority <= 9
    assert all(isinstance(v, float) and v >= 0 for v in job.resources.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), metas)
def test_arbitrary_bytes_raise_only_invalid_job(body: bytes, meta: MessageMeta) -> None:
    _check_never_crashes(body, meta)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(field_names, json_values, max_size=8), st.none() | entrypoints, metas)
def test_arbitrary_json_objects_raise_only_invalid_job(data: dict[str, Any], entrypoint: str | None,
                                                       meta: MessageMeta) -> None:
    if entrypoint is not None:
        data["entrypoint"] = entrypoint
    # The standard library writes NaN, Infinity and big integers, which a producer might send.
    _check_never_crashes(json.dumps(data, allow_nan=True).encode(), meta)
