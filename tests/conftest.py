"""Fixtures that run the real server in a subprocess and drive it with real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, delete_redis_keys, require_nginx, require_redis
from tests.database import create_postgres_database, drop_postgres_database
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


@pytest.fixture
async def cluster_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """Start clusters of nodes behind nginx; all stop after the test.

    With `shared` true, `start(size, shared=True, redis_url=None, **env)` gives
    the nodes a new PostgreSQL database and the machine's Redis, or
    `redis_url`. Otherwise each node runs alone on its own SQLite file. At
    teardown the databases are dropped, the clusters' Redis keys deleted, and
    every node's log must be free of tracebacks.
    """
    clusters: list[Cluster] = []
    databases: list[str] = []
    # Clusters that wrote to the machine's Redis, whose keys outlive them.
    on_shared_redis: list[Cluster] = []

    async def start(
        size: int = 3, *, shared: bool = True, redis_url: str | None = None, **env: str
    ) -> Cluster:
        require_nginx()
        database_url = None
        uses_shared_redis = shared and redis_url is None
        if shared:
            redis_url = redis_url or require_redis()
            database_url = await create_postgres_database()
            databases.append(database_url)
        cluster = Cluster(
            tmp_path / f"cluster{len(clusters)}",
            size,
            database_url=database_url,
            redis_url=redis_url,
            env=env,
        )
        clusters.append(cluster)
        if uses_shared_redis:
            on_shared_redis.append(cluster)
        cluster.start()
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()
        # Nodes that run alone got a database each on the PostgreSQL pass.
        for node in cluster.nodes:
            node.drop_database()
    for database_url in databases:
        await drop_postgres_database(database_url)
    for cluster in on_shared_redis:
        assert cluster.redis_url is not None
        await delete_redis_keys(cluster.redis_url, cluster.name)
    for cluster in clusters:
        for node in cluster.nodes:
            if not node.expect_tracebacks:
                assert "Traceback" not in node.log(), node.log()[-5000:]
