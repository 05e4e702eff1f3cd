"""Seed 000's API, synchronous: no event loop needed in the caller.

The broker connection and the HTTP session live on one private asyncio loop in a daemon
thread ("rmcs-producers"); each call runs a coroutine there and blocks until it ends. Ctrl+C
in the calling thread cancels that coroutine.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import logging
import os
import threading
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from . import _core
from ._core import Client, build_job, check_submission_id
from .config import ProducerConfig, load_config

log = logging.getLogger("producers")
T = TypeVar("T")
STOP_REASON = "interrupted (Ctrl+C) in the submitting program"


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="rmcs-producers", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("the synchronous producer API cannot be called from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:  # the builtin TimeoutError: the work's own, or ours
            if future.done():
                raise
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g}s") from None
        except BaseException:  # KeyboardInterrupt in the caller: do not leave the work running
            future.cancel()
            raise


_lock = threading.RLock()
_thread: _LoopThread | None = None
_client: Client | None = None
_pid = os.getpid()


def _loop_thread() -> _LoopThread:
    global _thread, _client, _pid
    with _lock:
        if _pid != os.getpid():  # forked: the parent's thread and connections are not ours
            _thread, _client, _pid = None, None, os.getpid()
        if _thread is None or not _thread.thread.is_alive():
            _thread, _client = _LoopThread(), None
        return _thread


def _current() -> tuple[_LoopThread, Client]:
    global _client
    config, lazy = _core.config_for_use()
    with _lock:
        runner = _loop_thread()
        if _client is None or _client.config is not config:
            old, _client = _client, Client(config, lazy)
            if old is not None:
                asyncio.run_coroutine_threadsafe(old.close(), runner.loop)
        return runner, _client


def _call(work: Callable[[Client], Awaitable[T]]) -> T:
    runner, client = _current()
    return runner.run(work(client))


# ---- the API -----------------------------------------------------------------------------------

def initialize_scheduler_environment(config_file_path: str | os.PathLike[str] | None = None,
                                     **settings: Any) -> ProducerConfig:
    """Point the helper at a broker and a daemon and connect to the broker.

    `config_file_path`: a YAML file with any of amqp_url, http_addr, intake_exchange,
    intake_routing_key, events_exchange, connect_timeout_s, request_timeout_s (the daemon's
    settings file works), or a clusters.yaml. Then RMCS_<KEY> environment variables, then
    keyword `settings`, win. Without a file: the environment, else the defaults.
    Returns the configuration in use (its repr hides the broker password).
    Raises FileNotFoundError / ValueError for a bad file, RuntimeError if the broker cannot be reached.
    """
    config = load_config(config_file_path, **settings)
    _core.set_config(config)
    _call(lambda c: c.connect())
    return config


def shutdown_scheduler_environment() -> None:
    """Close the connections and forget the configuration (the next call initialises lazily)."""
    global _client
    with _lock:
        client, _client = _client, None
        runner = _thread
    _core.set_config(None)
    if client is not None and runner is not None and runner.thread.is_alive():
        with _suppress_all():
            runner.run(client.close(), timeout=5)


def submit_job(entrypoint: str, runtime_env: dict[str, Any] | None = None, job_id: str | None = None,
               metadata: dict[str, str] | None = None, submission_id: str | None = None,
               preferred_cluster: str | None = None, resource_requirements: dict[str, float] | None = None,
               tags: list[str] | None = None, *, priority: int | str | None = None, max_retries: int | None = None,
               cluster_tags: list[str] | None = None, queue_timeout_s: float | None = None) -> str:
    """Queue one job; returns its submission id once the broker has confirmed the message.
    ValueError for an invalid job (a script named by a relative path, ...); RuntimeError when
    the broker cannot be reached or the helper cannot initialise."""
    body, amqp_priority = build_job(entrypoint, runtime_env, job_id, metadata, submission_id, preferred_cluster,
                                    resource_requirements, tags, priority=priority, max_retries=max_retries,
                                    cluster_tags=cluster_tags, queue_timeout_s=queue_timeout_s)
    sid = body["submission_id"]
    _core.track(sid)
    try:
        return _call(lambda c: c.submit(body, amqp_priority, submission_id is not None))
    except Exception:
        _core.untrack(sid)
        raise


def get_job_status(submission_id: str, cluster_name: str | None = None) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED or UNKNOWN. `cluster_name` is accepted for
    seed 000 compatibility and ignored: the daemon knows where the job went."""
    check_submission_id(submission_id)
    return _call(lambda c: c.status(submission_id))


def get_job_info(submission_id: str, cluster_name: str | None = None) -> dict[str, Any] | None:
    """The job's details: Ray-style `status`, rmcs `state`, `cluster`, `attempt`, `final`,
    `message`, `transitions`, ..., and `logs` (None when its cluster has none to give).
    None if the daemon does not know the job and this process did not submit it."""
    check_submission_id(submission_id)
    return _call(lambda c: c.info(submission_id))


def stop_job(submission_id: str, cluster_name: str | None = None) -> bool:
    """Stop (or, before dispatch, cancel) a job. True if the daemon took the request; False if
    the job had already ended or its cluster refused."""
    check_submission_id(submission_id)
    return _call(lambda c: c.stop(submission_id))


def wait_for_all_jobs(submission_ids: Iterable[str], check_interval: float = 5,
                      timeout: float | None = None) -> bool:
    """Block until every job has ended. True if all succeeded; RuntimeError naming those that
    did not; TimeoutError after `timeout` seconds. Follows the jobs' events as they happen;
    `check_interval` is the poll interval used only while the event stream is broken."""
    ids = list(submission_ids) if not isinstance(submission_ids, str) else submission_ids
    return _call(lambda c: c.wait(ids, check_interval, timeout))


# ---- Ctrl+C --------------------------------------------------------------------------------------

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
            token = _core.TRACK.set(_core.TRACK.get() + (mine,))
            try:
                return await func(*args, **kwargs)
            except (KeyboardInterrupt, asyncio.CancelledError):
                if mine:
                    from . import aio
                    await aio._stop_submitted(mine, func.__qualname__)
                raise
            finally:
                _core.TRACK.reset(token)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mine: list[str] = []
        token = _core.TRACK.set(_core.TRACK.get() + (mine,))
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            if mine:
                _stop_submitted(mine, func.__qualname__)
            raise
        finally:
            _core.TRACK.reset(token)

    return wrapper  # type: ignore[return-value]


def _stop_submitted(ids: list[str], where: str) -> None:
    ids = list(dict.fromkeys(ids))
    log.warning("interrupted: stopping %d job(s) submitted by %s: %s", len(ids), where, ", ".join(ids))
    try:
        runner, client = _current()
        left = runner.run(client.request_stops(ids, STOP_REASON), timeout=60)
    except Exception as exc:
        log.error("could not stop the jobs submitted by %s: %s", where, exc)
        return
    if left:
        log.error("could not ask for a stop of: %s", ", ".join(left))


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)


@atexit.register
def _close_at_exit() -> None:
    with _lock:
        client, runner = _client, _thread
    if client is not None and runner is not None and runner.thread.is_alive() and _pid == os.getpid():
        with _suppress_all():
            runner.run(client.close(), timeout=2)
