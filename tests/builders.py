"""Small builders shared by the unit tests."""

from __future__ import annotations

from typing import Any

from scheduler_daemon.jobs import Job


def job(sid: str = "s1", **kw: Any) -> Job:
    kw.setdefault("resources", {"CPU": 1.0})
    return Job(submission_id=sid, job_id=f"job-{sid}", entrypoint="echo hi", **kw)
