"""Helpers for the functional tests: a server subprocess and recording clients."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from sio_server.auth import hash_password
from sio_server.store import create_store
from tests.database import (
    create_postgres_database_sync,
    drop_postgres_database,
    run_sync,
    using_postgres,
)

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
# Short enough for tests to wait out, long enough for a client to reconnect.
TEST_GRACE_S = "30"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`python -m sio_server serve` on a free loopback port with its own data dir.

    Under `CHAT_TEST_DATABASE=postgres` it also gets a new PostgreSQL database,
    kept across restarts until `drop_database`.
    """

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CHAT_")},
            "CHAT_HOST": "127.0.0.1",
            "CHAT_PORT": str(self.port),
            "CHAT_DATA_DIR": str(data_dir),
            "CHAT_VISITOR_GRACE_S": TEST_GRACE_S,
            "CHAT_AGENT_GRACE_S": TEST_GRACE_S,
            "CHAT_LOG_LEVEL": "INFO",
            # Tests send faster than people and connect many sockets from one
            # address; the rate limit tests set their own limits.
            "CHAT_LIMIT_CONNECT_PER_IP": "off",
            "CHAT_LIMIT_EVENTS_PER_SOCKET": "off",
            "CHAT_LIMIT_MESSAGES_PER_VISITOR": "off",
            **env,
        }
        # The PostgreSQL database created for this server, dropped at the end.
        self.own_database: str | None = None
        if using_postgres() and "CHAT_DATABASE_URL" not in env:
            self.own_database = create_postgres_database_sync()
            self.env["CHAT_DATABASE_URL"] = self.own_database
        self.process: subprocess.Popen[bytes] | None = None
        # Set by tests that break the server on purpose.
        self.expect_tracebacks = False

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sio_server", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not listen within 15 s:\n{self.log()}")

    def kill(self) -> None:
        """Stop the process with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def drop_database(self) -> None:
        """Drop the server's own PostgreSQL database, once it has stopped."""
        if self.own_database is not None:
            run_sync(drop_postgres_database(self.own_database))
            self.own_database = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def database_url(self) -> str:
        return self.env.get("CHAT_DATABASE_URL") or (
            f"sqlite:///{self.data_dir / 'chat.sqlite3'}"
        )

    async def create_agent(
        self, email: str, name: str | None = None, *, is_admin: bool = False
    ) -> str:
        store = create_store(self.database_url)
        await store.open()
        try:
            agent = await store.create_agent(
                email,
                name or email.split("@")[0].title(),
                hash_password(PASSWORD),
                is_admin=is_admin,
            )
        finally:
            await store.close()
        return agent.id

    async def login(self, email: str, password: str = PASSWORD) -> str:
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                f"{self.url}/api/auth/login",
                json={"email": email, "password": password},
            )
            body = await response.json()
        assert response.status == 200, body
        return str(body["token"])


async def scrape_metrics(server: ServerProcess) -> dict[str, float]:
    """Return every sample of the server's /metrics by its name and labels."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/metrics") as response,
    ):
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def bind_session(local_address: str) -> Callable[[], aiohttp.ClientSession]:
    """Return a factory of HTTP sessions whose connections start at `local_address`.

    A load balancer that hashes the client address sends clients from
    different loopback addresses (127.0.0.2, 127.0.0.3, ...) to different nodes.
    """

    def create() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(local_address, 0))
        return aiohttp.ClientSession(connector=connector)

    return create


class ChatClient:
    """A python-socketio AsyncClient that records every event it receives."""

    def __init__(self, url: str, auth: dict[str, Any], **options: Any) -> None:
        self.url = url
        self.auth = auth
        self.sio = socketio.AsyncClient(**options)
        self.received: list[tuple[str, Any]] = []
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self.connect_errors: list[Any] = []
        self.sio.on("*", self._record)
        self.sio.on("connect_error", self._connect_error)

    async def _record(self, event: str, *args: Any) -> None:
        data = args[0] if args else None
        self.received.append((event, data))
        self._queue(event).put_nowait(data)

    async def _connect_error(self, data: Any) -> None:
        self.connect_errors.append(data)

    def _queue(self, event: str) -> asyncio.Queue[Any]:
        return self._queues.setdefault(event, asyncio.Queue())

    async def connect(
        self,
        transports: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Connect and return the `session` event's payload."""
        # A callable makes the client's own reconnects send the latest token.
        await self.sio.connect(
            self.url,
            auth=lambda: self.auth,
            transports=transports,
            headers=headers or {},
            wait_timeout=10,
        )
        session = await self.next("session")
        if session.get("token"):
            self.auth = {**self.auth, "token": session["token"]}
        return dict(session)

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def next(self, event: str, timeout: float = 10) -> Any:
        """Return the next unread payload of `event`, waiting for it to arrive."""
        return await asyncio.wait_for(self._queue(event).get(), timeout)

    async def no_more(self, event: str, within: float = 0.5) -> None:
        """Assert that no further `event` arrives within `within` seconds."""
        await asyncio.sleep(within)
        queue = self._queue(event)
        assert queue.empty(), f"unexpected {event}: {queue.get_nowait()!r}"

    def drain(self, event: str) -> list[Any]:
        queue = self._queue(event)
        items = []
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    @property
    def sid(self) -> str | None:
        return self.sio.get_sid()

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


