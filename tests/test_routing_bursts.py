"""Bursts of joins and readies, and queue draining at every change of capacity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tests.support import (
    DEPARTMENTS,
    ChatClient,
    Clients,
    assert_capacity_kept,
    collect_started,
    ready_agent,
    serve_in_order,
    session_of,
    started_count,
)


async def connect_visitors(clients: Clients, count: int) -> list[ChatClient]:
    """Connect `count` visitors, ten at a time."""
    visitors: list[ChatClient] = []
    for start in range(0, count, 10):
        batch = min(10, count - start)
        visitors += await asyncio.gather(*(clients.visitor() for _ in range(batch)))
    return visitors


async def test_burst_of_fifty_visitors(clients: Clients) -> None:
    agents = [
        await clients.agent("alice@example.com"),
        await clients.agent("bob@example.com"),
    ]
    visitors = await connect_visitors(clients, 50)

    joins = [visitor.call("join_queue", {}) for visitor in visitors]
    readies = [agent.call("agent_ready", {"max_chats": 3}) for agent in agents]
    replies = await asyncio.gather(*joins, *readies)
    for reply in replies:
        assert reply["ok"], reply
    created_at = {
        visitor: reply["chat"]["created_at"]
        for visitor, reply in zip(visitors, replies[:50], strict=True)
    }

    # Wait until every waiting visitor has its final place, 10 s at most.
    latest: dict[ChatClient, int] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        for visitor in visitors:
            updates = visitor.drain("queue_update")
            if updates:
                latest[visitor] = updates[-1]["position"]
        waiting = [visitor for visitor in visitors if started_count(visitor) == 0]
        places = sorted(latest.get(visitor, 0) for visitor in waiting)
        if places == list(range(1, 45)):
            break
    await asyncio.sleep(0.5)

    for agent in agents:
        assert assert_capacity_kept(agent, 3) == 3
    assert sum(started_count(agent) for agent in agents) == 6
    served = [visitor for visitor in visitors if started_count(visitor) > 0]
    waiting = [visitor for visitor in visitors if started_count(visitor) == 0]
    assert len(served) == 6
    for visitor in served:
        assert started_count(visitor) == 1

    # Every waiting visitor has a distinct place, and places follow the
    # order in which the server stored the joins.
    for visitor in waiting:
        updates = visitor.drain("queue_update")
        if updates:
            latest[visitor] = updates[-1]["position"]
        assert visitor in latest, "a waiting visitor got no queue_update"
    assert sorted(latest[visitor] for visitor in waiting) == list(range(1, 45))
    by_position = sorted(waiting, key=lambda visitor: latest[visitor])
    times = [created_at[visitor] for visitor in by_position]
    assert times == sorted(times)
    assert max(created_at[v] for v in served) <= min(times)


async def test_burst_of_joins_and_readies(clients: Clients) -> None:
    """Serve thirty visitors who join at once with six agents, in three waves."""
    agents = [await clients.agent(f"agent{n}@example.com") for n in range(6)]
    visitors = await connect_visitors(clients, 30)

    joins = [visitor.call("join_queue", {}) for visitor in visitors]
    readies = [agent.call("agent_ready", {"max_chats": 2}) for agent in agents]
    replies = await asyncio.gather(*joins, *readies)
    for reply in replies:
        assert reply["ok"], reply
    created_at = {
        reply["chat"]["id"]: reply["chat"]["created_at"] for reply in replies[:30]
    }

    served_waves: list[list[str]] = []
    remaining = set(created_at)
    for wave in range(3):
        expected = min(12, len(remaining))
        open_chats = await collect_started(agents, expected)
        assert len(open_chats) == expected, f"wave {wave}: {open_chats}"
        for agent in agents:
            assert assert_capacity_kept(agent, 2) <= 2

        wave_ids = [chat_id for _, chat_id in open_chats]
        assert len(set(wave_ids)) == expected
        remaining -= set(wave_ids)
        if remaining:
            assert max(created_at[c] for c in wave_ids) <= min(
                created_at[c] for c in remaining
            ), f"wave {wave} skipped an older chat"
        served_waves.append(wave_ids)
        ends = [agent.call("end_chat", {"chat_id": c}) for agent, c in open_chats]
        for ended in await asyncio.gather(*ends):
            assert ended["ok"], ended

    assert remaining == set()
    for visitor in visitors:
        assert started_count(visitor) == 1


# The queue drains at every change of capacity


async def test_drain_when_chat_ends(clients: Clients) -> None:
    agent = await ready_agent(clients, "alice@example.com", max_chats=1)
    first = await clients.visitor()
    first_chat = (await first.call("join_queue", {}))["chat"]["id"]
    second = await clients.visitor()
    second_chat = (await second.call("join_queue", {}))["chat"]["id"]
    assert (await agent.next("chat_started"))["chat"]["id"] == first_chat
    await agent.no_more("chat_started", within=0.3)

    assert (await first.call("end_chat", {"chat_id": first_chat}))["ok"]
    assert (await agent.next("chat_started"))["chat"]["id"] == second_chat
    assert (await second.next("chat_started"))["chat"]["id"] == second_chat


async def test_drain_when_agent_reconnects(clients: Clients) -> None:
    agent = await ready_agent(clients, "alice@example.com", max_chats=1)
    await agent.disconnect()
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {})
    assert joined["agents_online"] == 0
    await visitor.no_more("chat_started", within=0.5)

    back = await clients.agent("alice@example.com")
    assert session_of(back)["status"] == "ready"
    assert (await back.next("chat_started"))["chat"]["id"] == joined["chat"]["id"]


async def test_drain_when_max_chats_raised(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    agent = await ready_agent(
        clients, "alice@example.com", max_chats=1, departments=["sales"]
    )
    chat_ids = []
    for _ in range(3):
        visitor = await clients.visitor()
        joined = await visitor.call("join_queue", {"department": "sales"})
        chat_ids.append(joined["chat"]["id"])
    assert (await agent.next("chat_started"))["chat"]["id"] == chat_ids[0]
    await agent.no_more("chat_started", within=0.3)

    raised = await agent.call("agent_ready", {"max_chats": 3, "departments": ["sales"]})
    assert raised["ok"], raised
    assert (await agent.next("chat_started"))["chat"]["id"] == chat_ids[1]
    assert (await agent.next("chat_started"))["chat"]["id"] == chat_ids[2]


async def test_drain_when_transferred_to_department(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    alice = await ready_agent(clients, "alice@example.com", max_chats=1)
    biller = await ready_agent(
        clients, "carol@example.com", max_chats=1, departments=["billing"]
    )
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"department": "sales"}))["chat"]["id"]
    assert (await alice.next("chat_started"))["chat"]["id"] == chat_id
    assert (await visitor.next("chat_started"))["chat"]["agent"]["name"] == "Alice"
    waiting = await clients.visitor()
    waiting_chat = (await waiting.call("join_queue", {"department": "sales"}))["chat"][
        "id"
    ]
    await waiting.no_more("chat_started", within=0.3)

    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "department": "billing"}
    )
    assert moved["ok"], moved
    # The billing agent takes the transferred chat, and Alice's freed slot
    # takes the sales visitor who was waiting.
    assert (await biller.next("chat_started"))["chat"]["id"] == chat_id
    assert (await alice.next("chat_started"))["chat"]["id"] == waiting_chat
    assert (await visitor.next("chat_started"))["chat"]["agent"]["name"] == "Carol"


async def test_requeued_chat_served_first(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_AGENT_GRACE_S="1")
    alice = await ready_agent(clients, "alice@example.com", max_chats=1)
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {}))["chat"]["id"]
    assert (await alice.next("chat_started"))["chat"]["id"] == chat_id
    newer: list[tuple[ChatClient, str]] = []
    for _ in range(2):
        other = await clients.visitor()
        joined: dict[str, Any] = await other.call("join_queue", {})
        newer.append((other, joined["chat"]["id"]))

    await alice.disconnect()
    requeued = await visitor.next("chat_requeued", timeout=5)
    assert requeued == {"chat_id": chat_id, "reason": "agent_left", "department": None}
    assert (await visitor.next("queue_update", timeout=3))["position"] == 1
    for place, (other, _) in enumerate(newer, start=2):
        updates = [await other.next("queue_update")]
        await asyncio.sleep(0.5)
        updates += other.drain("queue_update")
        assert updates[-1]["position"] == place

    bob = await ready_agent(clients, "bob@example.com", max_chats=1)
    served = await serve_in_order(bob, 3)
    assert served == [chat_id] + [other_chat for _, other_chat in newer]


async def test_agent_grace_requeues_many_chats(
    clients_on: Callable[..., Clients],
) -> None:
    """Requeue four chats at once, and tell each visitor before Bob takes it."""
    clients = clients_on(CHAT_AGENT_GRACE_S="1")
    alice = await ready_agent(clients, "alice@example.com", max_chats=4)
    visitors = await connect_visitors(clients, 4)
    chat_ids = []
    for visitor in visitors:
        chat_ids.append((await visitor.call("join_queue", {}))["chat"]["id"])
    for _ in chat_ids:
        await alice.next("chat_started")
    bob = await ready_agent(clients, "bob@example.com", max_chats=4)

    await alice.disconnect()
    taken = await collect_started([bob], 4)
    assert sorted(chat_id for _, chat_id in taken) == sorted(chat_ids)
    for visitor, chat_id in zip(visitors, chat_ids, strict=True):
        moves = [
            (event, data)
            for event, data in visitor.received
            if event in ("chat_started", "chat_requeued")
        ]
        assert [event for event, _ in moves] == [
            "chat_started",
            "chat_requeued",
            "chat_started",
        ], moves
        assert moves[1][1] == {
            "chat_id": chat_id,
            "reason": "agent_left",
            "department": None,
        }
        assert moves[2][1]["chat"]["agent"]["name"] == "Bob"


async def test_burst_across_departments(clients_on: Callable[..., Clients]) -> None:
    """Joins for two departments and readies with mixed serving, all at once.

    In each wave no agent goes over capacity or gets a department it does not
    serve, and every department is served oldest first.
    """
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    plan: list[tuple[str, int, list[str] | None]] = [
        ("alice@example.com", 2, ["sales"]),
        ("bob@example.com", 2, ["billing"]),
        ("carol@example.com", 2, None),
        ("dave@example.com", 1, ["sales", "billing"]),
    ]
    agents = [await clients.agent(email) for email, _, _ in plan]
    visitors = await connect_visitors(clients, 24)
    departments = ["sales" if n % 3 else "billing" for n in range(24)]

    joins = [
        visitor.call("join_queue", {"department": department})
        for visitor, department in zip(visitors, departments, strict=True)
    ]
    readies = []
    for agent, (_, max_chats, serving) in zip(agents, plan, strict=True):
        payload: dict[str, Any] = {"max_chats": max_chats}
        if serving is not None:
            payload["departments"] = serving
        readies.append(agent.call("agent_ready", payload))
    replies = await asyncio.gather(*joins, *readies)
    for reply in replies:
        assert reply["ok"], reply
    chats = {reply["chat"]["id"]: reply["chat"] for reply in replies[:24]}

    remaining = set(chats)
    for wave in range(2):
        open_chats = await collect_started(agents, 7)
        assert len(open_chats) == 7, f"wave {wave}: {open_chats}"
        for agent, (_, max_chats, serving) in zip(agents, plan, strict=True):
            assert assert_capacity_kept(agent, max_chats) <= max_chats
            for owner, chat_id in open_chats:
                if owner is agent and serving is not None:
                    assert chats[chat_id]["department"] in serving, (wave, chat_id)

        served = {chat_id for _, chat_id in open_chats}
        assert served <= remaining
        remaining -= served
        for department in ("sales", "billing"):
            served_times = [
                chats[c]["created_at"]
                for c in served
                if chats[c]["department"] == department
            ]
            waiting_times = [
                chats[c]["created_at"]
                for c in remaining
                if chats[c]["department"] == department
            ]
            if served_times and waiting_times:
                assert max(served_times) <= min(waiting_times), (wave, department)
        ends = [agent.call("end_chat", {"chat_id": c}) for agent, c in open_chats]
        for ended in await asyncio.gather(*ends):
            assert ended["ok"], ended
