"""Estimated wait in join replies and queue updates, from real chat timings.

The estimate is position * mean chat duration / open capacity once 5 chats
have ended with an agent, the median wait once 5 waits are known, and null
otherwise or with no ready agent. The tests create chats and waits of about
2 s and compare with a tolerance of 1 s, because the server rounds the estimate
to whole seconds and its timestamps differ from the client's by milliseconds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tests.support import DEPARTMENTS, ChatClient, Clients, ready_agent

# Length of each timed chat and of each timed wait, in seconds.
TIMED_S = 2.0
TOLERANCE_S = 1.0


def stored_seconds(start: str, end: str) -> float:
    """Return the seconds from `start` to `end`, two times as the server sends them.

    Such a time is ISO 8601 in UTC with milliseconds: `2026-12-04T15:54:06.385Z`.
    """
    parsed = [
        datetime.fromisoformat(value.replace("Z", "+00:00")) for value in (start, end)
    ]
    return (parsed[1] - parsed[0]).total_seconds()


async def run_timed_chats(
    clients: Clients, agent: ChatClient, count: int
) -> list[float]:
    """Run `count` chats side by side for about TIMED_S and return their durations.

    A duration is the chat's stored `ended_at` minus its `created_at`. The
    agent is ready before the joins, so that is the time from assignment to
    end plus a wait of a few milliseconds.
    """
    visitors = [await clients.visitor() for _ in range(count)]
    await asyncio.gather(*(visitor.call("join_queue", {}) for visitor in visitors))
    chat_ids = [(await agent.next("chat_started"))["chat"]["id"] for _ in visitors]
    await asyncio.sleep(TIMED_S)

    async def end(chat_id: str) -> float:
        ended = await agent.call("end_chat", {"chat_id": chat_id})
        assert ended["ok"], ended
        return stored_seconds(ended["chat"]["created_at"], ended["chat"]["ended_at"])

    return list(await asyncio.gather(*(end(chat_id) for chat_id in chat_ids)))


async def join_waiting(clients: Clients) -> tuple[ChatClient, dict[str, Any]]:
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {})
    assert joined["ok"], joined
    assert joined["chat"]["status"] == "queued"
    return visitor, joined


async def latest_update(visitor: ChatClient) -> dict[str, Any]:
    """Wait for a queue update, let later ones arrive, and return the newest."""
    updates = [await visitor.next("queue_update")]
    await asyncio.sleep(0.5)
    updates += visitor.drain("queue_update")
    return dict(updates[-1])


def assert_close(estimate: Any, expected: float) -> None:
    assert isinstance(estimate, int | float), f"estimate {estimate!r} is no number"
    assert estimate == round(estimate), f"estimate {estimate!r} is not whole seconds"
    assert abs(estimate - expected) <= TOLERANCE_S, (estimate, expected)


async def test_estimate_null_without_data(clients: Clients) -> None:
    _, alone = await join_waiting(clients)
    assert alone["estimated_wait_s"] is None

    agent = await ready_agent(clients, "alice@example.com", max_chats=1)
    await agent.next("chat_started")
    _, waiting = await join_waiting(clients)
    assert waiting["position"] == 1
    assert waiting["agents_online"] == 1
    assert waiting["estimated_wait_s"] is None


async def test_estimate_from_chat_durations(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    agent = await ready_agent(clients, "alice@example.com", max_chats=5)
    durations = await run_timed_chats(clients, agent, 4)

    # Four durations and four waits are not enough for an estimate. A billing
    # chat waits because the agent now serves sales only.
    serving = await agent.call("agent_ready", {"departments": ["sales"]})
    assert serving["ok"], serving
    billing = await clients.visitor()
    early = await billing.call("join_queue", {"department": "billing"})
    assert early["ok"], early
    assert early["position"] == 1
    assert early["agents_online"] == 1
    assert early["estimated_wait_s"] is None
    ended = await billing.call("end_chat", {"chat_id": early["chat"]["id"]})
    assert ended["ok"], ended

    assert (await agent.call("agent_ready", {"departments": []}))["ok"]
    durations += await run_timed_chats(clients, agent, 1)
    mean_s = sum(durations) / len(durations)

    # With one slot of capacity, the estimate is position * mean duration.
    assert (await agent.call("agent_ready", {"max_chats": 1}))["ok"]
    holder = await clients.visitor()
    await holder.call("join_queue", {})
    await agent.next("chat_started")
    waiting = []
    for position in (1, 2, 3):
        visitor, joined = await join_waiting(clients)
        assert joined["position"] == position
        assert_close(joined["estimated_wait_s"], position * mean_s)
        waiting.append(visitor)
    for position, visitor in enumerate(waiting, start=1):
        update = await latest_update(visitor)
        assert update["position"] == position
        assert_close(update["estimated_wait_s"], position * mean_s)
    # Positions count per department, so a billing chat is first in its queue.
    biller = await clients.visitor()
    first_billing = await biller.call("join_queue", {"department": "billing"})
    assert first_billing["position"] == 1
    assert_close(first_billing["estimated_wait_s"], mean_s)

    # Two slots halve the estimate, once the first waiting chat is taken.
    assert (await agent.call("agent_ready", {"max_chats": 2}))["ok"]
    await agent.next("chat_started")
    for position, visitor in enumerate(waiting[1:], start=1):
        update = await latest_update(visitor)
        assert update["position"] == position
        assert_close(update["estimated_wait_s"], position * mean_s / 2)

    # With no ready agent there is no estimate.
    assert (await agent.call("agent_away", {}))["ok"]
    update = await latest_update(waiting[1])
    assert update["agents_online"] == 0
    assert update["estimated_wait_s"] is None


async def test_estimate_from_waits(clients: Clients) -> None:
    agent = await clients.agent("alice@example.com")
    early = [await clients.visitor() for _ in range(5)]
    await asyncio.gather(*(visitor.call("join_queue", {}) for visitor in early))
    joined_at = time.monotonic()
    await asyncio.sleep(TIMED_S)
    assert (await agent.call("agent_ready", {"max_chats": 5}))["ok"]
    waits = []
    for visitor in early:
        await visitor.next("chat_started")
        waits.append(time.monotonic() - joined_at)
    median_s = statistics.median(waits)

    # Five waits are known and no chat has ended yet, so the estimate is
    # their median whatever the position.
    for position in (1, 2):
        visitor, joined = await join_waiting(clients)
        assert joined["position"] == position
        assert_close(joined["estimated_wait_s"], median_s)
        update = await latest_update(visitor)
        assert update["position"] == position
        assert_close(update["estimated_wait_s"], median_s)


async def test_estimate_kept_across_restart(clients: Clients) -> None:
    """The measured waits are read back at start, so estimates go on."""
    agent = await clients.agent("alice@example.com")
    early = [await clients.visitor() for _ in range(5)]
    await asyncio.gather(*(visitor.call("join_queue", {}) for visitor in early))
    joined_at = time.monotonic()
    await asyncio.sleep(TIMED_S)
    assert (await agent.call("agent_ready", {"max_chats": 5}))["ok"]
    waits = []
    for visitor in early:
        await visitor.next("chat_started")
        waits.append(time.monotonic() - joined_at)
    median_s = statistics.median(waits)

    clients.server.stop()
    clients.server.start()
    # The agent's client reconnects by itself within its grace period.
    session = await agent.next("session", timeout=20)
    assert session["status"] == "ready"
    assert len(session["chats"]) == 5
    _visitor, joined = await join_waiting(clients)
    assert joined["position"] == 1
    assert_close(joined["estimated_wait_s"], median_s)
