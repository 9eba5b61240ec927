"""A server killed with SIGKILL and restarted on the same data dir loses nothing."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from tests.support import (
    ROOT,
    ChatClient,
    Clients,
    ServerProcess,
    free_port,
    matched_pair,
    serve_in_order,
    session_of,
)


async def send_until_failure(
    client: ChatClient, chat_id: str, prefix: str, acked: list[dict[str, Any]]
) -> None:
    for n in range(2000):
        try:
            reply = await client.call(
                "message",
                {
                    "chat_id": chat_id,
                    "text": f"{prefix}{n}",
                    "client_id": f"{prefix}{n}",
                },
                timeout=2,
            )
        except Exception:
            return
        assert reply["ok"] is True, reply
        acked.append(reply["message"])


async def test_sigkill_keeps_acked_messages(
    server: ServerProcess, clients: Clients
) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    acked: list[dict[str, Any]] = []
    senders = [
        asyncio.create_task(send_until_failure(visitor, chat_id, "v", acked)),
        asyncio.create_task(send_until_failure(agent, chat_id, "a", acked)),
    ]
    await asyncio.sleep(1.0)
    server.kill()
    await asyncio.wait_for(asyncio.gather(*senders), 20)
    assert len(acked) > 20

    server.start()
    # Both clients reconnect by themselves and get a fresh session.
    visitor_session = await visitor.next("session", timeout=20)
    agent_session = await agent.next("session", timeout=20)
    assert visitor_session["chat"]["id"] == chat_id
    assert visitor_session["chat"]["status"] == "active"
    assert agent_session["status"] == "ready"
    assert [chat["id"] for chat in agent_session["chats"]] == [chat_id]

    history = await agent.call("history", {"chat_id": chat_id, "limit": 500})
    stored = list(history["messages"])
    while history["has_more"]:
        history = await agent.call(
            "history",
            {"chat_id": chat_id, "after_seq": stored[-1]["seq"], "limit": 500},
        )
        stored.extend(history["messages"])
    stored_ids = {message["id"] for message in stored}
    assert all(message["id"] in stored_ids for message in acked)
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    assert visitor_session["chat"]["last_seq"] == len(stored)

    # The chat goes on where it stopped.
    visitor.drain("message")
    agent.drain("message")
    reply = await visitor.call(
        "message", {"chat_id": chat_id, "text": "after restart", "client_id": "after"}
    )
    assert reply["message"]["seq"] == len(stored) + 1
    assert (await agent.next("message"))["text"] == "after restart"


async def test_restart_keeps_queue_order(
    server: ServerProcess, clients: Clients
) -> None:
    visitors = [await clients.visitor() for _ in range(3)]
    chat_ids = [(await v.call("join_queue", {}))["chat"]["id"] for v in visitors]
    server.kill()
    server.start()
    for visitor in visitors:
        await visitor.next("session", timeout=20)

    agent = await clients.agent(ready=True, max_chats=1)
    assert await serve_in_order(agent, len(chat_ids)) == chat_ids


async def test_restart_keeps_agent_token(
    server: ServerProcess, clients: Clients
) -> None:
    agent = await clients.agent()
    token = agent.auth["token"]
    await agent.disconnect()
    server.stop()
    server.start()
    again = clients.client({"role": "agent", "token": token})
    session = await again.connect()
    assert session["role"] == "agent"


async def test_graceful_stop_clients_return(
    server: ServerProcess, clients: Clients
) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    polling = await clients.visitor(token=visitor.auth["token"], transports=["polling"])
    started = time.monotonic()
    # In a thread, so that the clients in this event loop see the close.
    await asyncio.to_thread(server.stop)
    assert time.monotonic() - started < 8
    assert "Traceback" not in server.log()

    server.start()
    for client in (agent, visitor, polling):
        session = await client.next("session", timeout=20)
        assert session["role"] in ("agent", "visitor")
    reply = await polling.call(
        "message", {"chat_id": chat_id, "text": "back", "client_id": "b"}
    )
    assert reply["message"]["seq"] == 1
    assert (await agent.next("message"))["text"] == "back"


async def test_second_server_on_same_file_exits(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """A second server on the SQLite file of a running one exits and changes nothing."""
    # SQLite in both test passes, because a PostgreSQL database allows several servers.
    server = server_factory(CHAT_DATABASE_URL="")
    clients = Clients(server)
    try:
        await matched_pair(clients)
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sio_server",
            "serve",
            cwd=ROOT,
            env={**server.env, "CHAT_PORT": str(free_port())},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(second.communicate(), 30)
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        assert second.returncode == 2, stderr
        assert b"another server process is using" in stderr
        # The running server's count of agents online is cached for up to 1 s.
        await asyncio.sleep(1.2)
        visitor = await clients.visitor()
        assert session_of(visitor)["agents_online"] == 1
    finally:
        await clients.close()
