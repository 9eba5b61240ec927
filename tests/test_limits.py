"""Rate limits and size limits, each with its recovery, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import socketio

from sio_server.config import Settings
from tests.database import fetch_rows
from tests.support import PASSWORD, ChatClient, Clients, ServerProcess, matched_pair


async def connect_rejected(clients: Clients, auth: dict[str, Any]) -> dict[str, Any]:
    """Connect and expect a `connect_error`; return its `data` object."""
    client = clients.client(auth)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(clients.server.url, auth=auth, wait_timeout=5)
    return dict(client.connect_errors[0]["data"])


def message(chat_id: str, n: int) -> dict[str, Any]:
    return {"chat_id": chat_id, "text": f"line {n}", "client_id": f"c{n}"}


async def stored_texts(server: ServerProcess, chat_id: str) -> list[str]:
    rows = await fetch_rows(
        server.database_url,
        "SELECT text FROM messages WHERE chat_id = $1 ORDER BY seq",
        chat_id,
    )
    return [row[0] for row in rows]


async def after_waiting(attempt: Callable[[], Awaitable[Any]], wait_s: float) -> Any:
    """Wait `wait_s`, then retry `attempt` while it is still rate-limited.

    The suggested time is rounded up to whole seconds; should a retry still
    meet the limit, a few more rounds must do.
    """
    result = None
    for _ in range(4):
        await asyncio.sleep(wait_s)
        result = await attempt()
        error = result.get("error") if isinstance(result, dict) else None
        if not error or error.get("code") != "rate_limited":
            return result
        wait_s = error["retry_after_s"]
    return result


def test_limits_on_by_default() -> None:
    settings = Settings()
    assert settings.limit_connect_per_ip
    assert settings.limit_events_per_socket
    assert settings.limit_messages_per_visitor
    assert settings.limit_login_per_account
    assert settings.limit_login_per_ip


async def test_events_per_socket(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_LIMIT_EVENTS_PER_SOCKET="4/second")
    noisy = await clients.visitor()
    quiet = await clients.visitor()

    replies = [await noisy.call("agent_away") for _ in range(6)]
    codes = [reply["error"]["code"] for reply in replies]
    assert codes == ["forbidden"] * 4 + ["rate_limited"] * 2
    assert replies[-1]["error"]["retry_after_s"] >= 1

    # Another socket is not affected, and the noisy one recovers.
    assert (await quiet.call("join_queue"))["ok"]
    await asyncio.sleep(replies[-1]["error"]["retry_after_s"])
    assert (await noisy.call("join_queue"))["ok"]
    assert noisy.sio.connected

    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{clients.server.url}/metrics")
        text = await response.text()
    assert 'chat_rate_limited_total{limit="events_per_socket"} 2.0' in text
    assert "rate limit events_per_socket hit by" in clients.server.log()


async def test_messages_per_visitor(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_LIMIT_MESSAGES_PER_VISITOR="3/2 seconds")
    agent, visitor, chat_id = await matched_pair(clients)

    replies = [await visitor.call("message", message(chat_id, n)) for n in range(5)]
    assert [reply["ok"] for reply in replies] == [True, True, True, False, False]
    assert replies[3]["error"]["code"] == "rate_limited"
    wait_s = replies[3]["error"]["retry_after_s"]
    assert 1 <= wait_s <= 2

    # Agents are not limited, and nothing was stored for the rejected ones.
    reply = await agent.call("message", message(chat_id, 9))
    assert reply["ok"], reply
    assert await stored_texts(clients.server, chat_id) == [
        "line 0",
        "line 1",
        "line 2",
        "line 9",
    ]

    later = await after_waiting(
        lambda: visitor.call("message", message(chat_id, 5)), wait_s
    )
    assert later["ok"], later


async def test_connections_per_address(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_LIMIT_CONNECT_PER_IP="3/2 seconds")
    first = await clients.visitor()
    await clients.visitor()
    await clients.visitor()

    error = await connect_rejected(clients, {"role": "visitor", "token": None})
    assert error["code"] == "rate_limited"
    assert error["retry_after_s"] >= 1
    assert (await first.call("join_queue"))["ok"]

    async def connect() -> dict[str, Any]:
        client = clients.client({"role": "visitor", "token": None})
        try:
            await client.sio.connect(
                clients.server.url, auth=client.auth, wait_timeout=5
            )
        except socketio.exceptions.ConnectionError:
            return {"error": client.connect_errors[-1]["data"]}
        return {"ok": True}

    assert (await after_waiting(connect, error["retry_after_s"])).get("ok")


async def test_connections_per_process(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_MAX_CONNECTIONS="2")
    first = await clients.visitor()
    second = await clients.visitor()

    error = await connect_rejected(clients, {"role": "visitor", "token": None})
    assert error["code"] == "rate_limited"
    assert (await second.call("join_queue"))["ok"]

    # A freed place is taken again.
    await first.disconnect()
    await asyncio.sleep(0.3)
    third = await clients.visitor()
    assert third.sio.connected


async def test_sockets_per_visitor(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_MAX_SOCKETS_PER_VISITOR="2")
    tab = await clients.visitor()
    token = tab.auth["token"]
    await clients.visitor(token)

    error = await connect_rejected(clients, {"role": "visitor", "token": token})
    assert error["code"] == "rate_limited"
    assert "close a tab" in error["message"]
    # Another visitor is not affected.
    assert (await clients.visitor()).sio.connected


async def test_sockets_per_agent(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_MAX_SOCKETS_PER_AGENT="1")
    await clients.agent()
    token = await clients.server.login("alice@example.com")

    error = await connect_rejected(clients, {"role": "agent", "token": token})
    assert error["code"] == "rate_limited"


async def test_queue_length(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_MAX_QUEUE="2")
    waiting: list[ChatClient] = []
    for _ in range(2):
        visitor = await clients.visitor()
        assert (await visitor.call("join_queue"))["ok"]
        waiting.append(visitor)

    late = await clients.visitor()
    reply = await late.call("join_queue", {"message": "hello?"})
    assert reply["error"]["code"] == "rate_limited"
    assert "queue is full" in reply["error"]["message"]
    # A visitor already queued gets its chat back, and a served chat frees
    # a place.
    assert (await waiting[0].call("join_queue"))["ok"]
    await clients.agent(ready=True)
    await waiting[0].next("chat_started")
    assert (await late.call("join_queue"))["ok"]


async def login(server: ServerProcess, email: str, password: str) -> dict[str, Any]:
    """Post a login; return the status, the Retry-After header and the body."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/api/auth/login",
            json={"email": email, "password": password},
        ) as response,
    ):
        body = await response.json()
        return {
            "status": response.status,
            "retry_after": response.headers.get("Retry-After"),
            **body,
        }


