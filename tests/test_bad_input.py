"""Malformed and hostile input: clear error codes, nothing stored, server unharmed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio

from tests.database import execute, fetch_many
from tests.support import ChatClient, Clients, ServerProcess, matched_pair

TABLES = ("visitors", "agents", "chats", "messages", "read_marks")


async def table_snapshot(server: ServerProcess) -> dict[str, list[tuple[Any, ...]]]:
    """Read every row of every table, so a test can prove nothing changed."""
    tables = await fetch_many(
        server.database_url, [(f"SELECT * FROM {table}", ()) for table in TABLES]
    )
    return {table: sorted(rows) for table, rows in zip(TABLES, tables, strict=True)}


# (event, payload, expected code); CHAT is replaced by the caller's chat id.
BAD_EVENTS: list[tuple[str, Any, str]] = [
    ("message", "text", "invalid_payload"),
    ("message", 42, "invalid_payload"),
    ("message", ["CHAT", "hi"], "invalid_payload"),
    ("message", None, "invalid_payload"),
    ("message", {}, "invalid_payload"),
    ("message", {"chat_id": "CHAT", "text": "hi"}, "invalid_payload"),
    ("message", {"chat_id": "CHAT", "client_id": "c"}, "invalid_payload"),
    ("message", {"chat_id": 7, "text": "hi", "client_id": "c"}, "invalid_payload"),
    ("message", {"chat_id": "CHAT", "text": 5, "client_id": "c"}, "invalid_payload"),
    (
        "message",
        {"chat_id": "CHAT", "text": ["hi"], "client_id": "c"},
        "invalid_payload",
    ),
    ("message", {"chat_id": "CHAT", "text": "hi", "client_id": 9}, "invalid_payload"),
    ("message", {"chat_id": "CHAT", "text": "", "client_id": "c"}, "invalid_payload"),
    (
        "message",
        {"chat_id": "CHAT", "text": " \n\t", "client_id": "c"},
        "invalid_payload",
    ),
    (
        "message",
        {"chat_id": "CHAT", "text": "\ud800", "client_id": "c"},
        "invalid_payload",
    ),
    ("message", {"chat_id": "CHAT", "text": "hi", "client_id": ""}, "invalid_payload"),
    (
        "message",
        {"chat_id": "CHAT", "text": "hi", "client_id": "c" * 129},
        "invalid_payload",
    ),
    (
        "message",
        {"chat_id": "CHAT", "text": "x" * 4001, "client_id": "c"},
        "payload_too_large",
    ),
    (
        "message",
        {"chat_id": "CHAT", "text": "é" * 100_000, "client_id": "c"},
        "payload_too_large",
    ),
    (
        "message",
        {"chat_id": "x" * 65, "text": "hi", "client_id": "c"},
        "invalid_payload",
    ),
    (
        "message",
        {"chat_id": "no-such-chat", "text": "hi", "client_id": "c"},
        "not_found",
    ),
    ("typing", {"chat_id": "CHAT", "typing": "yes"}, "invalid_payload"),
    ("typing", {"typing": True}, "invalid_payload"),
    ("typing", {"chat_id": "no-such-chat", "typing": True}, "not_found"),
    ("read", {"chat_id": "CHAT", "seq": -1}, "invalid_payload"),
    ("read", {"chat_id": "CHAT", "seq": "1"}, "invalid_payload"),
    ("read", {"chat_id": "CHAT", "seq": True}, "invalid_payload"),
    ("read", {"chat_id": "CHAT", "seq": 1.5}, "invalid_payload"),
    ("read", {"chat_id": "CHAT", "seq": 99}, "invalid_payload"),
    ("history", {"chat_id": "CHAT", "limit": 0}, "invalid_payload"),
    ("history", {"chat_id": "CHAT", "limit": 501}, "invalid_payload"),
    ("history", {"chat_id": "CHAT", "limit": "10"}, "invalid_payload"),
    ("history", {"chat_id": "CHAT", "after_seq": -1}, "invalid_payload"),
    ("history", {"chat_id": None}, "invalid_payload"),
    ("end_chat", {"chat_id": "CHAT", "reason": 5}, "invalid_payload"),
    ("end_chat", {"chat_id": "CHAT", "reason": "r" * 201}, "invalid_payload"),
    ("end_chat", {}, "invalid_payload"),
    ("end_chat", {"chat_id": "no-such-chat"}, "not_found"),
    ("join_queue", "please", "invalid_payload"),
    ("join_queue", {"department": "sales"}, "invalid_payload"),
    ("join_queue", {"metadata": "not an object"}, "invalid_payload"),
    ("join_queue", {"metadata": {"blob": "x" * 9000}}, "payload_too_large"),
    ("join_queue", {"message": ""}, "invalid_payload"),
    ("agent_ready", {}, "forbidden"),
    ("agent_away", {}, "forbidden"),
    ("transfer_chat", {"chat_id": "CHAT", "agent_id": "a"}, "forbidden"),
    ("note", {"chat_id": "CHAT", "text": "x", "client_id": "n"}, "forbidden"),
    ("rate_chat", {"chat_id": "CHAT", "score": 6}, "invalid_payload"),
    ("rate_chat", {"chat_id": "CHAT", "score": 4.5}, "invalid_payload"),
    ("rate_chat", {"chat_id": "CHAT", "score": 5}, "wrong_state"),
    ("leave_message", {"text": "hi", "email": "not-an-email"}, "invalid_payload"),
    ("leave_message", {"text": "hi", "email": "a@example.com"}, "wrong_state"),
    ("no_such_event", {}, "invalid_payload"),
]

AGENT_BAD_EVENTS: list[tuple[str, Any, str]] = [
    ("agent_ready", {"max_chats": 0}, "invalid_payload"),
    ("agent_ready", {"max_chats": 51}, "invalid_payload"),
    ("agent_ready", {"max_chats": "2"}, "invalid_payload"),
    ("agent_ready", {"max_chats": True}, "invalid_payload"),
    ("agent_ready", {"departments": ["billing"]}, "invalid_payload"),
    ("agent_ready", {"departments": "billing"}, "invalid_payload"),
    ("agent_away", [1], "invalid_payload"),
    ("join_queue", {}, "forbidden"),
    ("transfer_chat", {"chat_id": "CHAT"}, "invalid_payload"),
    (
        "transfer_chat",
        {"chat_id": "CHAT", "agent_id": "a", "department": "sales"},
        "invalid_payload",
    ),
    ("transfer_chat", {"chat_id": "CHAT", "department": "sales"}, "invalid_payload"),
    ("transfer_chat", {"chat_id": "CHAT", "agent_id": "nobody"}, "not_found"),
    ("note", {"chat_id": "CHAT", "text": " ", "client_id": "n"}, "invalid_payload"),
    ("list_notes", {"chat_id": "no-such-chat"}, "not_found"),
    ("rate_chat", {"chat_id": "CHAT", "score": 5}, "forbidden"),
    (
        "message",
        {"chat_id": "CHAT", "text": "x" * 4001, "client_id": "c"},
        "payload_too_large",
    ),
]


def substitute(payload: Any, chat_id: str) -> Any:
    if payload == "CHAT":
        return chat_id
    if isinstance(payload, dict):
        return {key: substitute(value, chat_id) for key, value in payload.items()}
    if isinstance(payload, list):
        return [substitute(item, chat_id) for item in payload]
    return payload


async def check_rejected(
    client: ChatClient, cases: list[tuple[str, Any, str]], chat_id: str
) -> None:
    for event, payload, code in cases:
        reply = await client.call(event, substitute(payload, chat_id))
        assert reply["ok"] is False, (event, payload, reply)
        assert reply["error"]["code"] == code, (event, payload, reply)
        assert reply["error"]["message"], (event, payload, reply)


async def test_bad_payloads_change_nothing(
    server: ServerProcess, clients: Clients
) -> None:
    agent, visitor, chat_id = await matched_pair(clients, first_message="hi")
    before = await table_snapshot(server)

    await check_rejected(visitor, BAD_EVENTS, chat_id)
    await check_rejected(agent, AGENT_BAD_EVENTS, chat_id)

    assert await table_snapshot(server) == before
    await agent.no_more("message", within=0.2)
    reply = await visitor.call(
        "message", {"chat_id": chat_id, "text": "still works", "client_id": "ok"}
    )
    assert reply["message"]["seq"] == 2
    assert (await agent.next("message"))["text"] == "still works"


async def test_extra_arguments_rejected(clients: Clients) -> None:
    visitor = await clients.visitor()
    reply = await visitor.sio.call("join_queue", ({}, {}), timeout=5)
    assert reply["error"]["code"] == "invalid_payload"


async def test_other_persons_chat_forbidden(
    server: ServerProcess, clients: Clients
) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    stranger = await clients.visitor()
    other_agent = await clients.agent("bob@example.com")
    before = await table_snapshot(server)
    for client in (stranger, other_agent):
        for event, payload in (
            ("message", {"chat_id": chat_id, "text": "hi", "client_id": "s"}),
            ("typing", {"chat_id": chat_id, "typing": True}),
            ("read", {"chat_id": chat_id, "seq": 0}),
            ("history", {"chat_id": chat_id}),
            ("end_chat", {"chat_id": chat_id}),
        ):
            reply = await client.call(event, payload)
            assert reply["error"]["code"] == "forbidden", (event, reply)
    assert await table_snapshot(server) == before
    await agent.no_more("typing", within=0.1)
    await visitor.no_more("chat_ended", within=0.1)


async def test_identity_ignores_payload_fields(clients: Clients) -> None:
    _agent, visitor, chat_id = await matched_pair(clients)
    reply = await visitor.call(
        "message",
        {
            "chat_id": chat_id,
            "text": "who am I",
            "client_id": "spoof",
            "sender": {"role": "agent", "id": "someone", "name": "Admin"},
            "role": "agent",
        },
    )
    assert reply["message"]["sender"]["role"] == "visitor"
    assert reply["message"]["sender"]["id"] == visitor.received[0][1]["visitor_id"]


async def test_spoofed_reserved_events_ignored(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_VISITOR_GRACE_S="1")
    agent, visitor, chat_id = await matched_pair(clients)
    await visitor.sio.emit("disconnect", "client says so")
    await visitor.sio.emit("connect", {"role": "agent", "token": "x"})
    await asyncio.sleep(1.5)
    await agent.no_more("chat_ended", within=0.1)
    reply = await visitor.call(
        "message", {"chat_id": chat_id, "text": "still me", "client_id": "s"}
    )
    assert reply["message"]["sender"]["role"] == "visitor"


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (None, "invalid_auth"),
        ("token", "invalid_auth"),
        ({}, "invalid_auth"),
        ({"role": "admin"}, "invalid_auth"),
        ({"role": "agent"}, "invalid_auth"),
        ({"role": "agent", "token": 5}, "invalid_auth"),
        ({"role": "agent", "token": "garbage"}, "unauthorized"),
        ({"role": "visitor", "token": "garbage"}, "unauthorized"),
        ({"role": "visitor", "token": None, "email": "not-an-email"}, "invalid_auth"),
        ({"role": "visitor", "token": None, "name": "n" * 101}, "invalid_auth"),
    ],
)
async def test_connect_rejected(clients: Clients, auth: Any, code: str) -> None:
    client = clients.client(auth)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(clients.server.url, auth=auth, wait_timeout=5)
    assert client.connect_errors[0]["data"]["code"] == code
    assert client.connect_errors[0]["message"]


def sign(data_dir: Path, claims: dict[str, Any]) -> str:
    key = (data_dir / "secret_key").read_text(encoding="ascii").strip()
    return jwt.encode(claims, key, algorithm="HS256")


async def test_expired_token_rejected(server: ServerProcess, clients: Clients) -> None:
    agent_id = await server.create_agent("old@example.com")
    now = int(time.time())
    token = sign(
        server.data_dir,
        {"sub": agent_id, "role": "agent", "iat": now - 100, "exp": now - 10},
    )
    client = clients.client({"role": "agent", "token": token})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(server.url, auth=client.auth, wait_timeout=5)
    assert client.connect_errors[0]["data"]["code"] == "unauthorized"


async def test_visitor_token_not_agent(server: ServerProcess, clients: Clients) -> None:
    visitor = await clients.visitor()
    client = clients.client({"role": "agent", "token": visitor.auth["token"]})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(server.url, auth=client.auth, wait_timeout=5)
    assert client.connect_errors[0]["data"]["code"] == "unauthorized"


async def test_oversize_frame_drops_only_sender(
    server: ServerProcess, clients: Clients
) -> None:
    """A frame above the transport limit closes that socket and nothing else."""
    agent, visitor, chat_id = await matched_pair(clients)
    attacker = await clients.visitor()
    attacker_chat = (await attacker.call("join_queue", {}))["chat"]["id"]
    with pytest.raises(socketio.exceptions.TimeoutError):
        await attacker.call(
            "message",
            {"chat_id": attacker_chat, "text": "x" * 2_000_000, "client_id": "big"},
            timeout=3,
        )
    reply = await visitor.call(
        "message", {"chat_id": chat_id, "text": "fine", "client_id": "f"}
    )
    assert reply["ok"] is True
    assert (await agent.next("message"))["text"] == "fine"


async def test_handler_fault_replies_internal_error(
    server: ServerProcess, clients: Clients
) -> None:
    """A handler that raises replies internal_error and the server keeps serving."""
    agent, visitor, chat_id = await matched_pair(clients, first_message="hi")
    server.expect_tracebacks = True
    await execute(server.database_url, "DROP TABLE read_marks")

    reply = await agent.call("read", {"chat_id": chat_id, "seq": 1})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "internal_error"
    assert "Traceback" in server.log()

    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": "still up", "client_id": "u"}
    )
    assert sent["ok"] is True
    assert (await agent.next("message"))["text"] == "still up"
