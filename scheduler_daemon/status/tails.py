"""Log tails: the end of each job's logs, kept when the job ends.

Ray serves a job's logs from the node that ran it, so they vanish from its REST API once that
node is removed (an autoscaling cluster scales down), and when rmcs deletes the job from Ray after
`ray_job_retention_s`. When an attempt ends on its cluster (its event says SUCCEEDED, FAILED or
STOPPED), the status service reads its logs there, as they come (`logtail`: bounded memory,
however large the log), and keeps their last `log_tail_bytes` in its store;
`GET /api/v1/jobs/<id>/logs` (and so `rmcs logs`) answers from them when the cluster no longer
can. It is the status service's work, not the scheduler's: a read per ended job cost the
scheduler's process 0.3-0.4 ms of CPU per job, 12-17% of its dispatch rate (bench/README.md,
"Eighth round"). Each service keeps the tails of the events it consumes, into its own store (or the
shared one). Best effort, and bounded: the ends wait in a queue of QUEUE_SIZE read by WORKERS
tasks; when it is full an end is skipped (counted in `skipped`), so a burst never holds memory.
Tails older than `journal_retention_s` are forgotten.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, NamedTuple

import structlog

from ..jobs import attempt_ray_id
from ..rayapi import RayDashboard, RayError
from ..settings import Settings
from ..tasks import pause
from .logtail import log_tail
from .store import StatusStore

log = structlog.get_logger("rmcs.logtails")

QUEUE_SIZE = 1000
WORKERS = 2
FETCH_TIMEOUT_S = 10.0
PRUNE_EVERY_S = 3600.0
ENDED = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})  # an attempt that ran on its cluster and ended


class Ended(NamedTuple):
    submission_id: str
    attempt: int
    cluster: str


def tail_of(text: str, limit: int) -> tuple[str, bool]:
    """The last `limit` bytes of `text` (UTF-8, cut at a character), and whether it was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    return data[-limit:].decode("utf-8", "ignore"), True


class LogKeeper:
    """`dashboard_of(cluster)`: the service's client for a configured cluster, None otherwise."""

    def __init__(self, settings: Settings, dashboard_of: Callable[[str], RayDashboard | None],
                 store: StatusStore) -> None:
        self.settings = settings
        self.dashboard_of = dashboard_of
        self.store = store
        self._ended: asyncio.Queue[Ended] = asyncio.Queue(QUEUE_SIZE)
        self.kept = 0
        self.skipped = 0

    def event(self, event: dict[str, object]) -> None:
        """A job event the status store has taken: an attempt that ended on a cluster has its log
        tail kept (soon, without waiting)."""
        if self.settings.log_tail_bytes <= 0 or event.get("state") not in ENDED:
            return
        sid, attempt, cluster = event.get("submission_id"), event.get("attempt", 1), event.get("cluster")
        if not isinstance(sid, str) or not isinstance(cluster, str) or not isinstance(attempt, int):
            return
        try:
            self._ended.put_nowait(Ended(sid, attempt, cluster))
        except asyncio.QueueFull:
            self.skipped += 1

    async def run(self, stopping: asyncio.Event) -> None:
        workers = [asyncio.create_task(self._work(), name=f"log-tails-{i}") for i in range(WORKERS)]
        try:
            while not await pause(stopping, PRUNE_EVERY_S):
                removed = await self.store.prune_log_tails(time.time() - self.settings.journal_retention_s)
                if removed:
                    log.info("log tails pruned", count=removed)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            ended = await self._ended.get()
            try:
                await self.keep(ended)
            except Exception as exc:  # one job's tail is not worth a dead worker
                log.warning("log tail not kept", submission_id=ended.submission_id, error=repr(exc))

    async def keep(self, ended: Ended) -> bool:
        dashboard = self.dashboard_of(ended.cluster)
        if dashboard is None:
            return False
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                # Read as it comes, keeping its end: a log of hundreds of MB costs no more memory.
                text, shortened = await log_tail(dashboard, attempt_ray_id(ended.submission_id, ended.attempt),
                                                 self.settings.log_tail_bytes)
        except (RayError, TimeoutError) as exc:
            log.info("logs not read at the job's end", submission_id=ended.submission_id, cluster=ended.cluster,
                     error=str(exc) or type(exc).__name__)
            return False
        tail, cut = tail_of(text, self.settings.log_tail_bytes)
        await self.store.put_log_tail(ended.submission_id, ended.attempt, ended.cluster, tail, cut or shortened)
        self.kept += 1
        return True
