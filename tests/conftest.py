"""Fixtures that run the real server in a subprocess and drive it with real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Clients, ServerProcess


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with extra `CHAT_*` settings; all stop after the test.

    At teardown each server's log must be free of tracebacks, because a handler
    that raises is a bug even when the client got an `internal_error` reply.
    """
    servers: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        data_dir = tmp_path / f"server{len(servers)}"
        data_dir.mkdir()
        server = ServerProcess(data_dir, env)
        try:
            server.start()
        except BaseException:
            server.stop()
            server.drop_database()
            raise
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    try:
        for server in servers:
            log = server.log()
            if not server.expect_tracebacks:
                assert "Traceback" not in log, log[-5000:]
    finally:
        for server in servers:
            server.drop_database()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


@pytest.fixture
async def clients(server: ServerProcess) -> AsyncIterator[Clients]:
    group = Clients(server)
    yield group
    await group.close()


@pytest.fixture
async def clients_on(
    server_factory: Callable[..., ServerProcess],
) -> AsyncIterator[Callable[..., Clients]]:
    """Start a server with extra `CHAT_*` settings and return clients for it."""
    groups: list[Clients] = []

    def start(**env: str) -> Clients:
        group = Clients(server_factory(**env))
        groups.append(group)
        return group

    yield start
    for group in groups:
        await group.close()
