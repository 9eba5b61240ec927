"""Estimated wait of a queued visitor, from figures measured on this server.

Two figures are kept, each for the latest `WINDOW` chats:

- the duration of chats that ended with an agent (assignment to end);
- the wait of chats that were assigned (entering the queue to assignment).

With agents' open capacity `C` (the sum of `max_chats` of ready, connected
agents) and a mean chat duration `D`, slots free up at about `C / D` per
second, so the visitor at position `p` waits about `p * D / C`. Before enough
durations are known, the median of the recent waits is the estimate for every
position. With too little data of either kind, or no agent ready, there is no
estimate: a wrong number is worse than none.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable

# Figures kept per kind; older ones fall out.
WINDOW = 50
# Figures needed before an estimate is given.
MIN_SAMPLES = 5


class WaitEstimator:
    """Keeps recent waits and chat durations and turns them into estimates."""

    def __init__(
        self, waits: Iterable[float] = (), durations: Iterable[float] = ()
    ) -> None:
        self._waits: deque[float] = deque(maxlen=WINDOW)
        self._durations: deque[float] = deque(maxlen=WINDOW)
        for wait in waits:
            self.record_wait(wait)
        for duration in durations:
            self.record_duration(duration)

    def record_wait(self, seconds: float) -> None:
        """Add the time a chat spent queued before an agent took it."""
        if seconds >= 0:
            self._waits.append(seconds)

    def record_duration(self, seconds: float) -> None:
        """Add the time from assignment to end of a chat that had an agent."""
        if seconds >= 0:
            self._durations.append(seconds)

    def estimate(self, position: int, open_capacity: int) -> float | None:
        """Return whole seconds until the chat at `position` is taken, or `None`."""
        if position < 1 or open_capacity < 1:
            return None
        if len(self._durations) >= MIN_SAMPLES:
            mean = statistics.fmean(self._durations)
            return float(round(position * mean / open_capacity))
        if len(self._waits) >= MIN_SAMPLES:
            return float(round(statistics.median(self._waits)))
        return None
