"""Prometheus counters updated by the service, and gauges read at scrape time."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

if TYPE_CHECKING:
    from .service import ChatService

# Waits that a person in a chat could notice, from a few milliseconds up.
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# How often the event loop's lag is sampled.
LOOP_LAG_INTERVAL_S = 0.1


class Metrics:
    """One registry per application, so several servers in one process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Resident memory, CPU time and open files of this process.
        ProcessCollector(registry=self.registry)
        self.messages = Counter(
            "chat_messages_total",
            "Messages stored, by sender role.",
            ["role"],
            registry=self.registry,
        )
        self.chat_events = Counter(
            "chat_lifecycle_total",
            "Chat lifecycle transitions: queued, matched, requeued, transferred,"
            " ended, missed, rated.",
            ["transition"],
            registry=self.registry,
        )
        self.errors = Counter(
            "chat_event_errors_total",
            "Error replies sent to clients, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "chat_rate_limited_total",
            "Requests rejected by a rate limit or a size limit, by limit.",
            ["limit"],
            registry=self.registry,
        )
        self.time_to_match = Histogram(
            "chat_time_to_match_seconds",
            "Time from entering the queue to an agent taking the chat.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.first_reply = Histogram(
            "chat_first_agent_reply_seconds",
            "Time from an agent taking a chat to its first message there.",
            buckets=(1, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.duration = Histogram(
            "chat_duration_seconds",
            "Time from an agent taking a chat to its end.",
            buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=self.registry,
        )
        self.message_write = Histogram(
            "chat_message_write_seconds",
            "Time to store a message sent into a chat, before it is relayed:"
            " the wait for its commit to reach the disk included.",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "chat_event_loop_lag_seconds",
            "How late a timer fires on the event loop, sampled every"
            f" {LOOP_LAG_INTERVAL_S:g} s: time when no socket is served.",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self._chats = Gauge(
            "chat_chats",
            "Chats in the store, by status.",
            ["status"],
            registry=self.registry,
        )
        self._tracked = Gauge(
            "chat_tracked_entries",
            "Entries kept in memory per chat or person, by kind; for leak checks.",
            ["kind"],
            registry=self.registry,
        )
        self._sockets = Gauge(
            "chat_connected_sockets",
            "Connected Socket.IO clients, by role.",
            ["role"],
            registry=self.registry,
        )
        self._people = Gauge(
            "chat_connected_people",
            "Visitors and agents with at least one connected socket, by role.",
            ["role"],
            registry=self.registry,
        )
        self._queued = Gauge(
            "chat_queue_length", "Chats waiting for an agent.", registry=self.registry
        )
        self._oldest = Gauge(
            "chat_queue_oldest_wait_seconds",
            "Wait of the oldest queued chat; 0 when the queue is empty.",
            registry=self.registry,
        )

    async def collect(self, service: ChatService) -> CollectorRegistry:
        """Refresh the gauges from live state and return the registry."""
        for role in ("visitor", "agent"):
            self._sockets.labels(role).set(service.presence.socket_count(role))
            self._people.labels(role).set(service.presence.person_count(role))
        for kind, count in service.tracked_entries().items():
            self._tracked.labels(kind).set(count)
        counts = await service.store.count_chats_by_status()
        for status in ("queued", "active", "ended", "missed"):
            self._chats.labels(status).set(counts.get(status, 0))
        summary = await service.queue_summary()
        self._queued.set(summary["queued"])
        self._oldest.set(summary["oldest_wait_s"] or 0)
        return self.registry


class LoopLagMonitor:
    """A sampler of how late a timer fires on the running loop, into a histogram.

    A timer fires late by the time that the loop spent in other callbacks
    since it was due, so large samples mean that every socket waited that
    long, whatever it was waiting for.
    """

    def __init__(self, histogram: Histogram, interval_s: float = LOOP_LAG_INTERVAL_S):
        self._histogram = histogram
        self._interval_s = interval_s
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = time.perf_counter() + self._interval_s
        self._handle = loop.call_later(self._interval_s, self._fire, loop, due)

    def _fire(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._histogram.observe(max(0.0, time.perf_counter() - due))
        self._schedule(loop)
