"""Run deadlines: a job RUNNING longer than its `run_timeout_s` is stopped on its cluster.

The start counts from when the daemon first saw the job RUNNING (`Tracked.running_since`,
journaled), so the deadline holds across a restart and on the other daemon of a failover pair.
The stop goes to Ray like a user's; the STOPPED that follows gets a message naming the timeout
(`tracking.stop_message`, in the follower). A stop that did not take is sent again after
RESEND_S, as long as the job still runs.
"""

from __future__ import annotations

import time
from typing import Callable

import structlog

from .book import JobBook
from .probing import Prober
from .stopping import stop_on_cluster
from .tasks import Work
from .tracking import Tracked, overdue

log = structlog.get_logger("rmcs.timeouts")

RESEND_S = 5.0


class RunTimeouts:
    def __init__(self, book: JobBook, prober: Prober, work: Work,
                 clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.prober = prober
        self._work = work
        self.clock = clock
        self._sent: dict[str, float] = {}  # per job stopped for its timeout: when the stop was sent

    async def check(self) -> None:
        """Stop every job past its deadline (called every track interval by the daemon)."""
        now = self.clock()
        due = [t for t in self.book.tracked.values() if t.job.run_timeout_s is not None and overdue(t, now)]
        for sid in set(self._sent) - {t.job.submission_id for t in due}:
            del self._sent[sid]
        for t in due:
            sid = t.job.submission_id
            if now - self._sent.get(sid, -RESEND_S) >= RESEND_S:
                self._sent[sid] = now
                self._work.spawn(self._stop(t), f"run-timeout-{sid}")

    async def _stop(self, t: Tracked) -> None:
        limit = t.job.run_timeout_s
        with structlog.contextvars.bound_contextvars(submission_id=t.job.submission_id, cluster=t.cluster):
            log.info("run timeout passed; stopping the job", run_timeout_s=limit)
            await stop_on_cluster(self.prober, t, f"run_timeout_s={limit:g} passed")
