"""Team administration over the REST API: accounts, tokens and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import socketio

from tests.support import PASSWORD, ChatClient, Clients, ServerProcess, matched_pair

NEW_PASSWORD = "a much longer passphrase"


async def api(
    server: ServerProcess,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, json=body, headers=headers) as response,
    ):
        data = await response.json() if response.status != 204 else None
        return response.status, data


async def admin_token(server: ServerProcess) -> str:
    await server.create_agent("root@example.com", "Root", is_admin=True)
    return await server.login("root@example.com")


async def test_disable_during_connects(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Sockets that are still connecting when the agent is disabled end too.

    Steps: 20 sockets of one agent start to connect, and after a pause that
    grows each round (0 to 80 ms) an admin disables the agent. Five rounds,
    each with a new agent.

    Expected: 1.5 s later none of the sockets is connected. Each socket was
    either refused or received `signed_out` before its disconnect.
    """
    server = server_factory(CHAT_MAX_SOCKETS_PER_AGENT="50")
    clients = Clients(server)
    try:
        admin = await admin_token(server)
        for round_number in range(5):
            email = f"ann{round_number}@example.com"
            await server.create_agent(email)
            token = await server.login(email)
            _, body = await api(server, "GET", "/api/admin/agents", admin)
            ann_id = next(a["id"] for a in body["agents"] if a["email"] == email)
            sockets = [
                clients.client({"role": "agent", "token": token}, reconnection=False)
                for _ in range(20)
            ]

            async def connect(client: ChatClient) -> None:
                # A refusal is one of the expected outcomes.
                with contextlib.suppress(socketio.exceptions.ConnectionError):
                    await client.sio.connect(
                        server.url, auth=client.auth, wait_timeout=5
                    )

            connecting = [asyncio.create_task(connect(c)) for c in sockets]
            await asyncio.sleep(0.02 * round_number)
            status, body = await api(
                server,
                "PATCH",
                f"/api/admin/agents/{ann_id}",
                admin,
                {"disabled": True},
            )
            assert status == 200, body
            await asyncio.gather(*connecting)
            await asyncio.sleep(1.5)

            connected = [c for c in sockets if c.sio.connected]
            assert connected == [], (round_number, len(connected))
            for client in sockets:
                names = [name for name, _ in client.received]
                assert client.connect_errors or "signed_out" in names, names
    finally:
        await clients.close()


async def rejected_connect(clients: Clients, token: str) -> str:
    """Connect as an agent with `token`, expect a refusal and return its code."""
    client = clients.client({"role": "agent", "token": token})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(clients.server.url, auth=client.auth, wait_timeout=5)
    return str(client.connect_errors[0]["data"]["code"])


async def test_admin_routes_need_admin(server: ServerProcess) -> None:
    await server.create_agent("ann@example.com")
    token = await server.login("ann@example.com")
    status, body = await api(server, "GET", "/api/admin/agents", token)
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    status, _ = await api(server, "GET", "/api/admin/agents")
    assert status == 401


async def test_create_agent(server: ServerProcess) -> None:
    token = await admin_token(server)
    new = {"email": "neo@example.com", "name": "Neo", "password": NEW_PASSWORD}
    status, body = await api(server, "POST", "/api/admin/agents", token, new)
    assert status == 201, body
    assert body["agent"]["email"] == "neo@example.com"
    assert "password_hash" not in body["agent"]
    assert await server.login("neo@example.com", NEW_PASSWORD)

    status, body = await api(server, "POST", "/api/admin/agents", token, new)
    assert status == 409
    short = {**new, "email": "short@example.com", "password": "short"}
    status, body = await api(server, "POST", "/api/admin/agents", token, short)
    assert status == 400

    status, body = await api(server, "GET", "/api/admin/audit", token)
    assert status == 200
    latest = body["entries"][0]
    assert latest["action"] == "agent.create"
    assert latest["details"] == {
        "email": "neo@example.com",
        "name": "Neo",
        "is_admin": False,
    }
    assert NEW_PASSWORD not in str(body)


