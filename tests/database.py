"""Databases for the tests: which backend they run on, and reads of stored rows.

`CHAT_TEST_DATABASE=postgres` gives every test server its own new PostgreSQL
database, created on the server at `CHAT_TEST_POSTGRES_URL` (by default the
local one, user postgres, trust authentication) and dropped after the test.
Without it, servers use an SQLite file in their data dir.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sqlite3
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sio_server.store.postgres import describe_dsn

T = TypeVar("T")

BACKENDS = ("sqlite", "postgres")
TEST_DATABASE = os.environ.get("CHAT_TEST_DATABASE", "sqlite")
if TEST_DATABASE not in BACKENDS:
    raise RuntimeError(
        f"CHAT_TEST_DATABASE={TEST_DATABASE!r} is invalid: use sqlite or postgres"
    )
POSTGRES_URL = os.environ.get(
    "CHAT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# Set in CI, where a missing database server must fail the run, not skip.
REQUIRE_SERVICES = os.environ.get("CHAT_REQUIRE_SERVICES") == "1"
# Only databases with this prefix are ever dropped.
DATABASE_PREFIX = "chat_test_"

_unreachable: str | None = None


class PostgresUnavailable(Exception):
    """The PostgreSQL server for the tests cannot be reached."""


def using_postgres() -> bool:
    """Tell whether test servers get a PostgreSQL database instead of SQLite."""
    return TEST_DATABASE == "postgres"


async def create_postgres_database() -> str:
    """Create an empty database and return its URL, or skip the test without a server.

    With `CHAT_REQUIRE_SERVICES=1` the test fails instead of skipping.
    """
    try:
        return await _create_database()
    except PostgresUnavailable as exc:
        missing(str(exc))


def create_postgres_database_sync() -> str:
    """Run `create_postgres_database` from synchronous code or a running loop."""
    try:
        return run_sync(_create_database())
    except PostgresUnavailable as exc:
        missing(str(exc))


async def drop_postgres_database(url: str) -> None:
    """Drop a database made by `create_postgres_database`, closing its sessions."""
    name = urlsplit(url).path.lstrip("/")
    if not name.startswith(DATABASE_PREFIX):
        raise ValueError(
            f"{name!r} is not a test database: only {DATABASE_PREFIX}* are dropped"
        )
    admin = await _connect_admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` in a thread of its own, so that a running loop can wait.

    Test servers are created in synchronous fixtures and inside async tests
    alike, and a fresh thread gives the coroutine an event loop in both cases.
    """
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


async def fetch_rows(
    database_url: str, query: str, *params: Any
) -> list[tuple[Any, ...]]:
    """Run one query on a server's database and return its rows as tuples.

    `query` uses PostgreSQL's `$1` placeholders, which SQLite reads as `?1`.
    """
    (rows,) = await fetch_many(database_url, [(query, params)])
    return rows


async def fetch_many(
    database_url: str, queries: Sequence[tuple[str, Sequence[Any]]]
) -> list[list[tuple[Any, ...]]]:
    """Run several queries, each with its parameters, over one connection."""
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [
                [
                    tuple(row)
                    for row in connection.execute(
                        re.sub(r"\$(\d+)", r"?\1", query), tuple(params)
                    )
                ]
                for query, params in queries
            ]
        finally:
            connection.close()
    postgres = await asyncpg.connect(database_url)
    try:
        return [
            [tuple(row) for row in await postgres.fetch(query, *params)]
            for query, params in queries
        ]
    finally:
        await postgres.close()


async def execute(database_url: str, statement: str) -> None:
    """Run one statement without parameters on a server's database and commit it."""
    if database_url.startswith("sqlite:///"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            connection.execute(statement)
            connection.commit()
        finally:
            connection.close()
        return
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _create_database() -> str:
    name = DATABASE_PREFIX + secrets.token_hex(6)
    admin = await _connect_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))


async def _connect_admin() -> asyncpg.Connection[asyncpg.Record]:
    """Connect to the database named in `CHAT_TEST_POSTGRES_URL`."""
    global _unreachable
    if _unreachable is not None:
        raise PostgresUnavailable(_unreachable)
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        _unreachable = (
            f"PostgreSQL is not reachable at {describe_dsn(POSTGRES_URL)} ({exc}):"
            " install and start it (apt-get install postgresql), or set"
            " CHAT_TEST_POSTGRES_URL to a server where its user may create"
            " databases"
        )
        raise PostgresUnavailable(_unreachable) from exc


def missing(requirement: str) -> NoReturn:
    """Skip the test for want of `requirement`, or fail it when services are required.

    `requirement` names what is missing and how to install it.
    """
    if REQUIRE_SERVICES:
        pytest.fail(f"{requirement} (CHAT_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(requirement)
