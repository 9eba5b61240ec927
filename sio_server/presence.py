"""Connection state: sockets per person, grace timers, and per-chat locks.

`Presence` is one process's state: a person is online while at least one socket
of theirs is connected, and a grace timer starts when the last one goes. `People`
puts the same questions to the whole deployment, which in a cluster spans
several processes (see `cluster.py`).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger("sio_server.presence")

# An observer is an admin's socket that only watches chats: it never makes
# the admin count as connected for matching.
Role = Literal["visitor", "agent", "observer"]
PersonKey = tuple[Role, str]


@dataclass(slots=True)
class Connection:
    """The identity of one socket, fixed at connect from the handshake `auth`."""

    sid: str
    role: Role
    person_id: str
    name: str
    email: str | None = None
    # When the person was first seen; a visitor's row is stored with it.
    created_at: str = ""

    @property
    def key(self) -> PersonKey:
        return (self.role, self.person_id)


class Presence:
    """Track connected sockets per person and run a timer when the last one leaves."""

    def __init__(
        self, on_expired: Callable[[PersonKey], Coroutine[Any, Any, None]]
    ) -> None:
        self._connections: dict[str, Connection] = {}
        self._role_counts: dict[Role, int] = {}
        self._sockets: dict[PersonKey, set[str]] = {}
        self._timers: dict[PersonKey, asyncio.TimerHandle] = {}
        self._on_expired = on_expired
        self._tasks: set[asyncio.Task[None]] = set()

    def connections(self) -> list[Connection]:
        """Return every connected socket's identity (a copy)."""
        return list(self._connections.values())

    def get(self, sid: str) -> Connection | None:
        return self._connections.get(sid)

    def sockets(self, key: PersonKey) -> set[str]:
        """Return the sids of a person's connected sockets (a copy)."""
        return set(self._sockets.get(key, ()))

    def is_online(self, key: PersonKey) -> bool:
        return bool(self._sockets.get(key))

    def socket_count(self, role: Role | None = None) -> int:
        """Count connected sockets, of one role or of all."""
        if role is None:
            return len(self._connections)
        return self._role_counts.get(role, 0)

    def person_count(self, role: Role) -> int:
        return sum(1 for key in self._sockets if key[0] == role)

    def add(self, connection: Connection) -> bool:
        """Register a socket; return True when it is the person's first one."""
        if connection.sid not in self._connections:
            self._role_counts[connection.role] = (
                self._role_counts.get(connection.role, 0) + 1
            )
        self._connections[connection.sid] = connection
        sockets = self._sockets.setdefault(connection.key, set())
        sockets.add(connection.sid)
        self.cancel_grace(connection.key)
        return len(sockets) == 1

    def remove(self, sid: str) -> tuple[Connection | None, bool]:
        """Unregister a socket; the flag is True when the person has no socket left."""
        connection = self._connections.pop(sid, None)
        if connection is None:
            return None, False
        self._role_counts[connection.role] -= 1
        sockets = self._sockets.get(connection.key, set())
        sockets.discard(sid)
        if sockets:
            return connection, False
        self._sockets.pop(connection.key, None)
        return connection, True

    def start_grace(self, key: PersonKey, seconds: float) -> None:
        """Call the expiry callback after `seconds` unless the person reconnects."""
        self.cancel_grace(key)
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(seconds, self._expire, key)
        logger.debug("grace started for %s %s: %.1f s", key[0], key[1], seconds)

    def cancel_grace(self, key: PersonKey) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, key: PersonKey) -> None:
        self._timers.pop(key, None)
        if self.is_online(key):
            return
        task = asyncio.create_task(self._on_expired(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def timer_count(self) -> int:
        return len(self._timers)

    def close(self) -> None:
        """Cancel every pending timer, as on shutdown."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class People(ABC):
    """Who is online across the deployment, and their grace timers.

    `local` contains this process's sockets, which in one process is
    everyone. In a cluster the implementation also tracks the other nodes'
    sockets. A person with tabs on two nodes is then one person, and a grace
    period fires once, on one node.
    """

    def __init__(self, local: Presence) -> None:
        self.local = local
        self._locks = KeyedLocks()

    async def start(self) -> bool:
        """Begin; True when no other node is running, as after a full restart."""
        return True

    async def stop(self) -> None:
        self.local.close()

    @abstractmethod
    async def add(self, connection: Connection) -> bool:
        """Register a socket; True when it is the person's first one anywhere."""

    @abstractmethod
    async def remove(self, sid: str) -> tuple[Connection | None, bool]:
        """Unregister a local socket; True when the person has none left anywhere."""

    @abstractmethod
    async def sockets(self, key: PersonKey) -> set[str]:
        """Return the sids of a person's sockets on every node."""

    @abstractmethod
    async def is_online(self, key: PersonKey) -> bool: ...

    @abstractmethod
    async def start_grace(self, key: PersonKey, seconds: float) -> None:
        """Run the expiry callback, once, after `seconds` unless the person returns."""

    @abstractmethod
    async def cancel_grace(self, key: PersonKey) -> None: ...

    async def shared_state(self) -> str | None:
        """Say whether the state shared between nodes is reachable: None alone."""
        return None

    def lock(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold the lock `name` (a chat's or a person's) on every node."""
        return self._locks.hold(name)

    def lock_count(self) -> int:
        """Count the locks held or awaited in this process."""
        return len(self._locks)

    @abstractmethod
    def queue_changed(self) -> None:
        """Tell the other nodes that the queue changed."""

    def timer_count(self) -> int:
        """Count the grace timers held in this process's memory."""
        return self.local.timer_count()


class LocalPeople(People):
    """Everyone is on this process: presence and timers are in memory."""

    async def add(self, connection: Connection) -> bool:
        return self.local.add(connection)

    async def remove(self, sid: str) -> tuple[Connection | None, bool]:
        return self.local.remove(sid)

    async def sockets(self, key: PersonKey) -> set[str]:
        return self.local.sockets(key)

    async def is_online(self, key: PersonKey) -> bool:
        return self.local.is_online(key)

    async def start_grace(self, key: PersonKey, seconds: float) -> None:
        self.local.start_grace(key, seconds)

    async def cancel_grace(self, key: PersonKey) -> None:
        self.local.cancel_grace(key)

    def queue_changed(self) -> None:
        """Do nothing: there are no other nodes."""


class KeyedLocks:
    """One FIFO asyncio lock per key, removed once no task uses or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class CoalescedRunner:
    """Run an async job on request, never twice at once.

    Requests that arrive while the job runs make it run once more afterwards, so
    a burst of requests costs at most two runs. With `min_interval_s`, runs
    also start at least that far apart.
    """

    def __init__(
        self,
        name: str,
        job: Callable[[], Awaitable[None]],
        min_interval_s: float = 0.0,
    ) -> None:
        self._name = name
        self._job = job
        self._min_interval_s = min_interval_s
        self._last_start = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            self._again = False
            loop = asyncio.get_running_loop()
            wait_s = self._last_start + self._min_interval_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            self._last_start = loop.time()
            try:
                await self._job()
            except Exception:
                logger.exception("%s failed", self._name)
            if not self._again:
                return

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
