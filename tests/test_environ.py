"""The environ python-engineio reads, computed from the aiohttp request on demand."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from engineio.async_drivers.aiohttp import translate_request
from multidict import CIMultiDict

from sio_server.socket_server import RequestEnviron

HEADERS = [
    [("Host", "chat.example"), ("Upgrade", "websocket"), ("Connection", "Upgrade")],
    [("Origin", "https://shop.example"), ("X-Forwarded-Proto", "https")],
    # Repeated headers, and names that differ only by "-" and "_", are joined.
    [("X-Tag", "a"), ("x-tag", "b"), ("X_Tag", "c")],
    # Content headers have keys of their own and take the last value.
    [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Content-Length", "7")],
    [("X-Forwarded-Proto", "")],
    # Spelled with "_", they are headers like any other.
    [("Content_Type", "a"), ("content_length", "3"), ("Content-Type", "b")],
    [],
]


@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/socket.io/?EIO=4&transport=websocket"),
        ("POST", "/socket.io/?EIO=4&transport=polling&sid=abc"),
        ("OPTIONS", "/socket.io/"),
    ],
)
def test_environ_matches_python_engineio(
    headers: list[tuple[str, str]], method: str, path: str
) -> None:
    request = make_mocked_request(method, path, headers=CIMultiDict(headers))
    expected = translate_request(request)
    environ = RequestEnviron(request)

    assert dict(environ) == expected
    assert len(environ) == len(expected)
    assert list(environ) == list(expected)


def test_environ_missing_keys() -> None:
    request = make_mocked_request("GET", "/socket.io/", headers={"Origin": "x"})
    environ = RequestEnviron(request)

    assert environ.get("HTTP_UPGRADE") is None
    assert "HTTP_UPGRADE" not in environ
    assert "HTTP_ORIGIN" in environ
    with pytest.raises(KeyError):
        environ["CONTENT_LENGTH"]
    # python-engineio writes keys in capitals with "_" only.
    assert "HTTP_origin" not in environ
    assert "HTTP-ORIGIN" not in environ
