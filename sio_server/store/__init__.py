"""Persistence behind one interface; `create_store` picks the backend from a URL."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import Store
from .postgres import PostgresStore
from .sqlite import SQLiteStore

__all__ = ["PostgresStore", "SQLiteStore", "Store", "create_store", "is_supported_url"]

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
SUPPORTED_URLS = "sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"


def is_supported_url(database_url: str) -> bool:
    """Tell whether `create_store` has a backend for `database_url`."""
    return database_url.startswith((SQLITE_PREFIX, *POSTGRES_PREFIXES))


def create_store(database_url: str) -> Store:
    """Return an unopened store for `database_url`.

    `sqlite:///PATH` opens an SQLite file. A `postgresql://` or `postgres://`
    URL, in the form that libpq and asyncpg accept, opens a PostgreSQL
    database, which several server processes may share.
    """
    if database_url.startswith(SQLITE_PREFIX):
        return SQLiteStore(Path(database_url[len(SQLITE_PREFIX) :]))
    if database_url.startswith(POSTGRES_PREFIXES):
        return PostgresStore(database_url)
    raise ConfigError(
        f"unsupported database URL {database_url!r}: use {SUPPORTED_URLS}"
    )
