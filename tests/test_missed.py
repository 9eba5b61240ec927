"""Offline messages: `leave_message`, missed chats and replies to them over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.support import (
    DEPARTMENTS,
    ChatClient,
    Clients,
    http_json,
    matched_pair,
    ready_agent,
    session_of,
)

UNKNOWN_CHAT_ID = "00000000-0000-4000-8000-000000000000"


async def leave(visitor: ChatClient, **fields: Any) -> dict[str, Any]:
    payload = {"text": "Please call me back", "email": "vera@example.com", **fields}
    left = await visitor.call("leave_message", payload)
    assert left["ok"], left
    return dict(left)


async def transcript(
    clients: Clients, token: str, chat_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    status, body = await http_json(
        clients.server, "GET", f"/api/chats/{chat_id}/messages", token=token
    )
    assert status == 200, body
    return dict(body["chat"]), list(body["messages"])


async def post_reply(
    clients: Clients, token: str | None, chat_id: str, body: Any
) -> tuple[int, Any]:
    return await http_json(
        clients.server,
        "POST",
        f"/api/chats/{chat_id}/reply",
        token=token,
        json=body,
    )


async def test_leave_message_without_agents(clients: Clients) -> None:
    visitor = await clients.visitor()
    left = await leave(visitor, name="Vera")
    chat = left["chat"]
    assert chat["status"] == "missed"
    assert chat["agent"] is None
    assert chat["last_seq"] == 1
    assert chat["visitor"]["id"] == session_of(visitor)["visitor_id"]
    assert chat["visitor"]["name"] == "Vera"
    assert chat["visitor"]["email"] == "vera@example.com"

    agent = await clients.agent()
    token = agent.auth["token"]
    status, body = await http_json(
        clients.server, "GET", "/api/chats?status=missed", token=token
    )
    assert status == 200, body
    assert [listed["id"] for listed in body["chats"]] == [chat["id"]]
    stored, messages = await transcript(clients, token, chat["id"])
    assert stored["status"] == "missed"
    assert stored["visitor"]["email"] == "vera@example.com"
    assert [m["seq"] for m in messages] == [1]
    assert messages[0]["text"] == "Please call me back"
    assert messages[0]["sender"]["role"] == "visitor"

    # The missed chat is closed, so a new join opens another chat.
    joined = await visitor.call("join_queue", {})
    assert joined["ok"], joined
    assert joined["chat"]["id"] != chat["id"]
    assert joined["chat"]["status"] == "queued"


async def test_leave_message_bad_email(clients: Clients) -> None:
    visitor = await clients.visitor()
    bad_emails = [
        "vera.example.com",
        "",
        "a" * 250 + "@x.io",
        5,
        None,
        ["vera@example.com"],
    ]
    for email in bad_emails:
        rejected = await visitor.call(
            "leave_message", {"text": "Please call me back", "email": email}
        )
        assert rejected["ok"] is False, (email, rejected)
        assert rejected["error"]["code"] == "invalid_payload", (email, rejected)
    # 254 characters is the longest valid address.
    left = await leave(visitor, email="a" * 242 + "@example.com")
    assert left["chat"]["visitor"]["email"] == "a" * 242 + "@example.com"


async def test_leave_message_missing_fields(clients: Clients) -> None:
    visitor = await clients.visitor()
    for payload in (
        {"text": "Please call me back"},
        {"email": "vera@example.com"},
        {"text": "", "email": "vera@example.com"},
        {"text": 5, "email": "vera@example.com"},
    ):
        rejected = await visitor.call("leave_message", payload)
        assert rejected["ok"] is False, (payload, rejected)
        assert rejected["error"]["code"] == "invalid_payload", (payload, rejected)


async def test_leave_message_in_active_chat(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    rejected = await visitor.call(
        "leave_message", {"text": "Please call me back", "email": "vera@example.com"}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "wrong_state", rejected
    sent = await agent.call(
        "message", {"chat_id": chat_id, "text": "still here", "client_id": "a"}
    )
    assert sent["ok"], sent
    assert (await visitor.next("message"))["text"] == "still here"


async def test_queued_chat_becomes_missed(clients: Clients) -> None:
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {"message": "first"})
    chat_id = joined["chat"]["id"]
    second = await visitor.call(
        "message", {"chat_id": chat_id, "text": "second", "client_id": "m-2"}
    )
    assert second["ok"], second
    behind = await clients.visitor()
    behind_joined = await behind.call("join_queue", {})
    assert behind_joined["position"] == 2

    left = await leave(visitor, text="third")
    assert left["chat"]["id"] == chat_id
    assert left["chat"]["status"] == "missed"
    assert left["chat"]["last_seq"] == 3

    agent = await ready_agent(clients, "alice@example.com")
    _, messages = await transcript(clients, agent.auth["token"], chat_id)
    assert [m["text"] for m in messages] == ["first", "second", "third"]
    assert [m["seq"] for m in messages] == [1, 2, 3]
    # The missed chat left the queue, so the agent gets the chat behind it.
    started = await agent.next("chat_started")
    assert started["chat"]["id"] == behind_joined["chat"]["id"]
    await agent.no_more("chat_started", within=0.5)


async def test_leave_message_keeps_department(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    visitor = await clients.visitor()
    left = await leave(visitor, department="billing")
    assert left["chat"]["department"] == "billing"
    assert left["chat"]["status"] == "missed"


async def test_agent_replies_to_missed_chat(clients: Clients) -> None:
    visitor = await clients.visitor()
    chat_id = (await leave(visitor))["chat"]["id"]
    alice = await clients.agent("alice@example.com")
    alice_id = session_of(alice)["agent_id"]

    status, body = await post_reply(
        clients, alice.auth["token"], chat_id, {"text": "We will call you today"}
    )
    assert status == 201, body
    message = body["message"]
    assert message["chat_id"] == chat_id
    assert message["seq"] == 2
    assert message["text"] == "We will call you today"
    assert message["sender"]["role"] == "agent"
    assert message["sender"]["id"] == alice_id
    assert isinstance(body["email_sent"], bool)
    assert await visitor.next("message") == message

    chat, messages = await transcript(clients, alice.auth["token"], chat_id)
    assert chat["status"] == "missed"
    assert chat["agent"] == {"id": alice_id, "name": "Alice"}
    assert messages[-1] == message

    # A second agent's reply is stored too, and the chat keeps its first agent.
    bob = await clients.agent("bob@example.com")
    await visitor.disconnect()
    status, body = await post_reply(
        clients, bob.auth["token"], chat_id, {"text": "Bob, following up"}
    )
    assert status == 201, body
    assert body["message"]["seq"] == 3
    chat, messages = await transcript(clients, bob.auth["token"], chat_id)
    assert chat["agent"]["id"] == alice_id
    assert [m["text"] for m in messages][1:] == [
        "We will call you today",
        "Bob, following up",
    ]


async def test_reply_rejected(clients: Clients) -> None:
    agent, _visitor, active_chat = await matched_pair(clients)
    token = agent.auth["token"]
    waiting = await clients.visitor()
    queued_chat = (await waiting.call("join_queue", {}))["chat"]["id"]
    leaver = await clients.visitor()
    missed_chat = (await leave(leaver))["chat"]["id"]

    for chat_id in (active_chat, queued_chat):
        status, body = await post_reply(clients, token, chat_id, {"text": "hi"})
        assert status == 409, body
        assert body["error"]["code"] == "wrong_state"
    assert (await agent.call("end_chat", {"chat_id": active_chat}))["ok"]
    status, body = await post_reply(clients, token, active_chat, {"text": "hi"})
    assert status == 409, body
    assert body["error"]["code"] == "wrong_state"

    status, body = await post_reply(clients, token, UNKNOWN_CHAT_ID, {"text": "hi"})
    assert status == 404, body
    assert body["error"]["code"] == "not_found"
    status, body = await post_reply(clients, None, missed_chat, {"text": "hi"})
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized"
    status, body = await post_reply(
        clients, leaver.auth["token"], missed_chat, {"text": "hi"}
    )
    assert status == 401, body
    for bad in ({}, {"text": ""}, {"text": 5}, ["hi"]):
        status, body = await post_reply(clients, token, missed_chat, bad)
        assert status == 400, (bad, body)
        assert body["error"]["code"] == "invalid_payload", (bad, body)


async def test_leave_message_during_assignment(clients: Clients) -> None:
    """An agent becomes ready as the queued visitor leaves a message.

    Each round ends one way only. Either the chat is missed and no agent got
    it, or the chat is active and `leave_message` got `wrong_state`.
    """
    agent = await clients.agent("alice@example.com")
    token = agent.auth["token"]
    for round_number in range(6):
        visitor = await clients.visitor()
        chat_id = (await visitor.call("join_queue", {"message": "hi"}))["chat"]["id"]
        left, ready = await asyncio.gather(
            visitor.call(
                "leave_message", {"text": "call me", "email": "v@example.com"}
            ),
            agent.call("agent_ready", {"max_chats": 1}),
        )
        assert ready["ok"], ready
        await asyncio.sleep(0.3)
        chat, _ = await transcript(clients, token, chat_id)
        started = [
            data["chat"]["id"]
            for event, data in agent.received
            if event == "chat_started" and data["chat"]["id"] == chat_id
        ]
        if left["ok"]:
            assert left["chat"]["id"] == chat_id
            assert chat["status"] == "missed", (round_number, chat)
            assert started == [], round_number
            assert visitor.drain("chat_started") == []
        else:
            assert left["error"]["code"] == "wrong_state", left
            assert chat["status"] == "active", (round_number, chat)
            assert started == [chat_id], round_number
            ended = await agent.call("end_chat", {"chat_id": chat_id})
            assert ended["ok"], ended
        assert (await agent.call("agent_away", {}))["ok"]
        await visitor.disconnect()


async def test_reply_to_timed_out_chat(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_QUEUE_TIMEOUT_S="1", CHAT_TIMER_INTERVAL_S="0.2")
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {"message": "hello?"}))["chat"]["id"]
    ended = await visitor.next("chat_ended", timeout=5)
    assert ended["reason"] == "queue_timeout"

    agent = await clients.agent()
    status, body = await post_reply(
        clients, agent.auth["token"], chat_id, {"text": "Sorry we missed you"}
    )
    assert status == 201, body
    assert body["message"]["seq"] == 2
    assert isinstance(body["email_sent"], bool)
    assert await visitor.next("message") == body["message"]
    chat, messages = await transcript(clients, agent.auth["token"], chat_id)
    assert chat["status"] == "missed"
    assert [m["text"] for m in messages] == ["hello?", "Sorry we missed you"]


async def test_visitor_email_shown_to_agents(clients: Clients) -> None:
    agent = await ready_agent(clients, "alice@example.com")
    visitor = await clients.visitor(name="Vera", email="vera@example.com")
    await visitor.call("join_queue", {})
    started = await agent.next("chat_started")
    assert started["chat"]["visitor"]["email"] == "vera@example.com"
    assert (await agent.call("end_chat", {"chat_id": started["chat"]["id"]}))["ok"]

    anonymous = await clients.visitor()
    await anonymous.call("join_queue", {})
    started = await agent.next("chat_started")
    assert started["chat"]["visitor"]["email"] is None
