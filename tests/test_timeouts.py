"""Queue, agent reply and visitor idle timeouts over real sockets.

Every server here checks its timeouts every 0.2 s (`CHAT_TIMER_INTERVAL_S`),
so a 1 s timeout fires between 1.0 and about 1.4 s after its start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import (
    ChatClient,
    Clients,
    http_json,
    ready_agent,
    scrape_metrics,
    session_of,
)

TIMER = {"CHAT_TIMER_INTERVAL_S": "0.2"}
# Maximum wait for a 1 s timeout to fire, with room for a busy machine.
FIRE_WITHIN_S = 5.0


def ended_events(client: ChatClient, chat_id: str) -> list[Any]:
    return [
        data
        for event, data in client.received
        if event == "chat_ended" and data["chat_id"] == chat_id
    ]


async def fetch_chat(
    clients: Clients, token: str, chat_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the stored chat and its messages, read over HTTP."""
    status, body = await http_json(
        clients.server, "GET", f"/api/chats/{chat_id}/messages", token=token
    )
    assert status == 200, body
    return dict(body["chat"]), list(body["messages"])


async def listed_ids(clients: Clients, token: str, status: str) -> list[str]:
    code, body = await http_json(
        clients.server, "GET", f"/api/chats?status={status}&limit=500", token=token
    )
    assert code == 200, body
    return [chat["id"] for chat in body["chats"]]


async def transitions(clients: Clients, transition: str) -> float:
    """Return the server's `chat_lifecycle_total` count for `transition`."""
    samples = await scrape_metrics(clients.server)
    return samples.get(f'chat_lifecycle_total{{transition="{transition}"}}', 0.0)


async def replace_sockets(
    clients: Clients, first: ChatClient, start: float, until_s: float
) -> list[ChatClient]:
    """Swap the visitor's socket for a new one every 0.1 s until `until_s`.

    `start` is the `time.monotonic()` the period counts from. Returns every
    socket used, oldest first. Only the last one is still connected.
    """
    token = first.auth["token"]
    sockets = [first]
    for _ in range(20):
        if time.monotonic() - start > until_s:
            break
        await sockets[-1].disconnect()
        sockets.append(await clients.visitor(token=token, transports=["websocket"]))
        await asyncio.sleep(0.1)
    return sockets


def assert_notified_once(sockets: list[ChatClient], chat_id: str) -> None:
    """Check that every socket got one chat_ended at most, and none missed one.

    The last socket is still connected. If its `session` showed the chat as
    open, a `chat_ended` must arrive after that session, or the client would
    show an open chat forever.
    """
    for socket in sockets:
        assert len(ended_events(socket, chat_id)) <= 1, socket.received
    last = sockets[-1]
    events = [event for event, _ in last.received]
    session_index = events.index("session")
    shown = last.received[session_index][1]["chat"]
    ended_after = [
        data
        for event, data in last.received[session_index + 1 :]
        if event == "chat_ended" and data["chat_id"] == chat_id
    ]
    if shown is not None and shown["id"] == chat_id:
        assert len(ended_after) == 1, (shown, last.received)
    else:
        assert ended_events(last, chat_id) == [], (shown, last.received)


# Queue timeout


