"""The journal named by `state_url`: SQLite under `state_dir` (`sqlite:`, the default for one
host) or PostgreSQL (`postgresql://...`), shared by the daemons of a failover group on several
hosts. Each daemon keeps only its own scratch in `state_dir`."""

from __future__ import annotations

from .dblease import DbLeadership
from .journal import Journal
from .journal_base import JournalStore
from .leadership import Leadership
from .pgjournal import PgJournal
from .settings import Settings


def journal_for(settings: Settings) -> JournalStore:
    if settings.shared_state:
        # A session frozen inside a write is ended within a lease: it cannot hold off a takeover.
        return PgJournal(settings.state_url, idle_in_transaction_s=2 * settings.leader_tick_s * 3,
                         exclusive=not settings.failover)
    return Journal(f"{settings.state_dir}/daemon.db", exclusive=not settings.failover)


def leadership_for(settings: Settings) -> Leadership | DbLeadership | None:
    """With failover: a lease in the database, with fencing, where the state is shared; else the
    broker-side lease of one host."""
    if not settings.failover:
        return None
    return DbLeadership(settings) if settings.shared_state else Leadership(settings)
