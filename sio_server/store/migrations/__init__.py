"""Schema migrations: one folder of numbered SQL files per database dialect."""

from __future__ import annotations

from importlib import resources


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """Return `(version, name, sql)` for each migration file of `dialect`, in order."""
    folder = resources.files(__package__) / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)
