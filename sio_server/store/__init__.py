"""Persistence behind one interface; `create_store` picks the backend from a URL."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import Store
from .sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "create_store"]


def create_store(database_url: str) -> Store:
    """Return an unopened store for `database_url` (`sqlite:///PATH`)."""
    prefix = "sqlite:///"
    if database_url.startswith(prefix):
        return SQLiteStore(Path(database_url[len(prefix) :]))
    raise ConfigError(f"unsupported database URL {database_url!r}: use sqlite:///PATH")