class Clients:
    """Creates connected visitors and agents against one server; closes them all.

    Clients connect to `url`, the server's own by default, from the loopback
    address `local_address` when one is given. Agents are created in the
    server's database and log in at the server itself.
    """

    def __init__(
        self,
        server: ServerProcess,
        url: str | None = None,
        local_address: str | None = None,
    ) -> None:
        self.server = server
        self.url = url or server.url
        self.local_address = local_address
        self._all: list[ChatClient] = []
        self._agents: set[str] = set()

    def at(self, url: str, local_address: str | None = None) -> Clients:
        """Return clients of another entry point, such as a load balancer.

        They share this group's agents and are closed with it.
        """
        other = Clients(self.server, url, local_address)
        other._all = self._all
        other._agents = self._agents
        return other

    def client(self, auth: dict[str, Any], **options: Any) -> ChatClient:
        if self.local_address is not None and "http_session" not in options:
            # A factory, so that Engine.IO makes a fresh session for every
            # reconnect and closes it itself.
            options["http_session"] = bind_session(self.local_address)
        client = ChatClient(self.url, auth, **options)
        self._all.append(client)
        return client

    async def visitor(
        self, token: str | None = None, transports: list[str] | None = None, **auth: Any
    ) -> ChatClient:
        client = self.client({"role": "visitor", "token": token, **auth})
        await client.connect(transports)
        return client

    async def agent(
        self,
        email: str = "alice@example.com",
        *,
        ready: bool = False,
        max_chats: int = 1,
        **options: Any,
    ) -> ChatClient:
        """Create the agent when needed, sign in, connect, and optionally go ready."""
        if email not in self._agents:
            await self.server.create_agent(email)
            self._agents.add(email)
        token = await self.server.login(email)
        client = self.client({"role": "agent", "token": token}, **options)
        await client.connect()
        await client.next("queue_changed")
        if ready:
            response = await client.call("agent_ready", {"max_chats": max_chats})
            assert response["ok"], response
        return client

    async def close(self) -> None:
        await asyncio.gather(*(client.disconnect() for client in self._all))


async def matched_pair(
    clients: Clients, *, first_message: str | None = None
) -> tuple[ChatClient, ChatClient, str]:
    """Return an agent and a visitor in an active chat, and the chat id."""
    agent = await clients.agent(ready=True)
    visitor = await clients.visitor(name="Vera")
    payload: dict[str, Any] = {}
    if first_message is not None:
        payload["message"] = first_message
    joined = await visitor.call("join_queue", payload)
    assert joined["ok"], joined
    started = await visitor.next("chat_started")
    await agent.next("chat_started")
    return agent, visitor, str(started["chat"]["id"])


async def serve_in_order(agent: ChatClient, count: int) -> list[str]:
    """Take `count` chats one at a time, ending each; return their ids in order."""
    served = []
    for _ in range(count):
        started = await agent.next("chat_started")
        served.append(str(started["chat"]["id"]))
        await agent.call("end_chat", {"chat_id": started["chat"]["id"]})
    return served