async def test_queue_timeout_makes_missed(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="1", **TIMER)
    visitor = await clients.visitor(name="Vera")
    tab = await clients.visitor(token=visitor.auth["token"])
    joined_at = time.monotonic()
    joined = await visitor.call("join_queue", {"message": "anyone there?"})
    chat_id = joined["chat"]["id"]
    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": "hello?", "client_id": "m-2"}
    )
    assert sent["ok"], sent

    expected = {"chat_id": chat_id, "ended_by": "system", "reason": "queue_timeout"}
    assert await visitor.next("chat_ended", timeout=FIRE_WITHIN_S) == expected
    assert time.monotonic() - joined_at >= 0.9
    assert await tab.next("chat_ended") == expected
    await visitor.no_more("chat_ended", within=1.0)
    await tab.no_more("chat_ended", within=0.0)

    agent = await clients.agent()
    token = agent.auth["token"]
    assert (await listed_ids(clients, token, "missed")).count(chat_id) == 1
    assert chat_id not in await listed_ids(clients, token, "queued")
    assert chat_id not in await listed_ids(clients, token, "ended")
    chat, messages = await fetch_chat(clients, token, chat_id)
    assert chat["status"] == "missed"
    assert chat["agent"] is None
    assert [m["text"] for m in messages] == ["anyone there?", "hello?"]

    late = await visitor.call(
        "message", {"chat_id": chat_id, "text": "late", "client_id": "m-3"}
    )
    assert late["ok"] is False
    assert late["error"]["code"] == "wrong_state"
    # The missed chat is closed, so the next join opens a new chat, which the
    # agent gets instead of the missed one.
    again = await visitor.call("join_queue", {})
    assert again["chat"]["id"] != chat_id
    assert again["chat"]["status"] == "queued"
    assert (await agent.call("agent_ready", {}))["ok"]
    assert (await agent.next("chat_started"))["chat"]["id"] == again["chat"]["id"]


@pytest.mark.parametrize("steady_tab", [True, False])
async def test_queue_timeout_once_across_reconnects(
    clients_on: Callable[..., Clients], steady_tab: bool
) -> None:
    """Sockets come and go around the deadline, and each gets one chat_ended at most.

    A socket whose session still showed the chat as queued must get exactly
    one `chat_ended`, or the visitor would wait for an agent forever.
    """
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="1", **TIMER)
    first = await clients.visitor(transports=["websocket"])
    token = first.auth["token"]
    steady = await clients.visitor(token=token) if steady_tab else None
    chat_id = (await first.call("join_queue", {"message": "hi"}))["chat"]["id"]
    start = time.monotonic()
    await asyncio.sleep(0.6)
    sockets = await replace_sockets(clients, first, start, until_s=2.0)
    await asyncio.sleep(FIRE_WITHIN_S - (time.monotonic() - start))

    assert_notified_once(sockets, chat_id)
    assert await transitions(clients, "missed") == 1
    # The steady tab was connected before the join, so it is in the chat's room.
    if steady is not None:
        assert ended_events(steady, chat_id) == [
            {"chat_id": chat_id, "ended_by": "system", "reason": "queue_timeout"}
        ]

    agent = await clients.agent()
    assert (await listed_ids(clients, agent.auth["token"], "missed")).count(
        chat_id
    ) == 1
    chat, messages = await fetch_chat(clients, agent.auth["token"], chat_id)
    assert chat["status"] == "missed"
    assert [m["text"] for m in messages] == ["hi"]
    fresh = await clients.visitor(token=token)
    assert session_of(fresh)["chat"] is None


async def test_queue_timeout_many_reconnecting(
    clients_on: Callable[..., Clients],
) -> None:
    """Eight visitors time out in the same check while each swaps sockets."""
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="1", **TIMER)
    firsts = [await clients.visitor(transports=["websocket"]) for _ in range(8)]
    joins = await asyncio.gather(
        *(visitor.call("join_queue", {"message": "hi"}) for visitor in firsts)
    )
    chat_ids = [joined["chat"]["id"] for joined in joins]
    start = time.monotonic()
    await asyncio.sleep(0.7)
    socket_lists = await asyncio.gather(
        *(replace_sockets(clients, first, start, until_s=1.9) for first in firsts)
    )
    await asyncio.sleep(FIRE_WITHIN_S - (time.monotonic() - start))

    agent = await clients.agent()
    missed = await listed_ids(clients, agent.auth["token"], "missed")
    for sockets, chat_id in zip(socket_lists, chat_ids, strict=True):
        assert_notified_once(sockets, chat_id)
        assert missed.count(chat_id) == 1
    assert await transitions(clients, "missed") == len(chat_ids)


async def test_queue_timeout_zero_is_off(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="0", **TIMER)
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {})
    await visitor.no_more("chat_ended", within=2.0)
    agent = await ready_agent(clients, "alice@example.com")
    assert (await agent.next("chat_started"))["chat"]["id"] == joined["chat"]["id"]


