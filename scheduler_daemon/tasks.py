"""Short-lived work and periodic loops, each kept by the object that started it.

`Work` holds tasks such as one dispatch or one event confirm: kept until they end, their
errors logged, waited for and cancelled at shutdown. `every` is the one loop helper: the same
error handling and the same stop-aware pause for every periodic job of the daemon.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine

import structlog

log = structlog.get_logger("rmcs.tasks")


class Work:
    """Short-lived tasks: kept, reaped, errors surfaced. `quiet` exceptions are expected ends."""

    def __init__(self, quiet: tuple[type[BaseException], ...] = ()) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._quiet = quiet

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), self._quiet):
            log.error("task failed", task=task.get_name(), error=repr(task.exception()))

    async def wait(self, timeout: float) -> None:
        """Let running work end by itself within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pause(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep, but wake at once when `stopping` is set; True if it is."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    return stopping.is_set()


async def every(name: str, interval_s: float, step: Callable[[], Awaitable[Any]],
                stopping: asyncio.Event) -> None:
    """Run `step` every `interval_s` until `stopping`; a failed step is logged and tried again."""
    while not await pause(stopping, interval_s):
        try:
            await step()
        except Exception as exc:
            log.warning("periodic step failed", step=name, error=repr(exc))
