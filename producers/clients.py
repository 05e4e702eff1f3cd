"""Which `Client` serves a call of the helper's API, following the configuration in `state`
(a new configuration gets a new Client, the old one is closed):

- the synchronous API: one Client on a private asyncio loop in a daemon thread ("rmcs-producers");
  each call runs a coroutine there and blocks until it ends. Ctrl+C in the calling thread
  cancels that coroutine.
- the asyncio API: one Client per caller's event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
import weakref
from typing import Any, Awaitable, Callable, TypeVar

from . import state
from .core import Client

T = TypeVar("T")


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


# ---- the synchronous API's Client ---------------------------------------------------------------

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


def sync_client() -> tuple[_LoopThread, Client]:
    global _client
    config, lazy = state.config_for_use()
    with _lock:
        runner = _loop_thread()
        if _client is None or _client.config is not config:
            old, _client = _client, Client(config, lazy)
            if old is not None:
                asyncio.run_coroutine_threadsafe(old.close(), runner.loop)
        return runner, _client


def call(work: Callable[[Client], Awaitable[T]]) -> T:
    """Run `work(client)` on the loop thread and wait for its result."""
    runner, client = sync_client()
    return runner.run(work(client))


def close_sync_client(timeout: float = 5) -> None:
    global _client
    with _lock:
        client, _client = _client, None
        runner = _thread
    if client is not None and runner is not None and runner.thread.is_alive():
        with _suppress_all():
            runner.run(client.close(), timeout=timeout)


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


# ---- the asyncio API's Clients, one per event loop ---------------------------------------------

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client]" = weakref.WeakKeyDictionary()
_closing: "set[asyncio.Task[None]]" = set()


def loop_client() -> Client:
    """The Client of the running event loop."""
    loop = asyncio.get_running_loop()
    config, lazy = state.config_for_use()
    client = _clients.get(loop)
    if client is None or client.config is not config:
        if client is not None:  # the configuration changed: drop the old connections
            task = loop.create_task(client.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        client = _clients[loop] = Client(config, lazy)
    return client


def forget_loop_client() -> Client | None:
    """Take the running loop's Client out of use (the caller closes it)."""
    return _clients.pop(asyncio.get_running_loop(), None)
