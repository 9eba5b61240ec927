"""The servers under test: our server and the two peers, each a subprocess."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, command: list[str]) -> list[str]:
    """Run `command` on one core when the machine has a core to spare for it."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
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


class Target:
    """A server under test, started fresh for each workload."""

    name = ""
    label = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self, agents: int) -> list[str]:
        """Reset state and return `agents` agent tokens."""
        return [f"agent-{n}" for n in range(agents)]

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                pinned(0, self.command()),
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def restart_after_crash(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class Ours(Target):
    name = "ours"
    label = "ours (python-socketio, SQLite)"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data_dir = workdir / "ours-data"

    def command(self) -> list[str]:
        return [PYTHON, "-m", "sio_server", "serve"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update(
            CHAT_PORT=str(self.port),
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

    def prepare(self, agents: int) -> list[str]:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return asyncio.run(self._create_agents(agents))

    async def _create_agents(self, count: int) -> list[str]:
        sys.path.insert(0, str(ROOT))
        from sio_server.auth import TokenSigner, hash_password
        from sio_server.config import Settings, ensure_secret_key
        from sio_server.store import SQLiteStore

        settings = ensure_secret_key(Settings(data_dir=self.data_dir))
        store = SQLiteStore(settings.sqlite_path)
        await store.open()
        # One hash for all, because argon2 is slow on purpose and the
        # benchmark signs tokens directly instead of logging in.
        password_hash = hash_password("benchmark password")
        signer = TokenSigner(settings.secret_key, 24 * 3600, 24 * 3600)
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


class NodePeer(Target):
    name = "node"
    label = "Node.js socket.io peer (memory)"

    def command(self) -> list[str]:
        return [
            "node",
            str(BENCH / "peers" / "node_server.mjs"),
            "--port",
            str(self.port),
        ]


class RawRelay(Target):
    name = "raw"
    label = "raw aiohttp relay (memory)"

    def command(self) -> list[str]:
        return [PYTHON, str(BENCH / "peers" / "raw_relay.py"), "--port", str(self.port)]


TARGET_CLASSES: dict[str, type[Target]] = {
    "ours": Ours,
    "node": NodePeer,
    "raw": RawRelay,
}
