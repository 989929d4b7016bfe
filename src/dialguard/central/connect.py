"""Open the central store the configuration names (the driver imported only then)."""

from __future__ import annotations

from dialguard.central.store import CentralStore
from dialguard.config import CentralSettings

__all__ = ["open_store"]


def open_store(settings: CentralSettings) -> CentralStore:
    """The store the settings name, connected: PostgreSQL for a `url`, else the SQLite
    file. psycopg is imported only for PostgreSQL (the other commands stay light)."""
    if settings.url:
        from dialguard.central.postgres import PostgresStore

        return PostgresStore(settings.url, settings.password)
    from dialguard.central.sqlite import SqliteStore

    assert settings.path is not None
    return SqliteStore(settings.path)