# Agent reply timeout


async def test_reply_timeout_off_by_default(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(**TIMER)
    alice = await ready_agent(clients, "alice@example.com")
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"message": "hi"}))["chat"]["id"]
    await alice.next("chat_started")
    bob = await ready_agent(clients, "bob@example.com")

    await alice.no_more("chat_removed", within=2.5)
    assert visitor.drain("chat_requeued") == []
    assert bob.drain("chat_started") == []
    sent = await alice.call(
        "message", {"chat_id": chat_id, "text": "sorry", "client_id": "a"}
    )
    assert sent["ok"], sent


async def test_reply_timeout_moves_chat(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_AGENT_REPLY_TIMEOUT_S="1", **TIMER)
    bob = await ready_agent(clients, "bob@example.com", max_chats=1)
    kept = await clients.visitor()
    kept_chat = (await kept.call("join_queue", {}))["chat"]["id"]
    assert (await bob.next("chat_started"))["chat"]["id"] == kept_chat
    answer = await bob.call(
        "message", {"chat_id": kept_chat, "text": "Bob here", "client_id": "b-1"}
    )
    assert answer["ok"], answer

    alice = await ready_agent(clients, "alice@example.com", max_chats=1)
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"message": "help"}))["chat"]["id"]
    assert (await alice.next("chat_started"))["chat"]["id"] == chat_id
    assigned_at = time.monotonic()
    assert (await visitor.next("chat_started"))["chat"]["agent"]["name"] == "Alice"
    newer = await clients.visitor()
    newer_chat = (await newer.call("join_queue", {}))["chat"]["id"]

    # Alice sends no message, so the chat goes back to the front of the queue.
    removed = await alice.next("chat_removed", timeout=FIRE_WITHIN_S)
    assert removed["chat_id"] == chat_id
    assert removed["reason"] == "no_reply"
    assert time.monotonic() - assigned_at >= 0.9
    assert await visitor.next("chat_requeued") == {
        "chat_id": chat_id,
        "reason": "no_reply",
        "department": None,
    }
    rejected = await alice.call(
        "message", {"chat_id": chat_id, "text": "here now", "client_id": "a-1"}
    )
    assert rejected["ok"] is False
    assert rejected["error"]["code"] == "forbidden"

    # Alice's free slot goes to the newer chat, and the requeued one waits in
    # front for another agent.
    started = await alice.next("chat_started")
    assert started["chat"]["id"] == newer_chat
    reply = await alice.call(
        "message", {"chat_id": newer_chat, "text": "Alice here", "client_id": "a-2"}
    )
    assert reply["ok"], reply
    update = await visitor.next("queue_update")
    assert update["position"] == 1

    # Bob replied in time, so he still has his chat.
    assert bob.drain("chat_removed") == []
    assert kept.drain("chat_requeued") == []
    still = await bob.call(
        "message", {"chat_id": kept_chat, "text": "still here", "client_id": "b-2"}
    )
    assert still["ok"], still
    assert (await kept.next("message"))["text"] == "Bob here"
    assert (await kept.next("message"))["text"] == "still here"

    assert (await bob.call("end_chat", {"chat_id": kept_chat}))["ok"]
    taken = await bob.next("chat_started")
    assert taken["chat"]["id"] == chat_id
    assert [m["text"] for m in taken["messages"]] == ["help"]
    assert (await visitor.next("chat_started"))["chat"]["agent"]["name"] == "Bob"
    answer = await bob.call(
        "message", {"chat_id": chat_id, "text": "Bob here", "client_id": "b-3"}
    )
    assert answer["ok"], answer
    await asyncio.sleep(1.5)
    assert bob.drain("chat_removed") == []
    assert alice.drain("chat_removed") == []


# Visitor idle timeout


