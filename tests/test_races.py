"""Races between connects, grace expiry, matching and ending.

Each test reproduces a race deterministically enough to fail on the code that
has it. A burst of `read` events from a bystander keeps the store's single
writer busy for a few hundred milliseconds, which keeps one side of the race
open long enough for the other side to arrive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.support import PASSWORD, ChatClient, Clients, ServerProcess, matched_pair

# Writes that one burst queues in front of the store's writer. Estimate: on the
# VM these tests were written on, 400 such writes took about 0.16 s to commit.
WRITER_BURST = 300


async def flood_writer(client: ChatClient, chat_id: str, count: int) -> None:
    """Queue `count` read-mark writes without waiting for their replies."""
    await asyncio.gather(
        *(client.sio.emit("read", {"chat_id": chat_id, "seq": 0}) for _ in range(count))
    )


async def stored_agent_status(server: ServerProcess, email: str) -> str:
    """Return the stored agent status, as the login reply reports it."""
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{server.url}/api/auth/login", json={"email": email, "password": PASSWORD}
        )
        body = await response.json()
    return str(body["agent"]["status"])


async def fetch_chat(server: ServerProcess, token: str, chat_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        response = await http.get(
            f"{server.url}/api/chats/{chat_id}/messages",
            headers={"Authorization": f"Bearer {token}"},
        )
        body = await response.json()
    assert response.status == 200, body
    return dict(body["chat"])


async def connect_then_close_at_once(
    http: aiohttp.ClientSession, url: str, auth: dict[str, Any]
) -> None:
    """Open a polling session and send CONNECT and an Engine.IO CLOSE in parallel.

    Engine.IO accepts concurrent POSTs on one polling session, so the CLOSE
    can arrive while the Socket.IO connect handler still awaits the store.
    """
    response = await http.get(f"{url}/socket.io/?EIO=4&transport=polling")
    handshake = await response.text()
    assert handshake.startswith("0"), handshake
    sid = json.loads(handshake[1:])["sid"]
    post_url = f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}"
    connect = asyncio.create_task(http.post(post_url, data="40" + json.dumps(auth)))
    close = asyncio.create_task(http.post(post_url, data="1"))
    for done in await asyncio.gather(connect, close):
        done.release()


async def test_close_during_connect_leaves_no_ghost(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_AGENT_GRACE_S="1")
    server = clients.server
    agent = await clients.agent(ready=True)
    token = agent.auth["token"]
    await agent.disconnect()
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            await connect_then_close_at_once(
                http, server.url, {"role": "agent", "token": token}
            )
        await asyncio.sleep(1.5)
        metrics = await (await http.get(f"{server.url}/metrics")).text()

    # Every socket of the agent closed, so presence must hold none.
    assert 'chat_connected_sockets{role="agent"} 0.0' in metrics, metrics

    # An agent with no live socket must not be given a visitor.
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {"message": "anyone there?"})
    assert joined["ok"], joined
    await visitor.no_more("chat_started", within=1.5)


async def test_agent_reconnect_during_requeue_stays_consistent(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_AGENT_GRACE_S="2")
    server = clients.server
    agent, _visitor, chat_id = await matched_pair(clients)
    token = agent.auth["token"]
    bystander = await clients.visitor()
    bystander_chat = (await bystander.call("join_queue", {}))["chat"]["id"]

    await agent.disconnect()
    # The grace timer fires 2 s after the disconnect. The burst delays the
    # requeue that the timer starts, and the agent comes back meanwhile.
    await asyncio.sleep(1.95)
    await flood_writer(bystander, bystander_chat, WRITER_BURST)
    await asyncio.sleep(0.1)
    back = clients.client({"role": "agent", "token": token})
    session = await back.connect()
    await asyncio.sleep(1.0)

    stored = await stored_agent_status(server, "alice@example.com")
    assert stored == session["status"], (
        f"session sent status {session['status']!r}, the store contains {stored!r}"
    )
    if session["status"] == "ready":
        # The only ready agent must get the chat back, or keep it.
        chat = await fetch_chat(server, token, chat_id)
        assert chat["status"] == "active", chat


async def test_end_during_assignment_does_not_stall_queue(clients: Clients) -> None:
    agent = await clients.agent()
    first = await clients.visitor()
    first_chat = (await first.call("join_queue", {}))["chat"]["id"]
    second = await clients.visitor()
    await second.call("join_queue", {})
    bystander = await clients.visitor()
    bystander_chat = (await bystander.call("join_queue", {}))["chat"]["id"]

    # agent_ready commits behind the first burst, and the assignment that it
    # starts waits behind the second. The first visitor ends its chat while
    # the store still shows it queued, just before it turns active.
    await flood_writer(bystander, bystander_chat, WRITER_BURST)
    ready = asyncio.create_task(agent.call("agent_ready", {"max_chats": 1}))
    await asyncio.sleep(0.01)
    await flood_writer(bystander, bystander_chat, WRITER_BURST)
    assert (await ready)["ok"]
    ended = await first.call("end_chat", {"chat_id": first_chat})
    assert ended["ok"], ended

    # The agent has a free slot again, so the next visitor must be matched.
    started = await second.next("chat_started", timeout=3)
    assert started["chat"]["agent"] is not None
