"""The status store named by `state_url`: SQLite under `state_dir` (`sqlite:`, one host), or
PostgreSQL (`postgresql://...`), shared by every daemon's status service."""

from __future__ import annotations

from ..settings import Settings
from .pgstore import PgStatusStore
from .store import SqliteStatusStore, StatusStore


def status_store(settings: Settings) -> StatusStore:
    if settings.shared_state:
        return PgStatusStore(settings.state_url)
    return SqliteStatusStore(f"{settings.state_dir}/status.db")
