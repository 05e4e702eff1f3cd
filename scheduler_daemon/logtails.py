"""Log tails: the end of each job's logs, kept when the job ends.

Ray serves a job's logs from the node that ran it, so they vanish from its REST API once that
node is removed (an autoscaling cluster scales down), and when rmcs deletes the job from Ray after
`ray_job_retention_s`. When a dispatched job ends (SUCCEEDED, FAILED or STOPPED), its logs are
read from its cluster and their last `log_tail_bytes` kept in the status store; the status
service answers `GET /api/v1/jobs/<id>/logs` (and so `rmcs logs`) from them when the cluster no
longer can. Best effort, and bounded: the ends wait in a queue of QUEUE_SIZE read by WORKERS
tasks; when it is full an end is skipped (counted in `skipped`), so a burst never holds memory
or delays dispatch. Tails older than `journal_retention_s` are forgotten.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from .probing import Prober
from .rayapi import RayError
from .settings import Settings
from .status.store import StatusStore
from .tasks import pause
from .tracking import Tracked

log = structlog.get_logger("rmcs.logtails")

QUEUE_SIZE = 1000
WORKERS = 2
FETCH_TIMEOUT_S = 10.0
PRUNE_EVERY_S = 3600.0


def tail_of(text: str, limit: int) -> tuple[str, bool]:
    """The last `limit` bytes of `text` (UTF-8, cut at a character), and whether it was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    return data[-limit:].decode("utf-8", "ignore"), True


class LogKeeper:
    def __init__(self, settings: Settings, prober: Prober, store: StatusStore) -> None:
        self.settings = settings
        self.prober = prober
        self.store = store
        self._ended: asyncio.Queue[Tracked] = asyncio.Queue(QUEUE_SIZE)
        self.kept = 0
        self.skipped = 0

    def ended(self, t: Tracked) -> None:
        """A dispatched job ended: keep its log tail (soon, without waiting)."""
        if self.settings.log_tail_bytes <= 0:
            return
        try:
            self._ended.put_nowait(t)
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
            t = await self._ended.get()
            try:
                await self.keep(t)
            except Exception as exc:  # one job's tail is not worth a dead worker
                log.warning("log tail not kept", submission_id=t.job.submission_id, error=repr(exc))

    async def keep(self, t: Tracked) -> bool:
        state = self.prober.clusters.get(t.cluster)
        if state is None:
            return False
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                text = await state.dashboard.logs(t.job.ray_submission_id)
        except (RayError, TimeoutError) as exc:
            log.info("logs not read at the job's end", submission_id=t.job.submission_id, cluster=t.cluster,
                     error=str(exc) or type(exc).__name__)
            return False
        tail, cut = tail_of(text, self.settings.log_tail_bytes)
        await self.store.put_log_tail(t.job.submission_id, t.job.attempt, t.cluster, tail, cut)
        self.kept += 1
        return True
