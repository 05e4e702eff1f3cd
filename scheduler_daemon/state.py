"""The journal named by `state_url`: SQLite under `state_dir` (`sqlite:`, the default for one
host) or PostgreSQL (`postgresql://...`), shared by the daemons of a failover group on several
hosts. Each daemon keeps only its own scratch in `state_dir`."""

from __future__ import annotations

from .journal import Journal
from .journal_base import JournalStore
from .pgjournal import PgJournal
from .settings import Settings


def journal_for(settings: Settings) -> JournalStore:
    if settings.shared_state:
        return PgJournal(settings.state_url)
    return Journal(f"{settings.state_dir}/daemon.db", exclusive=not settings.failover)
