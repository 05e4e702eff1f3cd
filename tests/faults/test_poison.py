"""Poison input: generated malformed messages mixed with valid jobs, against the real broker and
daemon and fake dashboards. Every bad message is dead-lettered with a reason, every valid job
runs, the daemon keeps going and its window stays bounded."""

from __future__ import annotations

import asyncio
import gc
import os
import random
from typing import Any

import aio_pika
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fakeray import FakeCluster, FakeServer
from support import Events, make_settings, queue_depth, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ("entrypoint", "submission_id", "resource_requirements", "priority", "tags", "metadata",
          "max_retries", "queue_timeout_s", "runtime_env", "cluster_tags")


@st.composite
def malformed(draw: Any) -> bytes:
    """Bodies that must be rejected: broken JSON, wrong types, bad values, unknown fields."""
    kind = draw(st.sampled_from(["bytes", "json", "field", "relative", "resource"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=64))
        return b"\xff" + raw  # never valid UTF-8 JSON
    if kind == "json":
        value = draw(JSON.filter(lambda v: not isinstance(v, dict)))
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY) if value is not None else b"null"
    if kind == "field":
        name = draw(st.sampled_from(FIELDS))
        bad = {"entrypoint": draw(st.integers() | st.lists(st.text(max_size=3), max_size=2) | st.just("")),
               "submission_id": draw(st.text(alphabet=" /\\?#%", min_size=1, max_size=5)),
               "resource_requirements": draw(st.just({"CPU": -1}) | st.just({"GPU": "two"}) | st.just([1])),
               "priority": draw(st.integers(min_value=10, max_value=99) | st.just("URGENT")),
               "tags": draw(st.just("t") | st.just([1, 2])),
               "metadata": draw(st.just({"a": 1}) | st.just(["x"])),
               "max_retries": draw(st.integers(min_value=-50, max_value=-1) | st.just(1.5)),
               "queue_timeout_s": draw(st.just(0) | st.just(-3) | st.just("soon")),
               "runtime_env": draw(st.just("conda") | st.just([1])),
               "cluster_tags": draw(st.just({"a": "b"}) | st.just([None]))}[name]
        body = {"entrypoint": "/bin/true", name: bad}
        return orjson.dumps(body)
    if kind == "relative":
        script = draw(st.sampled_from(["train.py", "./run.sh", "jobs/a.py", "../x.py"]))
        return orjson.dumps({"entrypoint": f"python {script}"})
    return orjson.dumps({"entrypoint": "/bin/true", "resource_requirements": {"CPU": 1e300}})


def _stream(bad: list[bytes], valid: int, seed: int) -> list[tuple[bytes, str | None]]:
    items: list[tuple[bytes, str | None]] = [(b, None) for b in bad]
    for _ in range(valid):
        job = sid("ok")
        items.append((orjson.dumps({"submission_id": job, "entrypoint": "/bin/true"}), job))
    random.Random(seed).shuffle(items)
    return items


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(bad=st.lists(malformed(), min_size=1000, max_size=1000), seed=st.integers(0, 2**32 - 1))
def test_a_thousand_malformed_messages_mixed_with_valid_jobs(tmp_path_factory: Any, bad: list[bytes],
                                                               seed: int) -> None:
    asyncio.run(_run(tmp_path_factory.mktemp("poison"), bad, seed))


def _rss_mb() -> float:
    """Resident memory of this process (the daemon runs in it), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _publish(s: Any, items: list[tuple[bytes, str | None]]) -> None:
    conn = await aio_pika.connect(s.amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(s.intake_exchange)
        await asyncio.gather(*(ex.publish(aio_pika.Message(body, delivery_mode=2), routing_key="submit")
                               for body, _ in items))


async def _run(tmp: Any, bad: list[bytes], seed: int) -> None:
    s = make_settings(tmp, window_size=8)
    cluster = FakeCluster("sink", nodes={"n1": {"CPU": 64, "memory": 64 * 2**30}}, duration_s=0.05)
    server = FakeServer([cluster])
    await server.start()
    try:
        async with running_daemon(s, (cluster.config(),)) as daemon, Events(s, "job.#") as ev:
            stream = _stream(bad, 100, seed)
            half = len(stream) // 2
            rss, rejected = [], 0
            for part in (stream[:half], stream[half:]):  # memory after each half: steady, not growing
                await _publish(s, part)
                await ev.wait_final([job for _, job in part if job is not None], timeout=120)
                rejected += sum(1 for _, job in part if job is None)
                await ev.wait_for(lambda: sum(1 for e in ev.items if e["state"] == "REJECTED") >= rejected, 60,
                                  "every malformed message rejected")
                gc.collect()
                rss.append(_rss_mb())
            print(f"poison: {len(bad)} malformed and 100 valid; RSS {rss[0]:.1f} MB after the first half, "
                  f"{rss[1]:.1f} MB after the second")
            assert rss[1] - rss[0] < 20, f"memory grew from {rss[0]:.1f} to {rss[1]:.1f} MB over the second half"
            valid = [job for _, job in stream if job is not None]
            assert all(ev.states(j)[-1] == "SUCCEEDED" for j in valid)
            assert len(daemon.window) == 0 and not daemon.stopping.is_set()
            dead = await queue_depth(s, s.dead_letter_queue)
            assert dead == len(bad), (dead, len(bad))
            conn = await aio_pika.connect(s.amqp_url)
            async with conn:
                q = await (await conn.channel()).declare_queue(s.dead_letter_queue, passive=True)
                for _ in range(50):
                    msg = await q.get(fail=False)
                    assert msg is not None and msg.headers.get("x-rmcs-reason"), msg
                    await msg.ack()
            assert sorted(cluster.jobs) == sorted(valid)
    finally:
        await server.stop()
