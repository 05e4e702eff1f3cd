"""The helper's process-wide state: the configuration in use, the jobs this process submitted,
and the jobs each active `graceful_shutdown_on_keyboard_interrupt` call submitted."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import OrderedDict

from .config import ProducerConfig, load_config

_state_lock = threading.Lock()
_config: ProducerConfig | None = None
_lazy = False
_OURS: "OrderedDict[str, None]" = OrderedDict()   # submitted by this process, newest last
_OURS_MAX = 100_000
# One list per active call of a function decorated with graceful_shutdown_on_keyboard_interrupt
# (outermost first); a submission is added to each of them.
TRACK: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar("rmcs_producers_track", default=())


def set_config(config: ProducerConfig | None, lazy: bool = False) -> None:
    global _config, _lazy
    with _state_lock:
        _config, _lazy = config, lazy


def config_for_use() -> tuple[ProducerConfig, bool]:
    """The configuration; lazily from the environment (or the defaults) when nobody called
    initialize_scheduler_environment. Returns (config, loaded_lazily)."""
    global _config, _lazy
    with _state_lock:
        if _config is None:
            try:
                _config, _lazy = load_config(None), True
            except Exception as exc:
                raise RuntimeError("the scheduler environment is not initialised and lazy initialisation "
                                   f"from RMCS_AMQP_URL / RMCS_HTTP_ADDR failed: {exc}; call "
                                   "initialize_scheduler_environment(config_file_path=...)") from None
        return _config, _lazy


def note_submitted(sid: str) -> None:
    with _state_lock:
        _OURS[sid] = None
        _OURS.move_to_end(sid)
        while len(_OURS) > _OURS_MAX:
            _OURS.popitem(last=False)


def forget_submitted(sid: str) -> None:
    """A job deleted: no longer PENDING-until-seen for this process."""
    with _state_lock:
        _OURS.pop(sid, None)


def is_ours(sid: str) -> bool:
    with _state_lock:
        return sid in _OURS


def track(sid: str) -> None:
    """Remember `sid` for every active decorated call of this context (before publishing, so
    an interrupt during the publish still stops it)."""
    for tracked in TRACK.get():
        tracked.append(sid)


def untrack(sid: str) -> None:
    for tracked in TRACK.get():
        with contextlib.suppress(ValueError):
            tracked.remove(sid)