async def test_idle_visitor_chat_ends(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_VISITOR_IDLE_TIMEOUT_S="1", **TIMER)
    alice = await ready_agent(clients, "alice@example.com")
    alice_tab = await clients.agent("alice@example.com")
    visitor = await clients.visitor()
    visitor_tab = await clients.visitor(token=visitor.auth["token"])
    chat_id = (await visitor.call("join_queue", {}))["chat"]["id"]
    await alice.next("chat_started")
    activated_at = time.monotonic()

    # Agent messages do not keep the chat open.
    for n in range(3):
        sent = await alice.call(
            "message", {"chat_id": chat_id, "text": f"hello? {n}", "client_id": f"{n}"}
        )
        assert sent["ok"], sent
        await asyncio.sleep(0.2)

    expected = {"chat_id": chat_id, "ended_by": "system", "reason": "inactive"}
    assert await visitor.next("chat_ended", timeout=FIRE_WITHIN_S) == expected
    assert time.monotonic() - activated_at >= 0.9
    await asyncio.sleep(1.0)
    for socket in (visitor, visitor_tab, alice, alice_tab):
        assert ended_events(socket, chat_id) == [expected]

    chat, _ = await fetch_chat(clients, alice.auth["token"], chat_id)
    assert chat["status"] == "ended"
    assert chat["ended_by"] == "system"
    assert chat["end_reason"] == "inactive"

    # Alice's slot is free again.
    other = await clients.visitor()
    other_chat = (await other.call("join_queue", {}))["chat"]["id"]
    assert (await alice.next("chat_started"))["chat"]["id"] == other_chat


async def test_visitor_messages_keep_chat(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_VISITOR_IDLE_TIMEOUT_S="2", **TIMER)
    alice = await ready_agent(clients, "alice@example.com")
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {}))["chat"]["id"]
    await alice.next("chat_started")

    # A message every 0.4 s for 4 s, twice the idle timeout.
    for n in range(10):
        await asyncio.sleep(0.4)
        sent = await visitor.call(
            "message",
            {"chat_id": chat_id, "text": f"still here {n}", "client_id": f"{n}"},
        )
        assert sent["ok"], sent
        last_sent_at = time.monotonic()
    assert ended_events(visitor, chat_id) == []
    assert ended_events(alice, chat_id) == []

    ended = await alice.next("chat_ended", timeout=FIRE_WITHIN_S)
    assert ended["reason"] == "inactive"
    assert time.monotonic() - last_sent_at >= 1.8


async def test_idle_timeout_once_across_reconnect(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_VISITOR_IDLE_TIMEOUT_S="1", **TIMER)
    alice = await ready_agent(clients, "alice@example.com")
    first = await clients.visitor(transports=["websocket"])
    chat_id = (await first.call("join_queue", {}))["chat"]["id"]
    await alice.next("chat_started")
    start = time.monotonic()
    await asyncio.sleep(0.6)
    sockets = await replace_sockets(clients, first, start, until_s=2.0)
    await asyncio.sleep(FIRE_WITHIN_S - (time.monotonic() - start))

    assert ended_events(alice, chat_id) == [
        {"chat_id": chat_id, "ended_by": "system", "reason": "inactive"}
    ]
    assert_notified_once(sockets, chat_id)
    chat, _ = await fetch_chat(clients, alice.auth["token"], chat_id)
    assert chat["status"] == "ended"
    assert chat["end_reason"] == "inactive"


async def test_idle_timeout_many_reconnecting(
    clients_on: Callable[..., Clients],
) -> None:
    """Six idle chats end in the same check while each visitor swaps sockets."""
    clients = clients_on(CHAT_VISITOR_IDLE_TIMEOUT_S="1", **TIMER)
    alice = await ready_agent(clients, "alice@example.com", max_chats=6)
    firsts = [await clients.visitor(transports=["websocket"]) for _ in range(6)]
    joins = await asyncio.gather(
        *(visitor.call("join_queue", {}) for visitor in firsts)
    )
    chat_ids = [joined["chat"]["id"] for joined in joins]
    for _ in chat_ids:
        await alice.next("chat_started")
    start = time.monotonic()
    await asyncio.sleep(0.7)
    socket_lists = await asyncio.gather(
        *(replace_sockets(clients, first, start, until_s=1.9) for first in firsts)
    )
    await asyncio.sleep(FIRE_WITHIN_S - (time.monotonic() - start))

    for sockets, chat_id in zip(socket_lists, chat_ids, strict=True):
        assert_notified_once(sockets, chat_id)
        assert len(ended_events(alice, chat_id)) == 1
        chat, _ = await fetch_chat(clients, alice.auth["token"], chat_id)
        assert chat["end_reason"] == "inactive"
    assert await transitions(clients, "ended") == len(chat_ids)


