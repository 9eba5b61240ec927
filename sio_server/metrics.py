"""Prometheus counters updated by the service, and gauges read at scrape time."""

from __future__ import annotations

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
