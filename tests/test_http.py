"""REST routes: login, chat list, transcripts, health and metrics."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.support import PASSWORD, Clients, ServerProcess, matched_pair


async def request(
    server: ServerProcess,
    method: str,
    path: str,
    *,
    token: str | None = None,
    **options: Any,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, headers=headers, **options) as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_login_returns_token(server: ServerProcess) -> None:
    await server.create_agent("ann@example.com", "Ann")
    status, body = await request(
        server,
        "POST",
        "/api/auth/login",
        json={"email": "ann@example.com", "password": PASSWORD},
    )
    assert status == 200
    assert body["token"]
    assert body["agent"]["name"] == "Ann"
    assert "password_hash" not in body["agent"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"email": "ann@example.com", "password": "wrong password"},
            401,
            "unauthorized",
        ),
        ({"email": "nobody@example.com", "password": PASSWORD}, 401, "unauthorized"),
        ({"email": "ann@example.com"}, 400, "invalid_payload"),
        ({"email": 5, "password": PASSWORD}, 400, "invalid_payload"),
        (["ann@example.com", PASSWORD], 400, "invalid_payload"),
    ],
)
async def test_login_rejected(
    server: ServerProcess, body: Any, status: int, code: str
) -> None:
    await server.create_agent("ann@example.com")
    got_status, got = await request(server, "POST", "/api/auth/login", json=body)
    assert got_status == status
    assert got["error"]["code"] == code


async def test_login_body_not_json(server: ServerProcess) -> None:
    status, body = await request(server, "POST", "/api/auth/login", data=b"{oops")
    assert status == 400
    assert body["error"]["code"] == "invalid_payload"


async def test_chat_list_filters(server: ServerProcess, clients: Clients) -> None:
    agent, _visitor, active_id = await matched_pair(clients)
    waiting = await clients.visitor()
    queued_id = (await waiting.call("join_queue", {}))["chat"]["id"]
    token = agent.auth["token"]

    status, body = await request(server, "GET", "/api/chats", token=token)
    assert status == 200
    assert {chat["id"] for chat in body["chats"]} == {active_id, queued_id}

    _, body = await request(server, "GET", "/api/chats?status=queued", token=token)
    assert [chat["id"] for chat in body["chats"]] == [queued_id]
    _, body = await request(server, "GET", "/api/chats?limit=1", token=token)
    assert len(body["chats"]) == 1


@pytest.mark.parametrize("query", ["status=open", "limit=0", "limit=501", "limit=ten"])
async def test_chat_list_bad_query(
    server: ServerProcess, clients: Clients, query: str
) -> None:
    agent = await clients.agent()
    status, body = await request(
        server, "GET", f"/api/chats?{query}", token=agent.auth["token"]
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_payload"


async def test_chat_list_needs_agent(server: ServerProcess, clients: Clients) -> None:
    visitor = await clients.visitor()
    for token in (None, "garbage", visitor.auth["token"]):
        status, body = await request(server, "GET", "/api/chats", token=token)
        assert status == 401
        assert body["error"]["code"] == "unauthorized"


async def test_transcript_access(server: ServerProcess, clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients, first_message="hello")
    stranger = await clients.visitor()
    path = f"/api/chats/{chat_id}/messages"

    for token in (agent.auth["token"], visitor.auth["token"]):
        status, body = await request(server, "GET", path, token=token)
        assert status == 200
        assert [m["text"] for m in body["messages"]] == ["hello"]
        assert body["chat"]["id"] == chat_id

    status, body = await request(server, "GET", path, token=stranger.auth["token"])
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    status, body = await request(server, "GET", path)
    assert status == 401
    status, body = await request(
        server, "GET", "/api/chats/nope/messages", token=agent.auth["token"]
    )
    assert status == 404
    assert body["error"]["code"] == "not_found"


async def test_healthz(server: ServerProcess) -> None:
    status, body = await request(server, "GET", "/healthz")
    assert status == 200
    assert body == {"status": "ok", "store": "ok"}


async def test_metrics(server: ServerProcess, clients: Clients) -> None:
    _agent, visitor, chat_id = await matched_pair(clients)
    await visitor.call("message", {"chat_id": chat_id, "text": "x", "client_id": "1"})
    status, text = await request(server, "GET", "/metrics")
    assert status == 200
    assert 'chat_messages_total{role="visitor"} 1.0' in text
    assert 'chat_connected_people{role="agent"} 1.0' in text
    assert 'chat_lifecycle_total{transition="matched"} 1.0' in text


async def test_unknown_route_json_404(server: ServerProcess) -> None:
    status, body = await request(server, "GET", "/api/nothing")
    assert status == 404
    assert body["error"]["code"] == "not_found"


UPGRADE = {"Upgrade": "websocket", "Connection": "keep-alive, Upgrade"}
NEW_WEBSOCKET = "/socket.io/?EIO=4&transport=websocket"


@pytest.mark.parametrize(
    ("method", "path", "headers", "kept"),
    [
        ("GET", NEW_WEBSOCKET, UPGRADE, False),
        ("GET", "/socket.io/?transport=websocket&EIO=4&t=abc", UPGRADE, False),
        # Upgrades of a polling session, polling, requests that python-engineio
        # or aiohttp may reject with an error, and the API keep the
        # middlewares' coroutines, which reply to their failures.
        ("GET", NEW_WEBSOCKET + "&sid=abc", UPGRADE, True),
        # aiohttp decodes the query once and python-engineio once more.
        ("GET", NEW_WEBSOCKET + "&%2573id=abc", UPGRADE, True),
        ("POST", NEW_WEBSOCKET, UPGRADE, True),
        ("GET", "/socket.io/other?EIO=4&transport=websocket", UPGRADE, True),
        ("GET", NEW_WEBSOCKET, {"Upgrade": "websocket"}, True),
        ("GET", "/socket.io/?EIO=4&transport=polling", UPGRADE, True),
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&x=transport%3Dwebsocket",
            {},
            True,
        ),
        ("GET", "/api/chats?transport=websocket", UPGRADE, True),
    ],
)
async def test_new_websocket_skips_middlewares(
    method: str, path: str, headers: dict[str, str], kept: bool
) -> None:
    """A new WebSocket's request is handed on, not awaited by each middleware.

    Each awaiting coroutine would stay alive, with its frame, for as long
    as the socket is open.
    """
    from aiohttp.test_utils import make_mocked_request

    from sio_server.http import error_middleware, origin_middleware

    request = make_mocked_request(method, path, headers=headers)

    async def handler(request: Any) -> Any:
        return None

    for middleware in (origin_middleware, error_middleware):
        served = handler(request)
        returned = middleware(request, lambda _request, served=served: served)
        assert (returned is not served) == (
            kept and (middleware is error_middleware or path.startswith("/api/"))
        ), middleware
        if returned is not served:
            returned.close()
        served.close()


async def http_reply(
    server: ServerProcess, method: str, path: str, headers: dict[str, str]
) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, headers=headers) as response,
    ):
        return response.status, response.content_type, await response.text()


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/socket.io/other?EIO=4&transport=websocket", UPGRADE, 404),
        ("PUT", NEW_WEBSOCKET, UPGRADE, 405),
        # The WebSocket handshake fails in aiohttp.
        ("GET", NEW_WEBSOCKET, {**UPGRADE, "Sec-WebSocket-Key": "bad"}, 400),
        ("GET", NEW_WEBSOCKET, {**UPGRADE, "Sec-WebSocket-Version": "12"}, 400),
        # python-engineio returns packets for this one instead of a reply.
        ("GET", NEW_WEBSOCKET, {"Upgrade": "websocket"}, 400),
    ],
)
async def test_bad_engineio_requests_get_json_errors(
    server: ServerProcess, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    if "Sec-WebSocket-Version" not in headers:
        headers = {**headers, "Sec-WebSocket-Version": "13"}
    if "Sec-WebSocket-Key" not in headers:
        headers = {**headers, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    code, content_type, body = await http_reply(server, method, path, headers)
    assert code == status, body
    assert content_type == "application/json", body
    assert '"error"' in body


async def test_closed_session_request_gets_400(server: ServerProcess) -> None:
    """A POST for a session that closed a moment ago, its sid encoded twice."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling") as r:
            sid = (await r.text())[1:].split('"sid":"')[1].split('"')[0]
        polling = f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
        async with http.post(polling, data="1") as r:
            assert r.status == 200
        # Marked as encoded, so that yarl sends %2573 as it is.
        query = f"EIO=4&transport=websocket&%2573id={sid}"
        url = URL(f"{server.url}/socket.io/?{query}", encoded=True)
        async with http.post(url, data="40") as r:
            # JSON from the error middleware while python-engineio still keeps
            # the closed session, its own text reply once it has dropped it.
            assert r.status == 400, await r.text()
