"""Run a local cluster for a demo: server nodes on PostgreSQL and Redis behind nginx.

`make cluster` runs `python -m deploy.cluster`. It creates the database when
it is missing, starts the nodes and nginx, prints the address to open, and
stops everything on Ctrl-C. CHAT_* variables in the environment apply to every
node, except those that make up the cluster, which this script sets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

from deploy.nginx import NginxProcess, find_nginx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/chat_cluster"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Seconds a node may take from start to a 200 from /readyz, migrations included.
READY_TIMEOUT_S = 30.0
# A node gets CHAT_SHUTDOWN_TIMEOUT_S (10 s by default) to stop, plus a margin.
STOP_TIMEOUT_S = 15.0


class Node:
    """One `python -m sio_server serve` process of the cluster."""

    def __init__(self, name: str, port: int, env: dict[str, str], log_path: Path):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sio_server", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Ctrl-C reaches the whole foreground process group; this
                # script stops the nodes itself, after nginx.
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the node returns 200 from /readyz, or raise RuntimeError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def ensure_database(url: str) -> bool:
    """Create the database named in `url` unless it exists; return True if created.

    Connects to the server's `postgres` database to look and to create it.
    """
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError(f"{url} names no database: add /NAME to it")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    connection = await asyncpg.connect(admin_url, timeout=5)
    try:
        exists = await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", name
        )
        if exists:
            return False
        # CREATE DATABASE takes no parameters, so the name is quoted here.
        quoted = '"' + name.replace('"', '""') + '"'
        await connection.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await connection.close()


def check_redis(url: str) -> None:
    """Raise RuntimeError unless a Redis server at `url` replies to PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"Redis at {url} is unreachable ({exc}): start redis-server, or pass"
            " --redis-url"
        ) from exc
    finally:
        client.close()


def load_secret_key(path: Path) -> str:
    """Return the cluster's token signing key, creating it (mode 0600) once.

    Every node must sign and check tokens with the same key, and keeping it
    lets tokens survive a restart of the demo.
    """
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    key = secrets.token_urlsafe(48)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(key + "\n")
    return key


def build_nodes(args: argparse.Namespace) -> list[Node]:
    data_dir: Path = args.data_dir
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    common = {
        **os.environ,
        "CHAT_HOST": "127.0.0.1",
        "CHAT_DATABASE_URL": args.database_url,
        "CHAT_REDIS_URL": args.redis_url,
        "CHAT_CLUSTER_NAME": args.cluster_name,
        "CHAT_SECRET_KEY": load_secret_key(data_dir / "secret_key"),
        "CHAT_TRUST_FORWARDED_FOR": "on",
    }
    nodes = []
    for number in range(1, args.nodes + 1):
        name = f"node{number}"
        port = free_port()
        env = {
            **common,
            "CHAT_PORT": str(port),
            "CHAT_NODE_ID": name,
            "CHAT_DATA_DIR": str(data_dir / name),
        }
        nodes.append(Node(name, port, env, data_dir / "logs" / f"{name}.log"))
    return nodes


class Stop(Exception):
    """Raised in the main loop by SIGINT or SIGTERM."""


def raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def stop_all(nginx: NginxProcess | None, nodes: Sequence[Node]) -> None:
    """Stop nginx first, so no new requests come in, then every node."""
    if nginx is not None:
        nginx.stop()
    for node in nodes:
        if node.running():
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for node in nodes:
        if node.process is None:
            continue
        try:
            node.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{node.name} did not stop within {STOP_TIMEOUT_S:.0f} s: killing it")
            node.process.kill()
            node.process.wait()


def watch(nginx: NginxProcess, nodes: Sequence[Node]) -> int:
    """Report nodes that exit; return when nginx or every node has exited."""
    reported: set[str] = set()
    while True:
        time.sleep(0.5)
        for node in nodes:
            if node.name not in reported and not node.running():
                reported.add(node.name)
                assert node.process is not None
                print(
                    f"{node.name} exited with code {node.process.returncode}; nginx"
                    f" sends its clients to the other nodes. Its last lines:\n"
                    f"{node.log_tail(5)}"
                )
        if len(reported) == len(nodes):
            print("every node has exited: stopping")
            return 1
        if nginx.process is None or nginx.process.poll() is not None:
            print(f"nginx exited: stopping. Its log:\n{nginx.log()[-2000:]}")
            return 1


def run(args: argparse.Namespace) -> int:
    if find_nginx() is None:
        print("nginx is not installed: run 'apt-get install nginx' as root")
        return 1
    if not port_is_free(args.port):
        print(f"port {args.port} is taken: pass another one with --port")
        return 1
    try:
        if asyncio.run(ensure_database(args.database_url)):
            print(f"created the database {urlsplit(args.database_url).path[1:]}")
    except (OSError, asyncpg.PostgresError, ValueError) as exc:
        print(f"cannot use the database {args.database_url}: {exc}")
        return 1
    try:
        check_redis(args.redis_url)
    except RuntimeError as exc:
        print(exc)
        return 1

    nodes = build_nodes(args)
    nginx: NginxProcess | None = None
    signal.signal(signal.SIGINT, raise_stop)
    signal.signal(signal.SIGTERM, raise_stop)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        nginx = NginxProcess(
            args.data_dir / "nginx",
            f"127.0.0.1:{args.port}",
            [f"127.0.0.1:{node.port}" for node in nodes],
        )
        nginx.start()
        print_welcome(args, nodes, nginx)
        return watch(nginx, nodes)
    except Stop as stop:
        print(f"\n{stop}: stopping nginx and the nodes")
        return 0
    except RuntimeError as exc:
        print(exc)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(nginx, nodes)


def print_welcome(
    args: argparse.Namespace, nodes: Sequence[Node], nginx: NginxProcess
) -> None:
    url = f"http://127.0.0.1:{args.port}"
    print(f"Cluster {args.cluster_name!r}: {len(nodes)} nodes behind nginx")
    print(f"  database {args.database_url}, Redis {args.redis_url}")
    for node in nodes:
        print(f"  {node.name}  {node.url}  log {node.log_path}")
    print(f"  nginx  {url}  logs {nginx.log_dir}")
    print()
    print(f"Open {url}/ for the demo shop and {url}/agent/ for the agents.")
    print("Create an agent account in another terminal with:")
    print(
        f"  CHAT_DATABASE_URL={args.database_url} .venv/bin/python -m sio_server"
        " create-agent --email ann@example.com --name Ann"
    )
    print("Press Ctrl-C to stop.", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.cluster",
        description="Run chat server nodes on PostgreSQL and Redis behind nginx.",
    )
    parser.add_argument(
        "--nodes", type=int, default=3, help="number of nodes (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port nginx listens on, at 127.0.0.1 (default: %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL database, created when missing (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help="Redis (default: %(default)s)"
    )
    parser.add_argument(
        "--cluster-name",
        default="demo",
        help="prefix of the cluster's Redis keys (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "data" / "cluster",
        help="folder for the logs, the secret key and nginx's files"
        " (default: data/cluster)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