async def test_disable_signs_out_and_requeues(
    server: ServerProcess, clients: Clients
) -> None:
    token = await admin_token(server)
    agent, visitor, chat_id = await matched_pair(clients, first_message="hi")
    old_token = agent.auth["token"]
    status, body = await api(server, "GET", "/api/admin/agents", token)
    alice = next(item for item in body["agents"] if item["name"] == "Alice")
    assert (alice["online"], alice["load"]) == (True, 1)

    status, body = await api(
        server, "PATCH", f"/api/admin/agents/{alice['id']}", token, {"disabled": True}
    )
    assert status == 200, body
    assert body["agent"]["disabled"] is True
    assert await agent.next("signed_out") == {"reason": "disabled"}
    # The chat goes back to the queue at once, not after the grace period.
    requeued = await visitor.next("chat_requeued", timeout=5)
    assert requeued["chat_id"] == chat_id
    await asyncio.sleep(0.2)
    assert not agent.sio.connected

    assert await rejected_connect(clients, old_token) == "unauthorized"
    status, body = await api(
        server,
        "POST",
        "/api/auth/login",
        body={"email": "alice@example.com", "password": PASSWORD},
    )
    assert status == 401
    assert "disabled" in body["error"]["message"]

    status, _ = await api(
        server, "PATCH", f"/api/admin/agents/{alice['id']}", token, {"disabled": False}
    )
    assert status == 200
    assert await server.login("alice@example.com")
    _, body = await api(server, "GET", "/api/admin/audit", token)
    actions = [(entry["action"], entry["details"]) for entry in body["entries"][:2]]
    assert actions == [
        ("agent.update", {"disabled": False}),
        ("agent.update", {"disabled": True}),
    ]


async def test_password_reset_revokes_tokens(
    server: ServerProcess, clients: Clients
) -> None:
    token = await admin_token(server)
    agent = await clients.agent()
    old_token = agent.auth["token"]
    _, body = await api(server, "GET", "/api/admin/agents", token)
    alice = next(item for item in body["agents"] if item["name"] == "Alice")

    status, _ = await api(
        server,
        "POST",
        f"/api/admin/agents/{alice['id']}/password",
        token,
        {"password": NEW_PASSWORD},
    )
    assert status == 200
    assert await agent.next("signed_out") == {"reason": "password_changed"}
    status, _ = await api(server, "GET", "/api/chats", old_token)
    assert status == 401
    assert await rejected_connect(clients, old_token) == "unauthorized"
    assert await server.login("alice@example.com", NEW_PASSWORD)


async def test_own_password_change(server: ServerProcess) -> None:
    await server.create_agent("ann@example.com")
    old_token = await server.login("ann@example.com")
    wrong = {"current_password": "not it", "new_password": NEW_PASSWORD}
    status, _ = await api(server, "POST", "/api/auth/password", old_token, wrong)
    assert status == 401

    right = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    status, body = await api(server, "POST", "/api/auth/password", old_token, right)
    assert status == 200, body
    status, _ = await api(server, "GET", "/api/chats", body["token"])
    assert status == 200
    status, _ = await api(server, "GET", "/api/chats", old_token)
    assert status == 401


async def test_admin_keeps_own_rights(server: ServerProcess) -> None:
    token = await admin_token(server)
    _, body = await api(server, "GET", "/api/admin/agents", token)
    root_id = body["agents"][0]["id"]
    for change in ({"disabled": True}, {"is_admin": False}):
        status, body = await api(
            server, "PATCH", f"/api/admin/agents/{root_id}", token, change
        )
        assert status == 409, body


async def test_update_capacity_and_departments(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_DEPARTMENTS="sales,billing")
    clients = Clients(server)
    try:
        token = await admin_token(server)
        agent = await clients.agent()
        _, body = await api(server, "GET", "/api/admin/agents", token)
        alice = next(item for item in body["agents"] if item["name"] == "Alice")
        path = f"/api/admin/agents/{alice['id']}"

        change = {"max_chats": 4, "departments": ["sales"]}
        status, body = await api(server, "PATCH", path, token, change)
        assert status == 200, body
        assert (body["agent"]["max_chats"], body["agent"]["serving"]) == (4, ["sales"])
        updated = await agent.next("agent_updated")
        assert updated["serving"] == ["sales"]

        status, body = await api(server, "PATCH", path, token, {"departments": None})
        assert body["agent"]["serving"] is None
        status, body = await api(server, "PATCH", path, token, {"departments": ["x"]})
        assert status == 400
        status, body = await api(
            server, "PATCH", "/api/admin/agents/nobody", token, {"max_chats": 2}
        )
        assert status == 404
    finally:
        await clients.close()


