"""Matching over real sockets: atomic assignment, FIFO order and capacity."""

from __future__ import annotations

import asyncio

from tests.support import ChatClient, Clients, serve_in_order


async def test_two_agents_one_visitor_race(clients: Clients) -> None:
    """Two agents become ready at the same instant: one visitor, one match.

    Each round starts with both agents away and one visitor waiting, then both
    send `agent_ready` without waiting for each other.
    """
    alice = await clients.agent("alice@example.com")
    bob = await clients.agent("bob@example.com")
    for round_number in range(25):
        visitor = await clients.visitor()
        joined = await visitor.call("join_queue", {})
        chat_id = joined["chat"]["id"]

        replies = await asyncio.gather(
            alice.call("agent_ready", {"max_chats": 1}),
            bob.call("agent_ready", {"max_chats": 1}),
        )
        assert all(reply["ok"] for reply in replies)

        started = await visitor.next("chat_started")
        assert started["chat"]["id"] == chat_id
        await visitor.no_more("chat_started", within=0.3)
        got = [a.drain("chat_started") for a in (alice, bob)]
        assert sum(len(items) for items in got) == 1, f"round {round_number}: {got}"

        await asyncio.gather(alice.call("agent_away"), bob.call("agent_away"))
        ended = await visitor.call("end_chat", {"chat_id": chat_id})
        assert ended["ok"]
        await visitor.disconnect()


async def test_fifo_order(clients: Clients) -> None:
    visitors = [await clients.visitor(name=f"V{n}") for n in range(4)]
    chat_ids = []
    for n, visitor in enumerate(visitors):
        joined = await visitor.call("join_queue", {})
        assert joined["position"] == n + 1
        chat_ids.append(joined["chat"]["id"])

    agent = await clients.agent(ready=True, max_chats=1)
    assert await serve_in_order(agent, len(chat_ids)) == chat_ids


async def test_capacity_never_exceeded(clients: Clients) -> None:
    agent = await clients.agent(ready=True, max_chats=3)
    visitors = [await clients.visitor() for _ in range(6)]
    await asyncio.gather(*(v.call("join_queue", {}) for v in visitors))
    open_chats = [(await agent.next("chat_started"))["chat"]["id"] for _ in range(3)]
    await agent.no_more("chat_started", within=0.5)
    assert len(set(open_chats)) == 3

    await agent.call("end_chat", {"chat_id": open_chats[0]})
    await agent.next("chat_started")
    await agent.no_more("chat_started", within=0.5)


async def test_capacity_raised_drains_queue(clients: Clients) -> None:
    agent = await clients.agent(ready=True, max_chats=1)
    visitors = [await clients.visitor() for _ in range(3)]
    for visitor in visitors:
        await visitor.call("join_queue", {})
    await agent.next("chat_started")
    await agent.no_more("chat_started", within=0.3)
    reply = await agent.call("agent_ready", {"max_chats": 3})
    assert len(reply["chats"]) == 1
    await agent.next("chat_started")
    await agent.next("chat_started")


async def test_burst_of_visitors_two_agents(clients: Clients) -> None:
    """A burst of joins never pushes an agent over its capacity."""
    agents = [
        await clients.agent("alice@example.com", ready=True, max_chats=3),
        await clients.agent("bob@example.com", ready=True, max_chats=3),
    ]
    visitors: list[ChatClient] = [await clients.visitor() for _ in range(20)]
    replies = await asyncio.gather(*(v.call("join_queue", {}) for v in visitors))
    assert all(reply["ok"] for reply in replies)
    await asyncio.sleep(1.0)
    for agent in agents:
        assert len(agent.drain("chat_started")) == 3
    matched = sum(len(v.drain("chat_started")) for v in visitors)
    assert matched == 6


async def test_agent_in_grace_gets_no_new_chat(clients: Clients) -> None:
    agent = await clients.agent(ready=True)
    await agent.disconnect()
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {})
    assert joined["agents_online"] == 0
    await visitor.no_more("chat_started", within=0.5)

    back = await clients.agent()
    started = await back.next("chat_started")
    assert started["chat"]["id"] == joined["chat"]["id"]
