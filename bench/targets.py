"""The servers under test: our server, alone or as a cluster, and the two peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
# The services that the cluster targets share, on this machine only. Each run
# creates its own database and its own prefix for Redis keys.
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"
SCRAPE_TIMEOUT_S = 2
# Histograms of our server that tell where a slow message waited: for its
# commit, or for the event loop.
WAIT_HISTOGRAMS = {
    "chat_message_write_seconds": "message_write",
    "chat_event_loop_lag_seconds": "loop_lag",
}

# sio_server is imported from this checkout by the functions that need it.
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pinned(core: int, command: list[str]) -> list[str]:
    """Run `command` on one core when the machine has a core to spare for it."""
    if can_pin():
        return ["taskset", "-c", str(core), *command]
    return command


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout_s: float = 20
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout_s} s")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time that process `pid` has used."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name in brackets may contain spaces, so the fields are
        # counted from the closing bracket: utime and stime are fields 14 and
        # 15 of proc(5).
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Target:
    """A server under test, started fresh for each workload."""

    name = ""
    label = ""
    # Server processes, each listening on its own port.
    nodes = 1
    # The workloads this target can run; None for all of them.
    workloads: tuple[str, ...] | None = None

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(self.nodes)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_path = workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        """Return the base URL of every node, separated by commas."""
        return ",".join(f"http://127.0.0.1:{port}" for port in self.ports)

    def command(self, node: int) -> list[str]:
        raise NotImplementedError

    def env(self, node: int) -> dict[str, str]:
        return dict(os.environ)

    def unavailable(self) -> str | None:
        """Return why the target cannot run on this machine, or None if it can."""
        return None

    def describe(self) -> dict[str, Any]:
        """Return what the results need to say about this target."""
        return {
            "label": self.label,
            "processes": self.nodes,
            # Every process of the target shares this core.
            "server_core": 0 if can_pin() else None,
        }

    def prepare(self, agents: int) -> list[str]:
        """Reset state and return `agents` agent tokens."""
        return [f"agent-{n}" for n in range(agents)]

    def release(self) -> None:
        """Delete what `prepare` created outside the work folder."""

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            for node in range(self.nodes):
                self.processes.append(
                    subprocess.Popen(
                        pinned(0, self.command(node)),
                        cwd=ROOT,
                        env=self.env(node),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        try:
            for port, process in zip(self.ports, self.processes, strict=True):
                wait_for_port(port, process)
        except RuntimeError as exc:
            self.stop()
            # The log is in a temporary folder that is gone after the run.
            log_tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{self.name}: {exc}; its log ends:\n{log_tail}"
            ) from exc
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM) -> None:
        running = [process for process in self.processes if process.poll() is None]
        for process in running:
            process.send_signal(sig)
        for process in running:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.processes = []

    def restart_after_crash(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def cpu_sample(self) -> dict[str, float]:
        """Return CPU seconds used so far, by part: "server" sums the nodes."""
        return {"server": sum(cpu_seconds(pid) for pid in self.pids)}

    def wait_counts(self) -> dict[str, dict[str, float]]:
        """Return the server's wait histograms, as cumulative counts by bound.

        Empty for the peers, which keep no such figures.
        """
        return {}


class Ours(Target):
    name = "ours"
    label = "ours (python-socketio, SQLite)"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data_dir = workdir / "ours-data"

    def command(self, node: int) -> list[str]:
        return [PYTHON, "-m", "sio_server", "serve"]

    def env(self, node: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update(
            CHAT_PORT=str(self.ports[node]),
            CHAT_DATA_DIR=str(self.data_dir),
            CHAT_LOG_LEVEL="WARNING",
            # Long grace periods: a storm's sockets must find their chats.
            CHAT_VISITOR_GRACE_S="600",
            CHAT_AGENT_GRACE_S="600",
            # Every load generator socket comes from 127.0.0.1 and sends far
            # faster than a person, and the largest runs hold 10,000 sockets
            # and queue 2,000 visitors.
            CHAT_LIMIT_CONNECT_PER_IP="off",
            CHAT_LIMIT_EVENTS_PER_SOCKET="off",
            CHAT_LIMIT_MESSAGES_PER_VISITOR="off",
            CHAT_MAX_CONNECTIONS="100000",
            CHAT_MAX_QUEUE="100000",
        )
        return env

    def wait_counts(self) -> dict[str, dict[str, float]]:
        counts: dict[str, dict[str, float]] = {}
        for port in self.ports:
            url = f"http://127.0.0.1:{port}/metrics"
            # An overloaded server responds late, and the generator's next
            # step does not wait for this scrape, so such a step has no figures.
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                    text = response.read().decode()
            except OSError as exc:
                print(
                    f"  {self.name}: metrics scrape failed: {url}: {exc};"
                    " this step has no wait figures",
                    file=sys.stderr,
                )
                return {}
            for family in text_string_to_metric_families(text):
                key = WAIT_HISTOGRAMS.get(family.name)
                if key is None:
                    continue
                buckets = counts.setdefault(key, {})
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        bound = sample.labels["le"]
                        buckets[bound] = buckets.get(bound, 0) + sample.value
        return counts

    def prepare(self, agents: int) -> list[str]:
        from sio_server.config import Settings, ensure_secret_key

        shutil.rmtree(self.data_dir, ignore_errors=True)
        settings = ensure_secret_key(Settings(data_dir=self.data_dir))
        return asyncio.run(
            create_agents(settings.effective_database_url, settings.secret_key, agents)
        )


async def create_agents(database_url: str, secret_key: str, count: int) -> list[str]:
    """Create `count` agents in the database and return a token for each."""
    from sio_server.auth import TokenSigner, hash_password
    from sio_server.store import create_store

    store = create_store(database_url)
    await store.open()
    # One hash for all, because argon2 is slow on purpose and the
    # benchmark signs tokens directly instead of logging in.
    password_hash = hash_password("benchmark password")
    signer = TokenSigner(secret_key, 24 * 3600, 24 * 3600)
    tokens = []
    try:
        for n in range(count):
            agent = await store.create_agent(
                f"agent{n}@bench.example", f"Agent {n}", password_hash
            )
            tokens.append(signer.issue("agent", agent.id))
    finally:
        await store.close()
    return tokens


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)


def postgres_backend_available() -> bool:
    """Tell whether this checkout's store has a PostgreSQL backend."""
    from sio_server.errors import ConfigError
    from sio_server.store import create_store

    try:
        # Building a store does not connect, so any database name will do.
        create_store(f"{POSTGRES_URL}/postgres")
    except ConfigError:
        return False
    return True


