"""Several server nodes behind nginx, and the services that a cluster needs.

Tests that need nginx or Redis skip with a message naming what to install
when it is missing, and fail instead when CHAT_REQUIRE_SERVICES=1, as
tests/database.py does for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from redis import asyncio as aioredis

from deploy.nginx import NginxProcess, find_nginx
from tests.database import missing
from tests.support import ServerProcess, bind_session, free_port

# The machine's Redis. Each cluster gets its own key prefix in it, and its
# own PostgreSQL database from tests/database.py.
REDIS_URL = os.environ.get("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Loopback addresses that clients connect from, so that nginx's hash of the
# client address spreads them over the nodes.
SOURCE_ADDRESSES = [f"127.0.0.{n}" for n in range(2, 255)]
# nginx separates the nodes it tried for one request with ", ".
UPSTREAM_FIELD = re.compile(r"upstream=(.+?) upstream_status=")
# A python-socketio polling client's disconnect waits for its pending long
# poll, which the server ends only after a ping interval plus a ping timeout.
# Short ones keep tests with polling clients at seconds instead of 45 s.
SHORT_PINGS = {"CHAT_PING_INTERVAL_S": "1", "CHAT_PING_TIMEOUT_S": "2"}


def require_nginx() -> str:
    binary = find_nginx()
    if binary is None:
        missing("nginx is not installed: run 'apt-get install nginx' as root")
    return binary


def require_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed: run 'apt-get install redis-server'")
    return binary


def redis_answers(url: str, timeout: float = 2) -> bool:
    """Tell whether a Redis server at `url` replies to PING."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout
        ) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # A server with a password replies -NOAUTH, which still means it is up.
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def require_redis(url: str = REDIS_URL) -> str:
    if not redis_answers(url):
        missing(
            f"Redis at {url} is unreachable: install redis-server and start it,"
            " or set CHAT_TEST_REDIS_URL"
        )
    return url


async def delete_redis_keys(url: str, prefix: str) -> None:
    """Delete every key that starts with `prefix`."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class RedisServer:
    """A `redis-server` of the test's own on a free loopback port, keeping no files."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_redis_server()
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log()}")
            if redis_answers(self.url, timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not reply to PING within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class Cluster:
    """`size` server nodes behind nginx, sharing `database_url` and `redis_url`.

    Without a database URL each node keeps its own SQLite file, and without a
    Redis URL the nodes run alone: nginx's routing can be tested that way, but
    the nodes form no cluster. All nodes sign tokens with one secret key and
    trust the X-Forwarded-For header that nginx sets.
    """

    def __init__(
        self,
        workdir: Path,
        size: int,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = f"test-{secrets.token_hex(4)}"
        self.database_url = database_url
        self.redis_url = redis_url
        common = {
            "CHAT_SECRET_KEY": secrets.token_urlsafe(48),
            "CHAT_TRUST_FORWARDED_FOR": "on",
        }
        if database_url:
            common["CHAT_DATABASE_URL"] = database_url
        if redis_url:
            common["CHAT_REDIS_URL"] = redis_url
            common["CHAT_CLUSTER_NAME"] = self.name
        self.nodes: list[ServerProcess] = []
        for index in range(size):
            data_dir = workdir / f"node{index}"
            data_dir.mkdir(parents=True)
            node_env = dict(common)
            if redis_url:
                node_env["CHAT_NODE_ID"] = f"node{index}"
            node_env.update(env or {})
            self.nodes.append(ServerProcess(data_dir, node_env))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.nginx = NginxProcess(
            workdir / "nginx",
            f"127.0.0.1:{self.port}",
            [f"127.0.0.1:{node.port}" for node in self.nodes],
        )

    def start(self) -> None:
        """Start every node, in parallel, then nginx."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(ServerProcess.start, self.nodes))
        self.nginx.start()

    def stop(self) -> None:
        self.nginx.stop()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(ServerProcess.stop, self.nodes))

    def kill(self, index: int) -> None:
        """Stop node `index` with SIGKILL, as a crash would."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start node `index` again on its port, after `kill` or a stop."""
        self.nodes[index].start()

    def node_of(self, upstream: str) -> int:
        """Return the index of the node at `upstream`, a HOST:PORT address."""
        port = int(upstream.rpartition(":")[2])
        for index, node in enumerate(self.nodes):
            if node.port == port:
                return index
        raise ValueError(f"{upstream} is not a node of this cluster")

    async def route(self, source: str) -> list[int]:
        """Send a request through nginx from `source`; return the nodes it tried.

        nginx's access log lists every node it tried for the request, and the
        last one served it.
        """
        marker = secrets.token_hex(8)
        async with (
            bind_session(source)() as http,
            http.get(f"{self.url}/healthz?route={marker}") as response,
        ):
            assert response.status == 200, await response.text()
        # nginx logs a request once the response is sent, so the line can
        # follow the response by a moment.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = self.nginx.access_log_path.read_text(encoding="utf-8")
            for line in reversed(text.splitlines()):
                if marker in line:
                    found = UPSTREAM_FIELD.search(line)
                    assert found, line
                    upstreams = found.group(1).replace(",", " ").split()
                    return [self.node_of(upstream) for upstream in upstreams]
            await asyncio.sleep(0.02)
        raise AssertionError(f"nginx logged no request with route={marker}")

    async def source_for(self, index: int, exclude: set[str] | None = None) -> str:
        """Return a loopback address whose requests nginx sends to node `index`."""
        for source in SOURCE_ADDRESSES:
            if exclude and source in exclude:
                continue
            if (await self.route(source))[-1] == index:
                return source
        raise AssertionError(f"no address in 127.0.0.0/24 is routed to node {index}")

    def logs(self) -> str:
        """Return the end of every node's log and of nginx's, for failure messages."""
        parts = [
            f"--- node{index} ---\n{node.log()[-3000:]}"
            for index, node in enumerate(self.nodes)
        ]
        parts.append(f"--- nginx ---\n{self.nginx.log()[-2000:]}")
        return "\n".join(parts)


# The `cluster_factory` fixture: `start(size, shared=True, redis_url=None, **env)`.
ClusterFactory = Callable[..., Awaitable[Cluster]]
