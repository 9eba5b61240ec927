"""Shared presence, grace timers and locks, with two nodes in one test process.

Each `RedisPeople` here stands for one server process; both talk to the real
Redis, under a cluster name of their own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from sio_server.cluster import RedisPeople
from sio_server.config import Settings
from sio_server.presence import Connection, PersonKey, Presence
from tests.cluster import REDIS_URL, delete_redis_keys, require_redis


class Node:
    """One node's RedisPeople, with a record of each callback it made."""

    def __init__(self, settings: Settings) -> None:
        self.expired: list[PersonKey] = []
        self.offline: list[PersonKey] = []
        self.queue_notices = 0
        self.rejoined: list[bool] = []
        self.presence = Presence(self._never)
        self.people = RedisPeople(
            self.presence,
            settings,
            on_expired=self._expired,
            on_gone=self._gone,
            on_queue_changed=self._queue_changed,
            on_rejoined=self._rejoined,
        )

    async def _never(self, key: PersonKey) -> None:
        raise AssertionError("local grace timers are not used in a cluster")

    async def _expired(self, key: PersonKey) -> None:
        self.expired.append(key)

    async def _gone(self, keys: list[PersonKey]) -> None:
        self.offline.extend(keys)

    def _queue_changed(self) -> None:
        self.queue_notices += 1

    async def _rejoined(self, alone: bool) -> None:
        self.rejoined.append(alone)


@pytest.fixture
async def cluster() -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    require_redis()
    name = f"test-{uuid.uuid4().hex[:12]}"
    nodes: list[Node] = []

    async def start(node_id: str, **settings: object) -> Node:
        node = Node(
            replace(
                Settings(
                    redis_url=REDIS_URL,
                    cluster_name=name,
                    node_id=node_id,
                    node_ttl_s=1.0,
                    visitor_grace_s=0.5,
                    agent_grace_s=0.5,
                ),
                **settings,
            )
        )
        await node.people.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        if not node.people.stopped:
            await node.people.stop()
    await delete_redis_keys(REDIS_URL, f"{name}:")


def agent_socket(sid: str, agent_id: str = "a1") -> Connection:
    return Connection(sid, "agent", agent_id, "Alice")


async def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_cluster_first_node_alone(
    cluster: Callable[..., Awaitable[Node]],
) -> None:
    first = await cluster("n1")
    second = await cluster("n2")
    # A third that starts after the first stopped still finds the second.
    await first.people.stop()
    third = await cluster("n3")
    assert (first.rejoined, second.rejoined, third.rejoined) == ([], [], [])
    assert await second.people.shared_state() == "ok"


async def test_presence_two_nodes_one_person(
    cluster: Callable[..., Awaitable[Node]],
) -> None:
    one, two = await cluster("n1"), await cluster("n2")
    assert await one.people.add(agent_socket("s1")) is True
    assert await two.people.add(agent_socket("s2")) is False
    assert await one.people.sockets(("agent", "a1")) == {"s1", "s2"}

    _, last = await one.people.remove("s1")
    assert last is False
    assert await two.people.is_online(("agent", "a1"))
    _, last = await two.people.remove("s2")
    assert last is True
    assert not await one.people.is_online(("agent", "a1"))


async def test_grace_fires_once_in_cluster(
    cluster: Callable[..., Awaitable[Node]],
) -> None:
    nodes = [await cluster(f"n{n}") for n in range(3)]
    for n in range(20):
        await nodes[n % 3].people.start_grace(("visitor", f"v{n}"), 0.2)
    await wait_until(lambda: sum(len(node.expired) for node in nodes) == 20)
    await asyncio.sleep(0.5)
    fired = [key for node in nodes for key in node.expired]
    assert sorted(fired) == sorted(("visitor", f"v{n}") for n in range(20))


async def test_grace_cancelled_by_other_node(
    cluster: Callable[..., Awaitable[Node]],
) -> None:
    one, two = await cluster("n1"), await cluster("n2")
    await one.people.add(agent_socket("s1"))
    _, last = await one.people.remove("s1")
    assert last
    await one.people.start_grace(("agent", "a1"), 0.3)
    await two.people.add(agent_socket("s2"))
    await asyncio.sleep(0.8)
    assert one.expired == two.expired == []


async def test_dead_node_grace_once(
    cluster: Callable[..., Awaitable[Node]],
) -> None:
    dying = await cluster("dying")
    watchers = [await cluster("w1"), await cluster("w2")]
    await dying.people.add(agent_socket("s1", "lonely"))
    await dying.people.add(agent_socket("s2", "shared"))
    await watchers[0].people.add(agent_socket("s3", "shared"))

    # A crash: the loops stop and the heartbeat is left to expire.
    for task in dying.people._loops:
        task.cancel()

    await wait_until(lambda: any(w.offline for w in watchers), timeout_s=5)
    await wait_until(lambda: any(w.expired for w in watchers), timeout_s=5)
    await asyncio.sleep(1.0)
    offline = [key for w in watchers for key in w.offline]
    expired = [key for w in watchers for key in w.expired]
    # The agent who still has a socket on a live node stays online.
    assert offline == [("agent", "lonely")]
    assert expired == [("agent", "lonely")]
    assert await watchers[1].people.sockets(("agent", "shared")) == {"s3"}


async def test_lock_excludes_other_nodes(
    cluster: Callable[..., Awaitable[Node]],
) -> None:
    nodes = [await cluster("n1"), await cluster("n2")]
    inside = 0
    max_inside = 0
    entered = 0

    async def critical(node: Node) -> None:
        nonlocal inside, max_inside, entered
        async with node.people.lock("chat:c1"):
            inside += 1
            max_inside = max(max_inside, inside)
            await asyncio.sleep(0.01)
            inside -= 1
            entered += 1

    await asyncio.gather(*(critical(nodes[n % 2]) for n in range(20)))
    assert max_inside == 1
    assert entered == 20