async def run_postgres(statement: str) -> None:
    """Run one statement on the server's maintenance database."""
    # asyncpg comes with the PostgreSQL backend, which is the only case in
    # which this is called.
    import asyncpg

    connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres", timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def postgres_backend_pids(database: str) -> list[int]:
    """Return the ids of the PostgreSQL backend processes connected to `database`."""
    import asyncpg

    connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres", timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", database
        )
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows]


class Cluster(Ours):
    """Several processes of our server that share a database and Redis.

    Each workload gets a fresh PostgreSQL database and a fresh cluster name,
    so no state carries over between workloads or runs. Without the
    PostgreSQL backend in the store, the processes share one SQLite file.
    The reconnect storm kills every process at once and starts them again.
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data_dir = workdir / f"{self.name}-data"
        self.database = "postgresql" if postgres_backend_available() else "sqlite"
        processes = "1 process" if self.nodes == 1 else f"{self.nodes} processes"
        self.label = f"ours, {processes} ({self.database_label()}, Redis)"
        # Every node checks the tokens that `prepare` signs with this key.
        self.secret_key = secrets.token_urlsafe(48)
        self.cluster_name = ""
        self.database_name = ""
        self.database_url = ""

    def database_label(self) -> str:
        return "PostgreSQL" if self.database == "postgresql" else "shared SQLite"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "database": self.database, "redis": REDIS_URL}

    def env(self, node: int) -> dict[str, str]:
        env = super().env(node)
        env.update(
            CHAT_DATA_DIR=str(self.data_dir / f"node{node}"),
            CHAT_DATABASE_URL=self.database_url,
            CHAT_SECRET_KEY=self.secret_key,
            CHAT_REDIS_URL=REDIS_URL,
            CHAT_CLUSTER_NAME=self.cluster_name,
            CHAT_NODE_ID=f"node{node}",
        )
        return env

    def unavailable(self) -> str | None:
        try:
            with redis_client() as client:
                client.ping()
        except redis.RedisError as exc:
            return f"Redis at {REDIS_URL} is unreachable: {exc}"
        if self.database == "postgresql":
            import asyncpg

            try:
                asyncio.run(run_postgres("SELECT 1"))
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                return f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}"
        return None

    def prepare(self, agents: int) -> list[str]:
        self.release()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        self.cluster_name = f"bench-{secrets.token_hex(6)}"
        if self.database == "postgresql":
            self.database_name = f"chat_bench_{secrets.token_hex(6)}"
            asyncio.run(run_postgres(f'CREATE DATABASE "{self.database_name}"'))
            self.database_url = f"{POSTGRES_URL}/{self.database_name}"
        else:
            self.database_url = f"sqlite:///{self.data_dir / 'chat.sqlite3'}"
        return asyncio.run(create_agents(self.database_url, self.secret_key, agents))

    def release(self) -> None:
        if self.database_name:
            asyncio.run(
                run_postgres(
                    f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)'
                )
            )
            self.database_name = ""
        if self.cluster_name:
            with redis_client() as client:
                pattern = f"{self.cluster_name}:*"
                keys = list(client.scan_iter(match=pattern, count=1000))
                if keys:
                    client.delete(*keys)
            self.cluster_name = ""

    def cpu_sample(self) -> dict[str, float]:
        """Add the CPU time of Redis and of this database's PostgreSQL processes.

        Redis reports its own CPU time, which includes the work it did for
        every other client of the same Redis server.
        """
        sample = super().cpu_sample()
        with redis_client() as client:
            info = client.info("cpu")
        sample["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        if self.database_name:
            # NOTE: a connection opened inside a window adds the CPU time it
            # used before the window started, and one closed inside it is not
            # counted. The store's connection pool keeps its connections open
            # between queries, so both are rare.
            total = 0.0
            for pid in asyncio.run(postgres_backend_pids(self.database_name)):
                # A connection may close between the query and the read.
                with contextlib.suppress(FileNotFoundError):
                    total += cpu_seconds(pid)
            sample["postgresql"] = total
        return sample


class OneNode(Cluster):
    """One process in cluster mode: the database and Redis without fan-out."""

    name = "ours1"
    nodes = 1


class TwoNodes(Cluster):
    name = "ours2"
    nodes = 2


class ThreeNodes(Cluster):
    name = "ours3"
    nodes = 3


class NodePeer(Target):
    name = "node"
    label = "Node.js socket.io peer (memory)"

    def command(self, node: int) -> list[str]:
        return [
            "node",
            str(BENCH / "peers" / "node_server.mjs"),
            "--port",
            str(self.ports[node]),
        ]


class RawRelay(Target):
    name = "raw"
    label = "raw aiohttp relay (memory)"

    def command(self, node: int) -> list[str]:
        return [
            PYTHON,
            str(BENCH / "peers" / "raw_relay.py"),
            "--port",
            str(self.ports[node]),
        ]


class SocketIOIdle(Target):
    """python-socketio's layers accepting connects, with no chat service."""

    server = ""
    workloads = ("idle",)

    def command(self, node: int) -> list[str]:
        return [
            PYTHON,
            str(BENCH / "peers" / "sio_idle.py"),
            "--server",
            self.server,
            "--port",
            str(self.ports[node]),
        ]


class StockSocketIO(SocketIOIdle):
    name = "sio"
    label = "python-socketio as shipped, no chat service (idle only)"
    server = "stock"


class ChatEngine(SocketIOIdle):
    name = "engine"
    label = "the chat server's Socket.IO layer, no chat service (idle only)"
    server = "chat"


TARGET_CLASSES: dict[str, type[Target]] = {
    "ours": Ours,
    "node": NodePeer,
    "raw": RawRelay,
    "sio": StockSocketIO,
    "engine": ChatEngine,
    "ours1": OneNode,
    "ours2": TwoNodes,
    "ours3": ThreeNodes,
}
