"""Canned responses over HTTP: create, list, update, delete, and rejected input."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support import Clients, http_json

ROUTE = "/api/canned-responses"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


async def agent_token(clients: Clients) -> str:
    agent = await clients.agent()
    return str(agent.auth["token"])


async def create(
    clients: Clients, token: str, shortcut: str, text: str
) -> dict[str, Any]:
    status, body = await http_json(
        clients.server,
        "POST",
        ROUTE,
        token=token,
        json={"shortcut": shortcut, "text": text},
    )
    assert status == 201, body
    return dict(body["canned_response"])


async def listed(clients: Clients, token: str) -> list[dict[str, Any]]:
    status, body = await http_json(clients.server, "GET", ROUTE, token=token)
    assert status == 200, body
    return list(body["canned_responses"])


async def test_canned_crud(clients: Clients) -> None:
    token = await agent_token(clients)
    assert await listed(clients, token) == []

    thanks = await create(clients, token, "thanks", "Thank you for waiting.")
    assert thanks["shortcut"] == "thanks"
    assert thanks["text"] == "Thank you for waiting."
    assert thanks["id"]
    assert thanks["created_at"]
    assert thanks["updated_at"]
    hello = await create(clients, token, "hello", "Hello, how can I help?")
    refund = await create(clients, token, "refund-policy_2", "Refunds take 5 days.")
    assert [item["shortcut"] for item in await listed(clients, token)] == [
        "hello",
        "refund-policy_2",
        "thanks",
    ]
    assert (await listed(clients, token))[0] == hello

    await asyncio.sleep(0.01)
    status, body = await http_json(
        clients.server,
        "PUT",
        f"{ROUTE}/{thanks['id']}",
        token=token,
        json={"shortcut": "ty", "text": "Thanks a lot!"},
    )
    assert status == 200, body
    updated = body["canned_response"]
    assert updated["id"] == thanks["id"]
    assert updated["shortcut"] == "ty"
    assert updated["text"] == "Thanks a lot!"
    assert updated["created_at"] == thanks["created_at"]
    assert updated["updated_at"] > thanks["updated_at"]

    status, body = await http_json(
        clients.server, "DELETE", f"{ROUTE}/{refund['id']}", token=token
    )
    assert status == 204, body
    assert await listed(clients, token) == [hello, updated]

    status, body = await http_json(
        clients.server, "DELETE", f"{ROUTE}/{refund['id']}", token=token
    )
    assert status == 404, body
    assert body["error"]["code"] == "not_found"
    status, body = await http_json(
        clients.server,
        "PUT",
        f"{ROUTE}/{UNKNOWN_ID}",
        token=token,
        json={"shortcut": "new", "text": "text"},
    )
    assert status == 404, body
    assert body["error"]["code"] == "not_found"


async def test_canned_duplicate_shortcut(clients: Clients) -> None:
    token = await agent_token(clients)
    first = await create(clients, token, "hello", "Hello!")
    status, body = await http_json(
        clients.server,
        "POST",
        ROUTE,
        token=token,
        json={"shortcut": "hello", "text": "Hi there!"},
    )
    assert status == 409, body
    assert body["error"]["code"] == "wrong_state"

    # Renaming another response to a taken shortcut is rejected the same way.
    other = await create(clients, token, "bye", "Goodbye!")
    status, body = await http_json(
        clients.server,
        "PUT",
        f"{ROUTE}/{other['id']}",
        token=token,
        json={"shortcut": "hello", "text": "Goodbye!"},
    )
    assert status == 409, body
    assert body["error"]["code"] == "wrong_state"
    assert await listed(clients, token) == [other, first]

    # Keeping its own shortcut is no conflict.
    status, body = await http_json(
        clients.server,
        "PUT",
        f"{ROUTE}/{first['id']}",
        token=token,
        json={"shortcut": "hello", "text": "Hello again!"},
    )
    assert status == 200, body


BAD_BODIES: list[Any] = [
    {"shortcut": "Hello", "text": "x"},
    {"shortcut": "-hello", "text": "x"},
    {"shortcut": "_hello", "text": "x"},
    {"shortcut": "a" * 33, "text": "x"},
    {"shortcut": "", "text": "x"},
    {"shortcut": "two words", "text": "x"},
    {"shortcut": "héllo", "text": "x"},
    {"shortcut": 5, "text": "x"},
    {"shortcut": "hello", "text": ""},
    {"shortcut": "hello", "text": 5},
    {"shortcut": "hello"},
    {"text": "x"},
    ["hello", "x"],
]


async def test_canned_bad_fields(clients: Clients) -> None:
    token = await agent_token(clients)
    existing = await create(clients, token, "a" * 32, "x" * 4000)
    for body in BAD_BODIES:
        status, reply = await http_json(
            clients.server, "POST", ROUTE, token=token, json=body
        )
        assert status == 400, (body, reply)
        assert reply["error"]["code"] == "invalid_payload", (body, reply)
        status, reply = await http_json(
            clients.server, "PUT", f"{ROUTE}/{existing['id']}", token=token, json=body
        )
        assert status == 400, (body, reply)
        assert reply["error"]["code"] == "invalid_payload", (body, reply)
    status, reply = await http_json(
        clients.server, "POST", ROUTE, token=token, data=b"{oops"
    )
    assert status == 400, reply
    assert await listed(clients, token) == [existing]


async def test_canned_needs_agent_token(clients: Clients) -> None:
    token = await agent_token(clients)
    item = await create(clients, token, "hello", "Hello!")
    visitor = await clients.visitor()
    body = {"shortcut": "new", "text": "New"}
    requests: list[tuple[str, str, Any]] = [
        ("GET", ROUTE, None),
        ("POST", ROUTE, body),
        ("PUT", f"{ROUTE}/{item['id']}", body),
        ("DELETE", f"{ROUTE}/{item['id']}", None),
    ]
    for bad_token in (None, "not-a-token", visitor.auth["token"]):
        for method, path, json_body in requests:
            status, reply = await http_json(
                clients.server, method, path, token=bad_token, json=json_body
            )
            assert status == 401, (method, path, bad_token, reply)
            assert reply["error"]["code"] == "unauthorized", (method, path, reply)
    assert await listed(clients, token) == [item]


async def test_canned_text_over_limit(clients: Clients) -> None:
    token = await agent_token(clients)
    existing = await create(clients, token, "hello", "Hello!")
    body = {"shortcut": "long", "text": "x" * 4001}
    for method, path in (("POST", ROUTE), ("PUT", f"{ROUTE}/{existing['id']}")):
        status, reply = await http_json(
            clients.server, method, path, token=token, json=body
        )
        # Over-long text gets the same code as an over-long message.
        assert status == 413, (method, reply)
        assert reply["error"]["code"] == "payload_too_large", (method, reply)
    assert await listed(clients, token) == [existing]


async def test_canned_same_shortcut_at_once(clients: Clients) -> None:
    token = await agent_token(clients)
    replies = await asyncio.gather(
        *(
            http_json(
                clients.server,
                "POST",
                ROUTE,
                token=token,
                json={"shortcut": "hello", "text": f"Hello {n}"},
            )
            for n in range(5)
        )
    )
    statuses = sorted(status for status, _ in replies)
    assert statuses == [201, 409, 409, 409, 409], replies
    items = await listed(clients, token)
    assert len(items) == 1
    assert items[0]["shortcut"] == "hello"