async def test_reply_timeout_after_transfer(
    clients_on: Callable[..., Clients],
) -> None:
    """A transfer restarts the reply clock, so the new agent must reply too."""
    clients = clients_on(CHAT_AGENT_REPLY_TIMEOUT_S="1", **TIMER)
    alice = await ready_agent(clients, "alice@example.com")
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"message": "help"}))["chat"]["id"]
    await alice.next("chat_started")
    await visitor.next("chat_started")
    answer = await alice.call(
        "message", {"chat_id": chat_id, "text": "Alice here", "client_id": "a-1"}
    )
    assert answer["ok"], answer
    # Alice replied in time, so she keeps the chat past the timeout.
    await alice.no_more("chat_removed", within=1.6)

    bob = await ready_agent(clients, "bob@example.com")
    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "agent_id": session_of(bob)["agent_id"]}
    )
    assert moved["ok"], moved
    transferred_at = time.monotonic()
    await bob.next("chat_started")

    removed = await bob.next("chat_removed", timeout=FIRE_WITHIN_S)
    assert removed["chat_id"] == chat_id
    assert removed["reason"] == "no_reply"
    assert time.monotonic() - transferred_at >= 0.9
    requeued = await visitor.next("chat_requeued")
    assert requeued["reason"] == "no_reply"
    # Alice is the other free agent, so the chat comes back to her.
    started = await alice.next("chat_started")
    assert started["chat"]["id"] == chat_id
    assert [m["text"] for m in started["messages"]] == ["help", "Alice here"]
    await bob.no_more("chat_started", within=0.3)


async def test_reply_timeout_many_chats(clients_on: Callable[..., Clients]) -> None:
    """Move four unanswered chats at once, and check that each ends up with Bob."""
    clients = clients_on(CHAT_AGENT_REPLY_TIMEOUT_S="1", **TIMER)
    alice = await ready_agent(clients, "alice@example.com", max_chats=4)
    visitors = [await clients.visitor() for _ in range(4)]
    joins = await asyncio.gather(*(v.call("join_queue", {}) for v in visitors))
    chat_ids = [joined["chat"]["id"] for joined in joins]
    for _ in chat_ids:
        await alice.next("chat_started")
    bob = await ready_agent(clients, "bob@example.com", max_chats=4)

    taken = []
    for _ in chat_ids:
        started = await bob.next("chat_started", timeout=FIRE_WITHIN_S)
        chat_id = started["chat"]["id"]
        answer = await bob.call(
            "message", {"chat_id": chat_id, "text": "Bob here", "client_id": "b"}
        )
        assert answer["ok"], answer
        taken.append(chat_id)
    assert sorted(taken) == sorted(chat_ids)
    await asyncio.sleep(0.5)

    removed = [
        data["chat_id"] for event, data in alice.received if event == "chat_removed"
    ]
    assert sorted(removed) == sorted(chat_ids)
    for visitor, chat_id in zip(visitors, chat_ids, strict=True):
        moves = [
            (event, data)
            for event, data in visitor.received
            if event in ("chat_started", "chat_requeued")
        ]
        # Alice's start, the requeue, then Bob's start, in that order.
        assert [event for event, _ in moves] == [
            "chat_started",
            "chat_requeued",
            "chat_started",
        ], moves
        assert moves[1][1]["reason"] == "no_reply"
        assert moves[2][1]["chat"]["agent"]["name"] == "Bob"
        assert moves[2][1]["chat"]["id"] == chat_id


