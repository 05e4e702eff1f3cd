"""Ctrl+C in a workflow: `graceful_shutdown_on_keyboard_interrupt` stops the jobs that a call of
the decorated function submitted, for plain and for `async def` functions."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any, Callable, TypeVar

from . import clients, state

log = logging.getLogger("producers")
STOP_REASON = "interrupted (Ctrl+C) in the submitting program"
F = TypeVar("F", bound=Callable[..., Any])


def graceful_shutdown_on_keyboard_interrupt(func: F) -> F:
    """On Ctrl+C (KeyboardInterrupt) inside `func`, stop every job that this call of `func`
    submitted (queued ones are cancelled, running ones stopped), then re-raise. Works on plain
    and on `async def` functions; for the latter a cancellation (how asyncio.run delivers
    Ctrl+C to the main task) stops them too. Jobs submitted from other threads count only if
    they run in a copy of the caller's context (contextvars.copy_context().run)."""
    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            mine: list[str] = []
            token = state.TRACK.set(state.TRACK.get() + (mine,))
            try:
                return await func(*args, **kwargs)
            except (KeyboardInterrupt, asyncio.CancelledError):
                if mine:
                    await _stop_submitted_async(mine, func.__qualname__)
                raise
            finally:
                state.TRACK.reset(token)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mine: list[str] = []
        token = state.TRACK.set(state.TRACK.get() + (mine,))
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            if mine:
                _stop_submitted(mine, func.__qualname__)
            raise
        finally:
            state.TRACK.reset(token)

    return wrapper  # type: ignore[return-value]


def _stop_submitted(ids: list[str], where: str) -> None:
    ids = list(dict.fromkeys(ids))
    log.warning("interrupted: stopping %d job(s) submitted by %s: %s", len(ids), where, ", ".join(ids))
    try:
        runner, client = clients.sync_client()
        left = runner.run(client.request_stops(ids, STOP_REASON), timeout=60)
    except Exception as exc:
        log.error("could not stop the jobs submitted by %s: %s", where, exc)
        return
    if left:
        log.error("could not ask for a stop of: %s", ", ".join(left))


async def _stop_submitted_async(ids: list[str], where: str) -> None:
    ids = list(dict.fromkeys(ids))
    log.warning("interrupted: stopping %d job(s) submitted by %s: %s", len(ids), where, ", ".join(ids))
    try:
        async with asyncio.timeout(60):
            left = await clients.loop_client().request_stops(ids, STOP_REASON)
    except Exception as exc:
        log.error("could not stop the jobs submitted by %s: %s", where, exc)
        return
    if left:
        log.error("could not ask for a stop of: %s", ", ".join(left))
