"""The origin policy: browser origins allowed to use Socket.IO and the API.

A request without an `Origin` header comes from a native app, a script or a
same-origin page load, and its token decides what it may do. Browsers send
`Origin` on WebSocket upgrades, on cross-origin requests and on requests that
change data. Such a request passes when the origin is the server's own or is
listed in `CHAT_CORS_ORIGINS`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("sio_server.origins")

# Rejected origins are logged once each, up to this many.
MAX_LOGGED_ORIGINS = 100


class OriginPolicy:
    """Decide whether a request's `Origin` may reach the server."""

    def __init__(self, listed: tuple[str, ...], allow_any: bool) -> None:
        self.listed = frozenset(listed)
        self.allow_any = allow_any
        self._logged: set[str] = set()

    def allows(self, origin: str | None, scheme: str | None, host: str | None) -> bool:
        """Tell whether `origin` may connect to the server at `scheme://host`."""
        if origin is None or self.allow_any or origin in self.listed:
            return True
        if host and origin == f"{scheme or 'http'}://{host}":
            return True
        if origin not in self._logged and len(self._logged) < MAX_LOGGED_ORIGINS:
            self._logged.add(origin)
            logger.warning(
                "rejected requests from origin %s: add it to CHAT_CORS_ORIGINS"
                " to allow pages there to connect",
                origin,
            )
        return False

    def allows_environ(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        """Apply `allows` to an Engine.IO request, whose headers are in `environ`."""
        scheme = environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme")
        host = environ.get("HTTP_X_FORWARDED_HOST") or environ.get("HTTP_HOST")
        return self.allows(origin, scheme, host)

    def allows_request(
        self, origin: str | None, headers: Mapping[str, str], scheme: str
    ) -> bool:
        """Apply `allows` to an HTTP request with these headers and scheme."""
        forwarded_scheme = headers.get("X-Forwarded-Proto") or scheme
        host = headers.get("X-Forwarded-Host") or headers.get("Host")
        return self.allows(origin, forwarded_scheme, host)