@pytest.mark.parametrize("offset_s", [-0.1, 0.0, 0.1, 0.2])
async def test_queue_timeout_vs_assignment(
    clients_on: Callable[..., Clients], offset_s: float
) -> None:
    """An agent becomes ready at the queue deadline, and one outcome wins."""
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="1", **TIMER)
    agent = await clients.agent("alice@example.com")
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"message": "hi"}))["chat"]["id"]
    await asyncio.sleep(1.0 + offset_s)
    assert (await agent.call("agent_ready", {}))["ok"]
    await asyncio.sleep(1.5)

    chat, _ = await fetch_chat(clients, agent.auth["token"], chat_id)
    visitor_started = [
        data for event, data in visitor.received if event == "chat_started"
    ]
    agent_started = [data for event, data in agent.received if event == "chat_started"]
    if chat["status"] == "missed":
        assert ended_events(visitor, chat_id) == [
            {"chat_id": chat_id, "ended_by": "system", "reason": "queue_timeout"}
        ]
        assert visitor_started == []
        assert agent_started == []
    else:
        assert chat["status"] == "active", chat
        assert chat["agent"]["name"] == "Alice"
        assert ended_events(visitor, chat_id) == []
        assert [data["chat"]["id"] for data in visitor_started] == [chat_id]
        assert [data["chat"]["id"] for data in agent_started] == [chat_id]


async def test_idle_clock_starts_at_assignment(
    clients_on: Callable[..., Clients],
) -> None:
    """Time spent queued does not count as visitor inactivity."""
    clients = clients_on(CHAT_VISITOR_IDLE_TIMEOUT_S="1", **TIMER)
    agent = await clients.agent("alice@example.com")
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"message": "hi"}))["chat"]["id"]
    await asyncio.sleep(2.0)
    assert (await agent.call("agent_ready", {}))["ok"]
    await agent.next("chat_started")
    assigned_at = time.monotonic()

    ended = await agent.next("chat_ended", timeout=FIRE_WITHIN_S)
    assert ended["chat_id"] == chat_id
    assert ended["reason"] == "inactive"
    assert time.monotonic() - assigned_at >= 0.8


async def test_queue_clock_restarts_on_requeue(
    clients_on: Callable[..., Clients],
) -> None:
    """A chat back in the queue gets the whole queue timeout again."""
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="2", **TIMER)
    alice = await clients.agent("alice@example.com")
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"message": "hi"}))["chat"]["id"]
    await asyncio.sleep(1.5)
    assert (await alice.call("agent_ready", {}))["ok"]
    await alice.next("chat_started")
    await asyncio.sleep(1.0)

    moved = await alice.call("transfer_chat", {"chat_id": chat_id, "department": None})
    assert moved["ok"], moved
    requeued_at = time.monotonic()
    ended = await visitor.next("chat_ended", timeout=FIRE_WITHIN_S)
    assert ended["reason"] == "queue_timeout"
    assert time.monotonic() - requeued_at >= 1.8


async def test_queue_timeout_after_restart(
    clients_on: Callable[..., Clients],
) -> None:
    """A deadline that passed while the server was down fires after the start."""
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="2", **TIMER)
    server = clients.server
    await server.create_agent("alice@example.com")
    visitor = clients.client({"role": "visitor", "token": None}, reconnection=False)
    await visitor.connect()
    chat_id = (await visitor.call("join_queue", {"message": "hi"}))["chat"]["id"]
    server.kill()
    await asyncio.sleep(2.5)
    server.start()
    await asyncio.sleep(1.0)

    token = await server.login("alice@example.com")
    missed = await listed_ids(clients, token, "missed")
    assert missed.count(chat_id) == 1
    chat, messages = await fetch_chat(clients, token, chat_id)
    assert chat["end_reason"] == "queue_timeout"
    assert [m["text"] for m in messages] == ["hi"]
    back = await clients.visitor(token=visitor.auth["token"])
    assert session_of(back)["chat"] is None
