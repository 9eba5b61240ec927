"""Drops, reconnects and grace periods, driven by real disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.support import Clients, matched_pair


async def test_reconnect_same_token_resumes(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients, first_message="hello")
    last_seen = 1
    token = visitor.auth["token"]
    await visitor.disconnect()

    missed = []
    for n in range(3):
        reply = await agent.call(
            "message", {"chat_id": chat_id, "text": f"missed {n}", "client_id": f"{n}"}
        )
        missed.append(reply["message"])

    back = await clients.visitor(token=token)
    session = back.received[0][1]
    assert session["chat"]["id"] == chat_id
    assert session["chat"]["status"] == "active"
    assert session["chat"]["last_seq"] == 4

    history = await back.call("history", {"chat_id": chat_id, "after_seq": last_seen})
    assert history["messages"] == missed
    assert history["has_more"] is False

    live = await agent.call(
        "message", {"chat_id": chat_id, "text": "live", "client_id": "live"}
    )
    assert await back.next("message") == live["message"]
    await back.no_more("message")


async def test_agent_reconnect_rejoins_rooms(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    await agent.disconnect()
    back = await clients.agent()
    assert [c["id"] for c in back.received[0][1]["chats"]] == [chat_id]
    await visitor.call("message", {"chat_id": chat_id, "text": "hi", "client_id": "1"})
    assert (await back.next("message"))["text"] == "hi"


async def test_visitor_grace_expiry_ends_chat(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_VISITOR_GRACE_S="1")
    agent, visitor, chat_id = await matched_pair(clients)
    await visitor.disconnect()
    ended = await agent.next("chat_ended", timeout=5)
    assert ended == {
        "chat_id": chat_id,
        "ended_by": "system",
        "reason": "visitor_left",
    }
    # The agent's slot is free again.
    other = await clients.visitor()
    await other.call("join_queue", {})
    assert (await agent.next("chat_started"))["chat"]["visitor"]["id"] == (
        other.received[0][1]["visitor_id"]
    )


async def test_visitor_grace_expiry_leaves_queue(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_VISITOR_GRACE_S="1")
    first = await clients.visitor()
    second = await clients.visitor()
    await first.call("join_queue", {})
    joined = await second.call("join_queue", {})
    assert joined["position"] == 2
    assert (await second.next("queue_update"))["position"] == 2
    await first.disconnect()
    update = await second.next("queue_update", timeout=5)
    assert update["position"] == 1
    agent = await clients.agent(ready=True)
    started = await agent.next("chat_started")
    assert started["chat"]["id"] == joined["chat"]["id"]


async def test_reconnect_within_grace_keeps_chat(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_VISITOR_GRACE_S="1.5")
    agent, visitor, chat_id = await matched_pair(clients)
    await visitor.disconnect()
    await asyncio.sleep(0.5)
    back = await clients.visitor(token=visitor.auth["token"])
    await asyncio.sleep(1.5)
    await agent.no_more("chat_ended", within=0.1)
    reply = await back.call(
        "message", {"chat_id": chat_id, "text": "back", "client_id": "b"}
    )
    assert reply["ok"] is True


async def test_stale_socket_disconnect_keeps_chat(
    clients_on: Callable[..., Clients],
) -> None:
    """A tab that closes after another tab opened never ends the chat."""
    clients = clients_on(CHAT_VISITOR_GRACE_S="1")
    agent, old_tab, chat_id = await matched_pair(clients)
    new_tab = await clients.visitor(token=old_tab.auth["token"])
    await old_tab.disconnect()
    await asyncio.sleep(1.5)
    await agent.no_more("chat_ended", within=0.1)
    reply = await new_tab.call(
        "message", {"chat_id": chat_id, "text": "tab 2", "client_id": "t"}
    )
    assert reply["ok"] is True


async def test_agent_grace_expiry_requeues_front(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_AGENT_GRACE_S="1")
    alice, visitor, chat_id = await matched_pair(clients, first_message="help")
    await visitor.call(
        "message", {"chat_id": chat_id, "text": "anyone?", "client_id": "2"}
    )
    waiting = await clients.visitor()
    joined = await waiting.call("join_queue", {})
    assert joined["position"] == 1
    assert (await waiting.next("queue_update"))["position"] == 1
    # Forget any position the visitor heard before its chat started.
    visitor.drain("queue_update")

    await alice.disconnect()
    assert await visitor.next("chat_requeued", timeout=5) == {
        "chat_id": chat_id,
        "reason": "agent_left",
        "department": None,
    }
    update = await visitor.next("queue_update")
    assert update == {
        "chat_id": chat_id,
        "position": 1,
        "estimated_wait_s": None,
        "agents_online": 0,
    }
    # The waiting visitor hears first that no agent is online, then that
    # the requeued chat went ahead of it.
    first_update = await waiting.next("queue_update")
    assert (first_update["position"], first_update["agents_online"]) == (1, 0)
    assert (await waiting.next("queue_update"))["position"] == 2

    bob = await clients.agent("bob@example.com", ready=True)
    started = await bob.next("chat_started")
    assert started["chat"]["id"] == chat_id
    assert [m["text"] for m in started["messages"]] == ["help", "anyone?"]
    assert (await visitor.next("chat_started"))["chat"]["agent"]["name"] == "Bob"
    await bob.no_more("chat_started", within=0.3)

    # The old agent is no longer the chat's agent.
    alice_again = await clients.agent("alice@example.com")
    denied = await alice_again.call(
        "message", {"chat_id": chat_id, "text": "x", "client_id": "x"}
    )
    assert denied["error"]["code"] == "forbidden"
    assert alice_again.received[0][1]["status"] == "away"


async def test_agent_grace_expiry_without_chats(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_AGENT_GRACE_S="1")
    agent = await clients.agent(ready=True)
    await agent.disconnect()
    await asyncio.sleep(1.5)
    back = await clients.agent()
    assert back.received[0][1]["status"] == "away"
