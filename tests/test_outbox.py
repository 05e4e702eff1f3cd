"""The event outbox and the SQLite thread: order, batching, and what happens when the broker
or a statement fails. Against stand-ins, so that the failures can be placed exactly; then the
outbox's wire against the real broker. The real journal is exercised by the daemon tests and
tests/faults."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

from scheduler_daemon.amqp_wire import AmqpWire
from scheduler_daemon.dbthread import DbThread
from scheduler_daemon.events import ClusterEvent, EventPublisher, JobEvent, PublishAborted
from scheduler_daemon.journal import IdFilter, Journal, Tracked
from scheduler_daemon.jobs import Job, JobState
from support import AMQP_URL

pytestmark = pytest.mark.usefixtures("rabbitmq")


class Broker:
    """An exchange whose publishes succeed, fail, or wait, as the test says."""

    def __init__(self) -> None:
        self.confirmed: list[str] = []
        self.calls = 0
        self.fail_calls = range(0)  # the publishes (numbered from 0) that fail
        self.down = False
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish_batch(self, items: list[Any]) -> list[asyncio.Future[None]]:
        if self.down:
            raise ConnectionError("channel closed")
        confirms = []
        for routing_key, _body, _properties in items:
            call, self.calls = self.calls, self.calls + 1
            confirms.append(asyncio.ensure_future(self._confirm(call, routing_key)))
        return confirms

    async def _confirm(self, call: int, routing_key: str) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            if self.down or call in self.fail_calls:
                raise ConnectionError("channel closed")
            self.confirmed.append(routing_key)
        finally:
            self.in_flight -= 1


def cluster(i: int) -> ClusterEvent:
    return ClusterEvent(f"c{i}", "up")


@pytest.fixture
async def outbox() -> Any:
    broker, closed = Broker(), asyncio.Event()
    publisher = EventPublisher(broker, closed, retry_s=0.01)
    sender = asyncio.create_task(publisher.run())
    yield broker, publisher, closed
    closed.set()
    await asyncio.wait_for(sender, 5)


async def test_events_go_out_in_order_many_per_confirm_wait(outbox: Any) -> None:
    broker, publisher, _ = outbox
    broker.gate.clear()  # the broker holds its confirms while the burst is sent
    futures = [publisher.send(cluster(i)) for i in range(300)]
    await asyncio.sleep(0.05)
    broker.gate.set()
    await asyncio.gather(*futures)
    assert broker.confirmed == [f"cluster.up.c{i}" for i in range(300)]
    assert broker.most_in_flight > 100  # not one confirm wait per event
    assert publisher.published == 300


async def test_unconfirmed_events_go_again_first_and_in_order(outbox: Any) -> None:
    """A channel that closes fails every publish it has not confirmed: the tail of the batch.
    That tail goes again, in its order, before anything sent since, so the broker sees the
    events in the order they were sent."""
    broker, publisher, _ = outbox
    broker.fail_calls = range(20, 50)
    first = [publisher.send(cluster(i)) for i in range(50)]
    await asyncio.sleep(0.001)
    later = [publisher.send(cluster(i)) for i in range(50, 60)]
    await asyncio.gather(*first, *later)
    assert broker.confirmed == [f"cluster.up.c{i}" for i in range(60)]
    assert broker.calls == 90  # 30 sent twice


async def test_a_refused_publish_is_not_overtaken_by_a_later_event_of_the_same_job(outbox: Any) -> None:
    """The broker can refuse one publish (a nack) and confirm the rest of the batch: a batch
    holds one event per job or cluster, so the later event of the same one waits for it."""
    broker, publisher, _ = outbox
    broker.fail_calls = range(0, 1)  # the first publish is refused
    events = [ClusterEvent("a", "degraded"), ClusterEvent("b", "up"), ClusterEvent("a", "down")]
    await asyncio.gather(*(publisher.send(e) for e in events))
    assert broker.confirmed == ["cluster.up.b", "cluster.degraded.a", "cluster.down.a"]


async def test_a_broker_outage_keeps_events_until_it_is_back(outbox: Any) -> None:
    broker, publisher, _ = outbox
    broker.down = True
    futures = [publisher.send(cluster(i)) for i in range(10)]
    await asyncio.sleep(0.1)  # several retries
    assert not any(f.done() for f in futures)
    broker.down = False
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert broker.confirmed == [f"cluster.up.c{i}" for i in range(10)]
    await asyncio.wait_for(publisher.flush(), 1)


async def test_closing_gives_up_on_what_the_broker_never_confirmed(outbox: Any) -> None:
    broker, publisher, closed = outbox
    broker.down = True
    waiting = publisher.send(cluster(1))
    await asyncio.sleep(0.05)
    closed.set()
    with pytest.raises(PublishAborted):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(PublishAborted):
        await publisher.send(cluster(2))
    await asyncio.wait_for(publisher.flush(), 1)


async def test_the_wire_puts_batches_on_the_real_broker_in_order_with_the_contract_properties() -> None:
    """AmqpWire against RabbitMQ: a burst goes out in order, persistent, as JSON, with a message
    id each and the job's correlation id; a body larger than a frame arrives whole; on a closed
    channel nothing is confirmed, and closing gives the event up."""
    conn = await aio_pika.connect(AMQP_URL)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.declare_exchange(f"test.wire.{uuid.uuid4().hex[:8]}", aio_pika.ExchangeType.TOPIC,
                                       auto_delete=True)
        q = await ch.declare_queue(exclusive=True)
        await q.bind(ex, "#")
        closed = asyncio.Event()
        outbox = EventPublisher(AmqpWire(lambda: ex), closed)
        sender = asyncio.create_task(outbox.run())
        events: list[ClusterEvent | JobEvent] = [ClusterEvent(f"c{i}", "up", "x" * 10) for i in range(400)]
        events[7] = ClusterEvent("big", "down", "x" * 300_000)  # three frames at RabbitMQ's frame size
        events.append(JobEvent(JobState.ACCEPTED, "s1", "j1", None, correlation_id="corr-1"))
        await asyncio.wait_for(asyncio.gather(*(outbox.send(e) for e in events)), 10)
        got = []
        async with q.iterator() as messages:
            async for m in messages:
                await m.ack()
                got.append(m)
                if len(got) == len(events):
                    break
        assert [m.routing_key for m in got] == [e.routing_key for e in events]
        assert len(orjson.loads(got[7].body)["message"]) == 300_000
        assert all(m.content_type == "application/json" and m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                   for m in got)
        assert len({m.message_id for m in got}) == len(events) and got[-1].correlation_id == "corr-1"
        assert outbox.unconfirmed == 0 and outbox.published == len(events)
        await ch.close()
        lost = outbox.send(ClusterEvent("late", "up"))
        await asyncio.sleep(0.2)
        assert not lost.done() and outbox.unconfirmed == 1  # kept, tried again
        closed.set()
        with pytest.raises(PublishAborted):
            await asyncio.wait_for(lost, 5)
        await asyncio.wait_for(sender, 5)


# ---- the SQLite thread ------------------------------------------------------------------------

def _setup(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")


async def test_a_burst_of_writes_shares_few_commits(tmp_path: Path) -> None:
    db = DbThread(tmp_path / "t.sqlite", "test-db", _setup)
    await db.open()
    try:
        writes = [db.run(lambda c, i=i: c.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", i))) for i in range(500)]
        await asyncio.gather(*writes)
        assert db.batches < 10
        assert await db.run(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0], read=True) == 500
    finally:
        await db.close()
    again = sqlite3.connect(tmp_path / "t.sqlite")  # committed, on disk
    assert again.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 500


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    db = DbThread(tmp_path / "t.sqlite", "test-db", _setup)
    await db.open()
    try:
        def both(c: sqlite3.Connection) -> None:  # its first statement must be undone too
            c.execute("INSERT INTO t VALUES ('half', 1)")
            c.execute("INSERT INTO t VALUES ('a', 2)")  # 'a' exists by then: fails

        ops = [db.run(lambda c: c.execute("INSERT INTO t VALUES ('a', 1)")), db.run(both),
               db.run(lambda c: c.execute("INSERT INTO t VALUES ('b', 1)"))]
        results = await asyncio.gather(*ops, return_exceptions=True)
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
        rows = await db.run(lambda c: sorted(r[0] for r in c.execute("SELECT k FROM t")), read=True)
        assert rows == ["a", "b"]
    finally:
        await db.close()


# ---- the journal's id filter ------------------------------------------------------------------

def test_id_filter_never_forgets_and_rarely_imagines() -> None:
    ids = IdFilter(10_000)
    for i in range(10_000):
        ids.add(f"sub-{i}")
    assert all(f"sub-{i}" in ids for i in range(10_000))
    imagined = sum(f"other-{i}" in ids for i in range(10_000))
    assert imagined < 300  # about 1% at capacity


async def test_journal_looks_up_a_new_id_without_reading_the_database(tmp_path: Path) -> None:
    """The filter answers for ids this journal never wrote; a second writer (a failover pair)
    turns it off, so a row written by the other daemon is found."""
    path = tmp_path / "j.sqlite"
    job = Job(submission_id="elsewhere", job_id="j", entrypoint="echo hi", resources={"CPU": 1.0})
    mine, shared = Journal(path), Journal(path, exclusive=False)
    await mine.open()
    await shared.open()
    try:
        await shared.record(Tracked(job, "c", "n", JobState.DISPATCHED))
        assert (await shared.lookup("elsewhere")).tracked is not None
        assert (await mine.lookup("elsewhere")).tracked is None  # written after `mine` opened
        await mine.record(Tracked(job, "c", "n", JobState.RUNNING))
        assert (await mine.lookup("elsewhere")).tracked.state == JobState.RUNNING  # type: ignore[union-attr]
    finally:
        await mine.close()
        await shared.close()


async def test_a_late_confirm_never_writes_an_older_state_over_a_newer_one(tmp_path: Path) -> None:
    """A job seen RUNNING and SUCCEEDED in one tracking look: RUNNING's confirm can arrive while
    SUCCEEDED is being written. Marking RUNNING published must not put it back, in the journal
    or in memory (the job would be followed again and could end twice)."""
    from scheduler_daemon.daemon import Daemon
    from scheduler_daemon.settings import ClusterConfig
    from support import make_settings

    d = Daemon(make_settings(tmp_path), (ClusterConfig("c", "http://127.0.0.1:1"),))
    confirms: list[asyncio.Future[None]] = []

    def send(event: Any) -> asyncio.Future[None]:
        confirms.append(asyncio.get_running_loop().create_future())
        return confirms[-1]

    d.publisher.send = send  # type: ignore[method-assign]
    await d.journal.open()
    try:
        job = Job(submission_id="short", job_id="j", entrypoint="echo hi", resources={"CPU": 1.0})
        running = await d.book.record(Tracked(job, "c", "n", JobState.RUNNING), published=False)
        d.book.send(job, JobState.RUNNING, "c")
        d.book.confirm_later(running)
        succeeding = asyncio.create_task(d.book.record(running.moved(JobState.SUCCEEDED, final=True),
                                                       published=False))
        await asyncio.sleep(0)  # SUCCEEDED's write is queued, not done
        confirms[0].set_result(None)  # RUNNING is confirmed now
        await succeeding
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert d.book.tracked["short"].state == JobState.SUCCEEDED
        kept = await d.journal.get("short")
        assert kept is not None and kept.state == JobState.SUCCEEDED and kept.final
    finally:
        await d.journal.close()


async def test_journal_rebuilds_its_id_filter_once_past_capacity(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    await journal.open()
    try:
        journal._ids = IdFilter(0)  # a small one (1,024 ids), to pass it quickly
        base = Job(submission_id="x", job_id="j", entrypoint="echo hi", resources={"CPU": 1.0})
        await asyncio.gather(*(journal.record(Tracked(replace(base, submission_id=f"s{i}"), "c", "n",
                                                      JobState.RUNNING)) for i in range(1100)))
        assert journal._ids.count > journal._ids.capacity
        await journal.prune(0.0)  # removes nothing, but the filter is full
        assert journal._ids.capacity > 100_000 and journal._ids.count == 1100
        assert all(f"s{i}" in journal._ids for i in range(1100))
    finally:
        await journal.close()