async def test_login_per_account(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(CHAT_LIMIT_LOGIN_PER_ACCOUNT="3/5 seconds")
    await server.create_agent("ann@example.com")
    await server.create_agent("bob@example.com")
    results = [await login(server, "ann@example.com", "wrong") for _ in range(4)]
    assert [result["status"] for result in results] == [401, 401, 401, 429]
    assert results[3]["error"]["code"] == "rate_limited"
    wait_s = int(results[3]["retry_after"])
    assert wait_s >= 1

    # The right password does not get past the limit either, while another
    # account still signs in.
    result = await login(server, "ANN@example.com", PASSWORD)
    assert result["status"] == 429
    result = await login(server, "bob@example.com", PASSWORD)
    assert result["status"] == 200

    later = await after_waiting(
        lambda: login(server, "ann@example.com", PASSWORD), wait_s
    )
    assert later["status"] == 200, later


async def test_login_per_address(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(CHAT_LIMIT_LOGIN_PER_IP="3/5 seconds")
    results = [await login(server, f"guess{n}@example.com", "x") for n in range(4)]
    assert [result["status"] for result in results] == [401, 401, 401, 429]
    assert "rate limit login_per_ip hit by 127.0.0.1" in server.log()

    later = await after_waiting(
        lambda: login(server, "guess9@example.com", "x"), int(results[3]["retry_after"])
    )
    assert later["status"] == 401, later
