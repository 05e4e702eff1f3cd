"""The status store: idempotent, monotonic, paginated."""

from __future__ import annotations

import time

import pytest

from pgkit import create_database, database_url, drop_database
from producers.packages import package_name
from scheduler_daemon.status.pgstore import PgStatusStore
from scheduler_daemon.status.store import BadQuery, ListQuery, SqliteStatusStore, decode_cursor, encode_cursor


def ev(sid: str, state: str, attempt: int = 1, cluster: str | None = "c1", ts: str = "2026-01-01T00:00:00.000Z",
       final: bool = False, tags: list[str] | None = None) -> dict:
    return {"event": f"job.{state.lower()}.{cluster or '_'}", "state": state, "submission_id": sid,
            "job_id": f"job-{sid}", "cluster": cluster, "attempt": attempt, "ts": ts, "message": None,
            "final": final, "tags": tags or [], "metadata": {}, "priority": 0, "resource_requirements": {"CPU": 1}}


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    """Each test runs on both stores: SQLite (one host) and PostgreSQL (shared)."""
    db = None
    if request.param == "sqlite":
        s = SqliteStatusStore(tmp_path / "status.db")
    else:
        db = await create_database()
        s = PgStatusStore(database_url(db))
    await s.open()
    yield s
    await s.close()
    if db is not None:
        await drop_database(db)


async def test_duplicates_and_out_of_order_never_move_backwards(store):
    assert await store.apply(ev("a", "ACCEPTED", cluster=None, ts="2026-01-01T00:00:01.000Z"))
    assert await store.apply(ev("a", "RUNNING", ts="2026-01-01T00:00:03.000Z"))
    assert not await store.apply(ev("a", "DISPATCHED", ts="2026-01-01T00:00:02.000Z"))  # late
    assert not await store.apply(ev("a", "RUNNING", ts="2026-01-01T00:00:03.000Z"))     # duplicate
    assert await store.apply(ev("a", "SUCCEEDED", final=True, ts="2026-01-01T00:00:04.000Z"))
    assert not await store.apply(ev("a", "RUNNING", ts="2026-01-01T00:00:05.000Z"))
    job = await store.get("a")
    assert job.state == "SUCCEEDED" and job.final and job.cluster == "c1"
    assert [t.state for t in job.transitions] == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]


async def test_a_retry_moves_to_the_next_attempt(store):
    for e in (ev("r", "ACCEPTED", cluster=None), ev("r", "DISPATCHED"), ev("r", "FAILED"), ev("r", "RETRYING"),
              ev("r", "ACCEPTED", attempt=2, cluster=None), ev("r", "DISPATCHED", attempt=2, cluster="c2"),
              ev("r", "SUCCEEDED", attempt=2, cluster="c2", final=True)):
        await store.apply(e)
    assert not await store.apply(ev("r", "FAILED"))  # attempt 1, late duplicate
    job = await store.get("r")
    assert (job.state, job.attempt, job.cluster, job.final) == ("SUCCEEDED", 2, "c2", True)


async def test_pages_return_every_job_once_while_jobs_are_added(store):
    for i in range(10):
        await store.apply(ev(f"j{i}", "ACCEPTED", cluster=None, tags=["even"] if i % 2 == 0 else []))
    seen, cursor, added = [], None, 0
    while True:
        page = await store.list(ListQuery(limit=3, cursor=cursor))
        seen += [j.submission_id for j in page.jobs]
        await store.apply(ev(f"new{added}", "ACCEPTED", cluster=None))
        added += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen))
    assert {f"j{i}" for i in range(10)} <= set(seen)
    evens = await store.list(ListQuery(tag="even", limit=100))
    assert [j.submission_id for j in evens.jobs] == [f"j{i}" for i in range(0, 10, 2)]


async def test_bad_queries_are_explained(store):
    for query, word in ((ListQuery(state="BOGUS"), "state"), (ListQuery(limit=0), "limit"),
                        (ListQuery(cursor="zzz"), "cursor"), (ListQuery(since="yesterday"), "since")):
        with pytest.raises(BadQuery, match=word):
            await store.list(query)
    assert decode_cursor(encode_cursor(42)) == 42


async def test_what_the_dashboard_asks_newest_first_activity_and_health_history(store):
    for i in range(5):
        await store.apply(ev(f"n{i}", "DISPATCHED", ts=f"2026-01-01T00:00:0{i}.000Z"))
    await store.apply(ev("n0", "SUCCEEDED", final=True, ts="2026-01-01T00:00:09.000Z"))
    first = await store.list(ListQuery(limit=2, newest_first=True))
    assert [j.submission_id for j in first.jobs] == ["n4", "n3"]
    rest = await store.list(ListQuery(limit=10, newest_first=True, cursor=first.next_cursor))
    assert [j.submission_id for j in rest.jobs] == ["n2", "n1", "n0"] and rest.next_cursor is None
    assert await store.activity("2026-01-01T00:00:02Z") == {"dispatched": 3, "finished": 1}
    from scheduler_daemon.status.store import HEALTH_KEPT

    for i in range(HEALTH_KEPT + 5):
        await store.set_cluster_health("c1", "down" if i % 2 else "up", f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", None)
    history = await store.cluster_history(per_cluster=HEALTH_KEPT + 10)
    assert len(history["c1"]) == HEALTH_KEPT  # the oldest are dropped
    assert history["c1"][0]["ts"] > history["c1"][-1]["ts"]  # newest first


async def test_packages_are_kept_used_and_forgotten(store):
    name = package_name(b"zip bytes")
    assert await store.package_size(name) is None and await store.package(name) is None
    assert await store.put_package(name, b"zip bytes") is True
    assert await store.put_package(name, b"zip bytes") is False  # kept already
    assert await store.package_size(name) == len(b"zip bytes")
    assert await store.prune_packages(time.time() - 60) == 0
    assert await store.package(name) == b"zip bytes"  # a use keeps it longer
    assert await store.prune_packages(time.time() + 1) == 1
    assert await store.package(name) is None


async def test_forget_takes_only_a_final_job_with_everything_it_had(store):
    await store.apply(ev("f-1", "ACCEPTED", cluster=None))
    assert await store.forget("f-1") is False  # not ended
    await store.apply(ev("f-1", "DISPATCHED", cluster="c"))
    await store.apply(ev("f-1", "SUCCEEDED", cluster="c", final=True))
    await store.put_log_tail("f-1", 1, "c", "the end", False)
    assert await store.forget("f-1") is True
    assert await store.get("f-1") is None and await store.log_tail("f-1") is None
    assert await store.forget("f-1") is False
