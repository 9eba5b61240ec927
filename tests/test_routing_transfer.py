"""Chat transfer over real sockets: to an agent, to a department, and in races."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.support import (
    DEPARTMENTS,
    ChatClient,
    Clients,
    http_json,
    ready_agent,
    session_of,
)

UNKNOWN_AGENT_ID = "00000000-0000-4000-8000-000000000000"
# Messages that each of two visitor tabs sends while the chat is transferred.
STREAM_MESSAGES = 40


async def start_chat(
    clients: Clients,
    agent: ChatClient,
    *,
    department: str | None = None,
    message: str | None = None,
) -> tuple[ChatClient, str]:
    """Connect a visitor, join the queue and wait until `agent` takes the chat."""
    visitor = await clients.visitor(name="Vera")
    payload: dict[str, Any] = {}
    if department is not None:
        payload["department"] = department
    if message is not None:
        payload["message"] = message
    joined = await visitor.call("join_queue", payload)
    assert joined["ok"], joined
    chat_id = str(joined["chat"]["id"])
    started = await visitor.next("chat_started")
    assert started["chat"]["id"] == chat_id
    agent_started = await agent.next("chat_started")
    assert agent_started["chat"]["id"] == chat_id
    return visitor, chat_id


def agent_id(agent: ChatClient) -> str:
    return str(session_of(agent)["agent_id"])


def message_seqs(client: ChatClient, chat_id: str) -> list[int]:
    """Return the seq of every `message` event `client` received for `chat_id`."""
    return [
        data["seq"]
        for event, data in client.received
        if event == "message" and data["chat_id"] == chat_id
    ]


async def assert_chat_with(
    agent: ChatClient, visitor: ChatClient, chat_id: str, text: str
) -> None:
    """Check that `agent` can still write to `visitor` in `chat_id`."""
    sent = await agent.call(
        "message", {"chat_id": chat_id, "text": text, "client_id": text}
    )
    assert sent["ok"], sent
    assert (await visitor.next("message"))["text"] == text


# Transfer to a named agent


async def test_transfer_to_ready_agent(clients: Clients) -> None:
    alice = await ready_agent(clients, "alice@example.com")
    alice_tab = await clients.agent("alice@example.com")
    visitor, chat_id = await start_chat(clients, alice, message="hello")
    answer = await alice.call(
        "message", {"chat_id": chat_id, "text": "Alice here", "client_id": "a-1"}
    )
    assert answer["ok"], answer
    assert (await visitor.next("message"))["text"] == "Alice here"
    note = await alice.call(
        "note", {"chat_id": chat_id, "text": "wants a refund", "client_id": "n-1"}
    )
    assert note["ok"], note

    bob = await ready_agent(clients, "bob@example.com")
    bob_tab = await clients.agent("bob@example.com")
    bob_ref = {"id": agent_id(bob), "name": "Bob"}
    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
    )
    assert moved["ok"], moved
    assert moved["chat"]["id"] == chat_id
    assert moved["chat"]["status"] == "active"
    assert moved["chat"]["agent"] == bob_ref

    assert await visitor.next("chat_transferred") == {
        "chat_id": chat_id,
        "agent": bob_ref,
    }
    for old_socket in (alice, alice_tab):
        assert await old_socket.next("chat_removed") == {
            "chat_id": chat_id,
            "reason": "transferred",
            "to": bob_ref,
        }
    for new_socket in (bob, bob_tab):
        started = await new_socket.next("chat_started")
        assert started["chat"]["id"] == chat_id
        assert started["chat"]["agent"] == bob_ref
        assert [m["text"] for m in started["messages"]] == ["hello", "Alice here"]
        assert [m["seq"] for m in started["messages"]] == [1, 2]
        assert started["has_more"] is False
        assert started["notes"] == [note["note"]]
        assert started["transferred_from"] == {"id": agent_id(alice), "name": "Alice"}

    # The old agent has no access to the chat any more.
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("message", {"chat_id": chat_id, "text": "still me", "client_id": "a-2"}),
        ("history", {"chat_id": chat_id}),
        ("typing", {"chat_id": chat_id, "typing": True}),
        ("read", {"chat_id": chat_id, "seq": 1}),
        ("end_chat", {"chat_id": chat_id}),
    ]
    for event, payload in attempts:
        rejected = await alice.call(event, payload)
        assert rejected["ok"] is False, (event, rejected)
        assert rejected["error"]["code"] == "forbidden", (event, rejected)

    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": "hi Bob", "client_id": "v-2"}
    )
    assert sent["ok"], sent
    assert (await bob.next("message"))["text"] == "hi Bob"
    await assert_chat_with(bob, visitor, chat_id, "Bob here")
    await asyncio.sleep(0.3)
    # Alice's second tab saw only her own reply, from before the transfer.
    assert message_seqs(alice, chat_id) == []
    assert message_seqs(alice_tab, chat_id) == [2]
    assert [e for e, _ in visitor.received if e == "chat_ended"] == []


async def test_transfer_frees_old_agent_slot(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    alice = await ready_agent(clients, "alice@example.com")
    _visitor, chat_id = await start_chat(clients, alice, department="sales")
    bob = await ready_agent(
        clients, "bob@example.com", max_chats=2, departments=["sales"]
    )
    await start_chat(clients, bob, department="sales")
    # Only Alice serves billing, and she is full.
    newcomer = await clients.visitor()
    joined = await newcomer.call("join_queue", {"department": "billing"})
    assert joined["ok"], joined
    await newcomer.no_more("chat_started", within=0.3)

    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
    )
    assert moved["ok"], moved
    assert (await bob.next("chat_started"))["chat"]["id"] == chat_id
    # Alice's slot is free again, so the billing visitor goes to her.
    started = await alice.next("chat_started")
    assert started["chat"]["id"] == joined["chat"]["id"]


async def make_target_away(clients: Clients) -> str:
    return agent_id(await clients.agent("bob@example.com"))


async def make_target_gone(clients: Clients) -> str:
    bob = await ready_agent(clients, "bob@example.com")
    await bob.disconnect()
    await asyncio.sleep(0.2)
    return agent_id(bob)


async def make_target_never_connected(clients: Clients) -> str:
    return await clients.server.create_agent("bob@example.com")


async def make_target_full(clients: Clients) -> str:
    bob = await ready_agent(clients, "bob@example.com", max_chats=1)
    await start_chat(clients, bob, department="sales")
    return agent_id(bob)


async def make_target_billing_only(clients: Clients) -> str:
    bob = await ready_agent(clients, "bob@example.com", departments=["billing"])
    return agent_id(bob)


@pytest.mark.parametrize(
    ("make_target", "reason"),
    [
        (make_target_away, "agent_away"),
        (make_target_gone, "agent_offline"),
        (make_target_never_connected, "agent_offline"),
        (make_target_full, "agent_full"),
        (make_target_billing_only, "department"),
        (None, "same_agent"),
    ],
    ids=["away", "disconnected", "never_connected", "full", "billing_only", "self"],
)
async def test_transfer_to_agent_rejected(
    clients_on: Callable[..., Clients],
    make_target: Callable[[Clients], Awaitable[str]] | None,
    reason: str,
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    # A free slot keeps Alice from counting as full when she is the target.
    alice = await ready_agent(clients, "alice@example.com", max_chats=2)
    visitor, chat_id = await start_chat(clients, alice, department="sales")
    target = agent_id(alice) if make_target is None else await make_target(clients)

    rejected = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "agent_id": target}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "wrong_state", rejected
    assert rejected["error"]["reason"] == reason, rejected

    # The chat stays with Alice.
    await assert_chat_with(alice, visitor, chat_id, "still here")
    assert alice.drain("chat_removed") == []
    assert visitor.drain("chat_transferred") == []
    assert visitor.drain("chat_requeued") == []


async def test_transfer_to_unknown_agent(clients: Clients) -> None:
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    for unknown in (UNKNOWN_AGENT_ID, "nobody"):
        rejected = await alice.call(
            "transfer_chat", {"chat_id": chat_id, "agent_id": unknown}
        )
        assert rejected["ok"] is False, rejected
        assert rejected["error"]["code"] == "not_found", rejected
    await assert_chat_with(alice, visitor, chat_id, "still here")


INVALID_TARGETS: list[dict[str, Any]] = [
    {},
    {"agent_id": UNKNOWN_AGENT_ID, "department": "sales"},
    {"agent_id": UNKNOWN_AGENT_ID, "department": None},
    {"department": "support"},
    {"department": 5},
    {"agent_id": 5},
]


async def test_transfer_target_invalid(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice, department="sales")
    for target in INVALID_TARGETS:
        rejected = await alice.call("transfer_chat", {"chat_id": chat_id, **target})
        assert rejected["ok"] is False, (target, rejected)
        assert rejected["error"]["code"] == "invalid_payload", (target, rejected)
    await assert_chat_with(alice, visitor, chat_id, "still here")


async def test_transfer_by_others_forbidden(clients: Clients) -> None:
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")
    for caller in (bob, visitor):
        rejected = await caller.call(
            "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
        )
        assert rejected["ok"] is False, rejected
        assert rejected["error"]["code"] == "forbidden", rejected
    await assert_chat_with(alice, visitor, chat_id, "still here")


async def test_transfer_ended_chat(clients: Clients) -> None:
    alice = await ready_agent(clients, "alice@example.com")
    _visitor, chat_id = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")
    assert (await alice.call("end_chat", {"chat_id": chat_id}))["ok"]
    rejected = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "wrong_state", rejected


async def test_transfer_unknown_chat(clients: Clients) -> None:
    alice = await ready_agent(clients, "alice@example.com")
    bob = await ready_agent(clients, "bob@example.com")
    rejected = await alice.call(
        "transfer_chat", {"chat_id": UNKNOWN_AGENT_ID, "agent_id": agent_id(bob)}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "not_found", rejected


# Transfer to a department queue


async def test_transfer_to_department_queue(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    alice = await ready_agent(clients, "alice@example.com", max_chats=1)
    visitor, chat_id = await start_chat(clients, alice, department="sales")
    note = await alice.call(
        "note", {"chat_id": chat_id, "text": "asked about prices", "client_id": "n"}
    )
    assert note["ok"], note
    older = await clients.visitor()
    older_chat = (await older.call("join_queue", {"department": "sales"}))["chat"]["id"]
    newer = await clients.visitor()
    joined_newer = await newer.call("join_queue", {"department": "sales"})
    assert joined_newer["ok"], joined_newer

    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "department": "sales"}
    )
    assert moved["ok"], moved
    assert moved["chat"]["id"] == chat_id
    assert moved["chat"]["status"] == "queued"
    assert moved["chat"]["agent"] is None
    assert moved["chat"]["department"] == "sales"

    assert await visitor.next("chat_requeued") == {
        "chat_id": chat_id,
        "reason": "transferred",
        "department": "sales",
    }
    assert await alice.next("chat_removed") == {
        "chat_id": chat_id,
        "reason": "transferred",
        "to": None,
    }
    # Alice's free slot goes to the oldest other chat, never back to this one.
    assert (await alice.next("chat_started"))["chat"]["id"] == older_chat
    await asyncio.sleep(0.5)
    assert visitor.drain("queue_update")[-1]["position"] == 1
    assert newer.drain("queue_update")[-1]["position"] == 2
    assert visitor.drain("chat_started") == []

    # The transferred chat is at the front, ahead of the newer one.
    bob = await ready_agent(clients, "bob@example.com", max_chats=1)
    started = await bob.next("chat_started")
    assert started["chat"]["id"] == chat_id
    assert started["notes"] == [note["note"]]
    visitor_started = await visitor.next("chat_started")
    assert visitor_started["chat"]["agent"]["name"] == "Bob"
    # The visitor's copy never carries the notes.
    assert visitor_started.get("notes") in (None, [])
    for event, data in visitor.received:
        assert "asked about prices" not in json.dumps(data), (event, data)
    # The newer chat still waits, so it was not served ahead of this one.
    assert newer.drain("chat_started") == []
    rejected = await alice.call(
        "message", {"chat_id": chat_id, "text": "hello?", "client_id": "late"}
    )
    assert rejected["error"]["code"] == "forbidden", rejected


async def test_transfer_to_own_queue_not_back(
    clients_on: Callable[..., Clients],
) -> None:
    """The transferring agent does not get its chat back while it waits."""
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    alice = await ready_agent(clients, "alice@example.com", max_chats=3)
    visitor, chat_id = await start_chat(clients, alice, department="sales")
    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "department": "sales"}
    )
    assert moved["ok"], moved
    assert moved["chat"]["status"] == "queued"
    assert (await visitor.next("chat_requeued"))["reason"] == "transferred"
    await alice.no_more("chat_started", within=1.5)
    await visitor.no_more("chat_started", within=0.1)

    bob = await ready_agent(clients, "bob@example.com")
    assert (await bob.next("chat_started"))["chat"]["id"] == chat_id


async def test_transfer_to_general_queue(clients: Clients) -> None:
    """An explicit `"department": null` sends the chat to the general queue."""
    alice = await ready_agent(clients, "alice@example.com", max_chats=2)
    visitor, chat_id = await start_chat(clients, alice)
    waiting = await clients.visitor()
    waiting_chat = (await waiting.call("join_queue", {}))["chat"]["id"]
    assert (await alice.next("chat_started"))["chat"]["id"] == waiting_chat

    moved = await alice.call("transfer_chat", {"chat_id": chat_id, "department": None})
    assert moved["ok"], moved
    assert moved["chat"]["status"] == "queued"
    assert moved["chat"]["agent"] is None
    assert moved["chat"]["department"] is None
    assert await visitor.next("chat_requeued") == {
        "chat_id": chat_id,
        "reason": "transferred",
        "department": None,
    }
    assert await alice.next("chat_removed") == {
        "chat_id": chat_id,
        "reason": "transferred",
        "to": None,
    }
    await alice.no_more("chat_started", within=1.0)

    bob = await ready_agent(clients, "bob@example.com")
    assert (await bob.next("chat_started"))["chat"]["id"] == chat_id


async def test_transfer_to_other_department(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice, department="sales")
    seller = await ready_agent(clients, "bob@example.com", departments=["sales"])

    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "department": "billing"}
    )
    assert moved["ok"], moved
    assert moved["chat"]["department"] == "billing"
    assert moved["chat"]["status"] == "queued"
    assert await visitor.next("chat_requeued") == {
        "chat_id": chat_id,
        "reason": "transferred",
        "department": "billing",
    }
    await seller.no_more("chat_started", within=1.0)

    biller = await ready_agent(clients, "carol@example.com", departments=["billing"])
    started = await biller.next("chat_started")
    assert started["chat"]["id"] == chat_id
    assert started["chat"]["department"] == "billing"


# Races around a transfer


async def test_transfer_during_message_stream(clients: Clients) -> None:
    """Every message sent during a transfer is stored once and reaches one agent."""
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    second_tab = await clients.visitor(token=visitor.auth["token"])
    bob = await ready_agent(clients, "bob@example.com")
    acked: list[dict[str, Any]] = []
    stream_done = asyncio.Event()

    async def send_stream(tab: ChatClient, prefix: str) -> None:
        for n in range(STREAM_MESSAGES):
            sent = await tab.call(
                "message",
                {
                    "chat_id": chat_id,
                    "text": f"{prefix}{n}",
                    "client_id": f"{prefix}{n}",
                },
            )
            assert sent["ok"], sent
            acked.append(sent["message"])

    async def send_typing() -> None:
        for n in range(500):
            if stream_done.is_set():
                return
            typing = await visitor.call(
                "typing", {"chat_id": chat_id, "typing": n % 2 == 0}
            )
            assert typing == {"ok": True}

    async def transfer() -> tuple[dict[str, Any], int]:
        for _ in range(1000):
            if len(acked) >= STREAM_MESSAGES // 2:
                break
            await asyncio.sleep(0.005)
        moved = await alice.call(
            "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
        )
        return moved, len(alice.received)

    async def streams() -> None:
        await asyncio.gather(send_stream(visitor, "a"), send_stream(second_tab, "b"))
        stream_done.set()

    _, _, (moved, cut_index) = await asyncio.gather(
        streams(), send_typing(), transfer()
    )
    assert moved["ok"], moved
    await asyncio.sleep(0.5)

    total = 2 * STREAM_MESSAGES
    assert sorted(message["seq"] for message in acked) == list(range(1, total + 1))
    history = await bob.call("history", {"chat_id": chat_id, "limit": 500})
    assert [m["seq"] for m in history["messages"]] == list(range(1, total + 1))
    client_ids = [m["client_id"] for m in history["messages"]]
    assert len(set(client_ids)) == total

    started = await bob.next("chat_started")
    assert started["chat"]["id"] == chat_id
    cut_seq = len(started["messages"])
    assert [m["seq"] for m in started["messages"]] == list(range(1, cut_seq + 1))
    # Bob gets each later message once, as an event.
    assert message_seqs(bob, chat_id) == list(range(cut_seq + 1, total + 1))
    # Alice got each earlier message once and nothing after her reply.
    assert message_seqs(alice, chat_id) == list(range(1, cut_seq + 1))
    late = [(e, d) for e, d in alice.received[cut_index:] if e in ("message", "typing")]
    assert late == []
    # Typing went on during the stream, so it reached the new agent as well.
    assert any(event == "typing" for event, _ in bob.received)


@pytest.mark.parametrize("delay", [None, 0.0, 0.005, 0.02])
async def test_transfer_target_drops(
    clients_on: Callable[..., Clients], delay: float | None
) -> None:
    """The target disconnects before or at the transfer, and no chat is stranded.

    With `delay=None` the target is gone before the transfer is sent. Otherwise
    the transfer is sent `delay` seconds after the disconnect starts.
    """
    clients = clients_on(CHAT_AGENT_GRACE_S="1")
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")
    payload = {"chat_id": chat_id, "agent_id": agent_id(bob)}

    if delay is None:
        await bob.disconnect()
        moved = await alice.call("transfer_chat", payload)
    else:

        async def transfer_later() -> Any:
            await asyncio.sleep(delay)
            return await alice.call("transfer_chat", payload)

        _, moved = await asyncio.gather(bob.disconnect(), transfer_later())

    if not moved["ok"]:
        assert moved["error"]["code"] == "wrong_state", moved
        assert moved["error"]["reason"] == "agent_offline", moved
        await assert_chat_with(alice, visitor, chat_id, "still here")
        return

    # The transfer went through. Bob's grace period runs out and the chat goes
    # back to the queue, where Alice, the only agent left, takes it.
    assert (await visitor.next("chat_transferred"))["agent"]["name"] == "Bob"
    requeued = await visitor.next("chat_requeued", timeout=5)
    assert requeued == {"chat_id": chat_id, "reason": "agent_left", "department": None}
    started = await visitor.next("chat_started", timeout=5)
    assert started["chat"]["agent"]["id"] == agent_id(alice)
    assert (await alice.next("chat_started"))["chat"]["id"] == chat_id
    await assert_chat_with(alice, visitor, chat_id, "back with Alice")


async def test_agent_drops_during_transfer(
    clients_on: Callable[..., Clients],
) -> None:
    """The transferring agent drops at once, and the chat ends up with Bob."""
    clients = clients_on(CHAT_AGENT_GRACE_S="1")
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")

    await alice.sio.emit(
        "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
    )
    await alice.disconnect()

    started = await bob.next("chat_started", timeout=5)
    assert started["chat"]["id"] == chat_id
    # Wait out Alice's grace period and the requeue it may start.
    await asyncio.sleep(2.0)
    await assert_chat_with(bob, visitor, chat_id, "Bob here")
    assert bob.drain("chat_started") == []
    transferred = visitor.drain("chat_transferred")
    requeued = visitor.drain("chat_requeued")
    # Either the transfer finished, or the grace expiry requeued the chat.
    assert len(transferred) + len(requeued) == 1, (transferred, requeued)
    if requeued:
        assert requeued[0]["reason"] == "agent_left"
    status, body = await http_json(
        clients.server,
        "GET",
        f"/api/chats/{chat_id}/messages",
        token=bob.auth["token"],
    )
    assert status == 200, body
    assert body["chat"]["status"] == "active"
    assert body["chat"]["agent"]["id"] == agent_id(bob)


# The transfer picker


async def test_agents_list_for_picker(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    alice = await ready_agent(
        clients, "alice@example.com", max_chats=2, departments=["sales"]
    )
    await start_chat(clients, alice, department="sales")
    bob = await clients.agent("bob@example.com")
    carol_id = await clients.server.create_agent("carol@example.com")

    status, body = await http_json(
        clients.server, "GET", "/api/agents", token=bob.auth["token"]
    )
    assert status == 200, body
    listed = {agent["id"]: agent for agent in body["agents"]}
    expected_alice = {
        "name": "Alice",
        "status": "ready",
        "online": True,
        "load": 1,
        "max_chats": 2,
        "serving": ["sales"],
    }
    for field, value in expected_alice.items():
        assert listed[agent_id(alice)][field] == value, (field, listed)
    assert listed[agent_id(bob)]["status"] == "away"
    assert listed[agent_id(bob)]["online"] is True
    assert listed[agent_id(bob)]["load"] == 0
    assert listed[agent_id(bob)]["serving"] is None
    assert listed[carol_id]["online"] is False
    assert listed[carol_id]["load"] == 0

    status, body = await http_json(clients.server, "GET", "/api/agents")
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


async def test_transfer_from_two_tabs_at_once(clients: Clients) -> None:
    """Two tabs of one agent transfer the same chat to different agents."""
    alice = await ready_agent(clients, "alice@example.com")
    alice_tab = await clients.agent("alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")
    carol = await ready_agent(clients, "carol@example.com")

    replies = await asyncio.gather(
        alice.call("transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}),
        alice_tab.call(
            "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(carol)}
        ),
    )
    accepted = [reply for reply in replies if reply["ok"]]
    assert len(accepted) == 1, replies
    rejected = [reply for reply in replies if not reply["ok"]]
    assert rejected[0]["error"]["code"] == "forbidden", rejected
    winner = bob if accepted[0]["chat"]["agent"]["name"] == "Bob" else carol
    loser = carol if winner is bob else bob

    assert (await winner.next("chat_started"))["chat"]["id"] == chat_id
    await loser.no_more("chat_started", within=0.5)
    assert len(visitor.drain("chat_transferred")) == 1
    assert len(alice.drain("chat_removed")) == 1
    await assert_chat_with(winner, visitor, chat_id, "hello from the new agent")


async def test_two_transfers_to_last_slot(clients: Clients) -> None:
    """Two agents transfer to Carol, who has one free slot, at the same time."""
    alice = await ready_agent(clients, "alice@example.com")
    _, alice_chat = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")
    _, bob_chat = await start_chat(clients, bob)
    carol = await ready_agent(clients, "carol@example.com", max_chats=1)

    replies = await asyncio.gather(
        alice.call(
            "transfer_chat", {"chat_id": alice_chat, "agent_id": agent_id(carol)}
        ),
        bob.call("transfer_chat", {"chat_id": bob_chat, "agent_id": agent_id(carol)}),
    )
    accepted = [reply for reply in replies if reply["ok"]]
    assert len(accepted) == 1, replies
    rejected = [reply for reply in replies if not reply["ok"]]
    assert rejected[0]["error"]["code"] == "wrong_state", rejected
    assert rejected[0]["error"]["reason"] == "agent_full", rejected
    assert (await carol.next("chat_started"))["chat"]["id"] == accepted[0]["chat"]["id"]
    await carol.no_more("chat_started", within=0.5)

    status, body = await http_json(
        clients.server, "GET", "/api/agents", token=carol.auth["token"]
    )
    assert status == 200, body
    load = {agent["name"]: agent["load"] for agent in body["agents"]}
    assert load["Carol"] == 1
    assert load["Alice"] + load["Bob"] == 1


async def test_visitor_ends_during_transfer(clients: Clients) -> None:
    """The visitor ends the chat during a transfer, and Bob never keeps it open."""
    alice = await ready_agent(clients, "alice@example.com")
    bob = await ready_agent(clients, "bob@example.com")
    assert (await bob.call("agent_away", {}))["ok"]
    for round_number in range(5):
        visitor, chat_id = await start_chat(clients, alice)
        assert (await bob.call("agent_ready", {}))["ok"]
        moved, ended = await asyncio.gather(
            alice.call(
                "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
            ),
            visitor.call("end_chat", {"chat_id": chat_id}),
        )
        assert ended["ok"], (round_number, ended)
        await asyncio.sleep(0.3)
        bob_events = [
            event
            for event, data in bob.received
            if event in ("chat_started", "chat_ended")
            and (data.get("chat_id") or data["chat"]["id"]) == chat_id
        ]
        if moved["ok"]:
            assert bob_events == ["chat_started", "chat_ended"], round_number
        else:
            assert moved["error"]["code"] == "wrong_state", (round_number, moved)
            assert bob_events == [], round_number
        assert (await bob.call("agent_away", {}))["ok"]
        await visitor.disconnect()


async def test_sessions_after_transfer(clients: Clients) -> None:
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")
    moved = await alice.call(
        "transfer_chat", {"chat_id": chat_id, "agent_id": agent_id(bob)}
    )
    assert moved["ok"], moved

    alice_again = await clients.agent("alice@example.com")
    assert session_of(alice_again)["chats"] == []
    bob_again = await clients.agent("bob@example.com")
    assert [chat["id"] for chat in session_of(bob_again)["chats"]] == [chat_id]
    visitor_again = await clients.visitor(token=visitor.auth["token"])
    shown = session_of(visitor_again)["chat"]
    assert shown["id"] == chat_id
    assert shown["agent"]["name"] == "Bob"


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02])
async def test_transfer_target_reconnects(clients: Clients, delay: float) -> None:
    """The target drops at the transfer and comes back within its grace period.

    If the transfer went through, the target's new socket must be in the
    chat's room; otherwise the chat stays with Alice.
    """
    alice = await ready_agent(clients, "alice@example.com")
    visitor, chat_id = await start_chat(clients, alice)
    bob = await ready_agent(clients, "bob@example.com")
    payload = {"chat_id": chat_id, "agent_id": agent_id(bob)}

    async def transfer_later() -> Any:
        await asyncio.sleep(delay)
        return await alice.call("transfer_chat", payload)

    async def reconnect() -> ChatClient:
        await bob.disconnect()
        return await clients.agent("bob@example.com")

    bob_again, moved = await asyncio.gather(reconnect(), transfer_later())
    await asyncio.sleep(0.3)
    if not moved["ok"]:
        assert moved["error"]["code"] == "wrong_state", moved
        assert moved["error"]["reason"] == "agent_offline", moved
        await assert_chat_with(alice, visitor, chat_id, "still here")
        return

    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": "hi Bob", "client_id": "v-1"}
    )
    assert sent["ok"], sent
    assert (await bob_again.next("message"))["text"] == "hi Bob"
    await assert_chat_with(bob_again, visitor, chat_id, "Bob here")
