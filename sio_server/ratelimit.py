"""Rate limits on connections, events, messages and logins.

Counts live in the `limits` library's in-memory storage, with its moving
window: exact, so no burst slips through at window edges, and about 5 µs per
hit. A check never awaits, so event handlers can run it before they take a
chat's lock without changing the order of messages.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from aiohttp import web
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from .errors import RateLimited
from .metrics import Metrics

logger = logging.getLogger("sio_server.ratelimit")

# A source that keeps hitting a limit is logged at most this often.
LOG_INTERVAL_S = 10.0
# Sources remembered for that purpose; the oldest are dropped beyond it.
MAX_LOGGED_SOURCES = 10_000


def client_address(request: web.Request, trust_forwarded_for: bool) -> str:
    """Return the client's IP address, for limits counted per address.

    Behind a reverse proxy every connection comes from the proxy, which appends
    the real address to X-Forwarded-For; the last entry is the one it added.
    """
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.remote or "unknown"


def parse_limit(text: str) -> tuple[RateLimitItem, ...]:
    """Parse `"20/second;200/minute"`, or `"off"` for no limit, into items."""
    if text.strip().lower() == "off":
        return ()
    items = tuple(parse_many(text))
    if not items:
        raise ValueError(f"{text!r} is not a rate limit such as 20/second;200/minute")
    return items


@dataclass(frozen=True)
class Limit:
    """A named set of rate limit items, such as 10 per second and 100 per minute."""

    name: str
    items: tuple[RateLimitItem, ...]
    # The counted requests, named in the error message as "too many <description>".
    description: str


class RateLimiter:
    """Checks limits per source and counts and logs the rejections."""

    def __init__(self, metrics: Metrics) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._metrics = metrics
        # Per source: rejections not yet logged, and when the last line went out.
        self._logged: dict[str, tuple[int, float]] = {}

    def check(self, limit: Limit, source: str) -> None:
        """Count one hit of `source`; raise `RateLimited` when it is over `limit`."""
        for item in limit.items:
            if self._limiter.hit(item, limit.name, source):
                continue
            stats = self._limiter.get_window_stats(item, limit.name, source)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
            self._count(limit, source)
            raise RateLimited(
                f"too many {limit.description}: retry in {retry_after} s", retry_after
            )

    def _count(self, limit: Limit, source: str) -> None:
        self._metrics.rate_limited.labels(limit.name).inc()
        key = f"{limit.name}:{source}"
        waiting, logged_at = self._logged.pop(key, (0, 0.0))
        now = time.monotonic()
        if now - logged_at < LOG_INTERVAL_S:
            self._logged[key] = (waiting + 1, logged_at)
            return
        logger.warning(
            "rate limit %s hit by %s (%d rejections since the last report)",
            limit.name,
            source,
            waiting + 1,
        )
        self._logged[key] = (0, now)
        if len(self._logged) > MAX_LOGGED_SOURCES:
            # Dicts keep insertion order and every hit re-inserts its key, so
            # the first key is the one hit longest ago.
            del self._logged[next(iter(self._logged))]