def assert_capacity_kept(agent: ChatClient, max_chats: int) -> int:
    """Check the open chats after every `chat_started` and return the final count."""
    open_chats: set[str] = set()
    for event, data in agent.received:
        if event == "chat_started":
            open_chats.add(data["chat"]["id"])
            assert len(open_chats) <= max_chats, f"over capacity: {open_chats}"
        elif event in ("chat_ended", "chat_removed"):
            open_chats.discard(data["chat_id"])
    return len(open_chats)


async def collect_started(
    agents: list[ChatClient], expected: int
) -> list[tuple[ChatClient, str]]:
    """Take unread `chat_started` events until `expected` arrived, then any extras.

    Returns (agent, chat id) pairs. Waits at most 10 s for the expected count,
    then 0.3 s more, so that a surplus assignment shows up too.
    """
    found: list[tuple[ChatClient, str]] = []

    def take() -> None:
        for agent in agents:
            for started in agent.drain("chat_started"):
                found.append((agent, started["chat"]["id"]))

    deadline = time.monotonic() + 10
    while len(found) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        take()
    await asyncio.sleep(0.3)
    take()
    return found


def started_count(client: ChatClient) -> int:
    return sum(1 for event, _ in client.received if event == "chat_started")


async def chat_both_ways(agent: ChatClient, visitor: ChatClient, tag: str) -> None:
    """Match `visitor` with the ready `agent`, send one message each way, end it."""
    joined = await visitor.call("join_queue", {"message": f"hello {tag}"})
    assert joined["ok"], joined
    chat_id = joined["chat"]["id"]
    assert (await agent.next("chat_started"))["chat"]["id"] == chat_id
    assert (await visitor.next("chat_started"))["chat"]["id"] == chat_id

    sent = await agent.call(
        "message", {"chat_id": chat_id, "text": f"agent {tag}", "client_id": "a1"}
    )
    assert sent["ok"], sent
    assert (await visitor.next("message"))["text"] == f"agent {tag}"
    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": f"visitor {tag}", "client_id": "v1"}
    )
    assert sent["ok"], sent
    assert (await agent.next("message"))["text"] == f"visitor {tag}"
    ended = await agent.call("end_chat", {"chat_id": chat_id})
    assert ended["ok"], ended


async def read_history(
    client: ChatClient, chat_id: str, after_seq: int = 0
) -> list[dict[str, Any]]:
    """Return every message of the chat after `after_seq`, one page at a time."""
    messages: list[dict[str, Any]] = []
    while True:
        page = await client.call(
            "history", {"chat_id": chat_id, "after_seq": after_seq, "limit": 500}
        )
        assert page["ok"], page
        messages.extend(page["messages"])
        if not page["has_more"]:
            return messages
        after_seq = messages[-1]["seq"]


# Two departments for the routing tests, in `CHAT_DEPARTMENTS` syntax.
DEPARTMENTS = "sales=Sales,billing=Billing and invoices"


def session_of(client: ChatClient) -> dict[str, Any]:
    """Return the payload of the first `session` event that `client` received."""
    for event, data in client.received:
        if event == "session":
            return dict(data)
    raise AssertionError("the client received no session event")


async def ready_agent(
    clients: Clients,
    email: str,
    *,
    max_chats: int = 1,
    departments: list[str] | None = None,
) -> ChatClient:
    """Connect an agent and send `agent_ready`, without `departments` when None."""
    agent = await clients.agent(email)
    payload: dict[str, Any] = {"max_chats": max_chats}
    if departments is not None:
        payload["departments"] = departments
    response = await agent.call("agent_ready", payload)
    assert response["ok"], response
    return agent


async def http_json(
    server: ServerProcess,
    method: str,
    path: str,
    *,
    token: str | None = None,
    **options: Any,
) -> tuple[int, Any]:
    """Send one HTTP request to the server and return the status and the body.

    The body is parsed JSON when the response is JSON, and text otherwise.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, headers=headers, **options) as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()