async def test_supervisor_overview_and_watch(
    server: ServerProcess, clients: Clients
) -> None:
    token = await admin_token(server)
    agent, visitor, chat_id = await matched_pair(clients, first_message="hi")
    waiting = await clients.visitor()
    queued_id = (await waiting.call("join_queue"))["chat"]["id"]

    status, body = await api(server, "GET", "/api/admin/overview", token)
    assert status == 200, body
    assert [entry["chat_id"] for entry in body["queue"]] == [queued_id]
    assert body["queue"][0]["position"] == 1
    assert [chat["id"] for chat in body["chats"]] == [chat_id]
    alice = next(item for item in body["agents"] if item["name"] == "Alice")
    assert (alice["load"], alice["online"]) == (1, True)
    status, _ = await api(server, "GET", "/api/admin/overview", agent.auth["token"])
    assert status == 403

    root = clients.client({"role": "agent", "token": token})
    await root.connect()
    watched = await root.call("watch_chat", {"chat_id": chat_id})
    assert watched["ok"], watched
    assert [m["text"] for m in watched["messages"]] == ["hi"]
    sent = {"chat_id": chat_id, "text": "from the visitor", "client_id": "v2"}
    assert (await visitor.call("message", sent))["ok"]
    assert (await root.next("message"))["text"] == "from the visitor"
    # Watching is read-only.
    reply = await root.call("message", {**sent, "client_id": "r1"})
    assert reply["error"]["code"] == "forbidden"
    reply = await agent.call("watch_chat", {"chat_id": chat_id})
    assert reply["error"]["code"] == "forbidden"

    assert (await root.call("unwatch_chat", {"chat_id": chat_id}))["ok"]
    sent = {"chat_id": chat_id, "text": "after", "client_id": "v3"}
    assert (await visitor.call("message", sent))["ok"]
    await root.no_more("message")


async def test_observer_socket_is_not_presence(
    server: ServerProcess, clients: Clients
) -> None:
    token = await admin_token(server)
    observer = clients.client({"role": "agent", "token": token, "observer": True})
    session = await observer.connect()
    assert session["role"] == "observer"

    # The admin is not online for matching through an observer socket.
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue")
    assert joined["agents_online"] == 0
    reply = await observer.call("agent_ready", {})
    assert reply["error"]["code"] == "forbidden"
    reply = await observer.call(
        "message", {"chat_id": joined["chat"]["id"], "text": "x", "client_id": "o"}
    )
    assert reply["error"]["code"] == "forbidden"
    watched = await observer.call("watch_chat", {"chat_id": joined["chat"]["id"]})
    assert watched["ok"], watched

    # Only admins may watch, and a password reset signs observers out too.
    await server.create_agent("ann@example.com")
    plain = await server.login("ann@example.com")
    code = await rejected_connect_with(clients, {"token": plain, "observer": True})
    assert code == "forbidden"
    _, body = await api(server, "GET", "/api/admin/agents", token)
    root_id = next(item["id"] for item in body["agents"] if item["is_admin"])
    status, _ = await api(
        server,
        "POST",
        f"/api/admin/agents/{root_id}/password",
        token,
        {"password": NEW_PASSWORD},
    )
    assert status == 200
    assert await observer.next("signed_out") == {"reason": "password_changed"}


async def rejected_connect_with(clients: Clients, auth: dict[str, Any]) -> str:
    client = clients.client({"role": "agent", **auth})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(clients.server.url, auth=client.auth, wait_timeout=5)
    return str(client.connect_errors[0]["data"]["code"])
