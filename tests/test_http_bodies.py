"""Malformed login bodies: a clear 4xx JSON error each, never a 500."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support import ServerProcess

# JSON is UTF-8 by definition, so the server ignores a declared charset: a
# body with an unknown one is read normally and fails only on the password.
LOGIN_BODIES = [
    pytest.param(
        b'{"email": "a@example.com", "password": "x"}',
        "application/json; charset=no-such-charset",
        401,
        "unauthorized",
        id="unknown-charset",
    ),
    pytest.param(
        b"[" * 100_000 + b"]" * 100_000,
        "application/json",
        400,
        "invalid_payload",
        id="deep-nesting",
    ),
    pytest.param(
        b"\xff\xfe{}", "application/json", 400, "invalid_payload", id="not-utf8"
    ),
]


@pytest.mark.parametrize(("body", "content_type", "status", "code"), LOGIN_BODIES)
async def test_login_bad_body_is_client_error(
    server: ServerProcess, body: bytes, content_type: str, status: int, code: str
) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{server.url}/api/auth/login",
            data=body,
            headers={"Content-Type": content_type},
        )
        reply = await response.json()

    assert response.status == status, reply
    assert reply["error"]["code"] == code, reply
    assert "Traceback" not in server.log(), server.log()[-3000:]
