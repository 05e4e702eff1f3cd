"""A DAG of jobs in one call: each stage names the stages it runs after, and is submitted with
`depends_on` set to their submission ids. The daemon holds each stage as WAITING until its
dependencies have SUCCEEDED, and cancels it (naming the dependency) if one ends otherwise.

    ids = submit_pipeline({
        "prepare": {"entrypoint": "/opt/jobs/prepare.sh"},
        "train":   {"entrypoint": "/opt/jobs/train.sh", "after": ["prepare"], "resource_requirements": {"GPU": 1}},
        "report":  {"entrypoint": "/opt/jobs/report.sh", "after": ["train"]},
    })
    wait_for_all_jobs(list(ids.values()))

Stages are checked (every job built, the graph acyclic) before anything is sent, and submitted
dependencies first. Standard library only, on `submit_job` (sync) or `producers.aio.submit_job`.
"""

from __future__ import annotations

import uuid
from typing import Any, Awaitable, Callable, Mapping

from . import aio, client
from .job import build_job

Stages = Mapping[str, Mapping[str, Any]]


def plan(stages: Stages, prefix: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The stages in an order that submits every dependency first, each with its submit keyword
    arguments (`submission_id` given, `depends_on` the ids of its `after` stages). ValueError for
    an unknown stage name, a cycle, or a stage that is not a valid job."""
    tag = prefix or f"pipe_{uuid.uuid4().hex[:12]}"
    ids = {name: str(spec.get("submission_id") or f"{tag}.{name}") for name, spec in stages.items()}
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"pipeline has a cycle: {' -> '.join((*path, name))}")
        state[name] = 1
        after = stages[name].get("after") or []
        if isinstance(after, str) or not isinstance(after, (list, tuple)):
            raise ValueError(f"stage {name!r}: 'after' must be a list of stage names")
        for dep in after:
            if dep not in stages:
                raise ValueError(f"stage {name!r} runs after {dep!r}, which is not a stage of the pipeline")
            visit(dep, (*path, name))
        state[name] = 2
        order.append(name)

    for name in stages:
        visit(name, ())
    planned = []
    for name in order:
        kwargs = {k: v for k, v in stages[name].items() if k != "after"}
        kwargs["submission_id"] = ids[name]
        deps = [ids[d] for d in stages[name].get("after") or []]
        if deps:
            kwargs["depends_on"] = [*(kwargs.get("depends_on") or []), *deps]
        try:
            build_job(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"stage {name!r}: {exc}") from None
        planned.append((name, kwargs))
    return planned


def submit_pipeline(stages: Stages, *, prefix: str | None = None) -> dict[str, str]:
    """Submit a DAG of jobs; returns each stage's submission id by stage name."""
    return {name: client.submit_job(**kwargs) for name, kwargs in plan(stages, prefix)}


async def submit_pipeline_async(stages: Stages, *, prefix: str | None = None,
                                submit: Callable[..., Awaitable[str]] | None = None) -> dict[str, str]:
    """As `submit_pipeline`, for asyncio code."""
    submit = submit or aio.submit_job
    return {name: await submit(**kwargs) for name, kwargs in plan(stages, prefix)}
