"""Cluster mode: several server processes, on one host or many, share Redis.

python-socketio's `AsyncRedisManager` carries emits, room changes and
disconnects between the nodes. `RedisPeople` keeps who is connected where, so
that any node can tell whether a person is online, and a grace period fires
once in the cluster. The keys, each under `CHAT_CLUSTER_NAME` and a colon:

- `person:ROLE:ID`: a set of the person's sids, on every node;
- `node:NODE:sockets`: a hash of one node's sids to `ROLE:ID`;
- `node:NODE:alive`: the node's heartbeat, which expires `CHAT_NODE_TTL_S`
  after the node stops refreshing it;
- `nodes`: the nodes that registered and have not been cleaned up;
- `grace`: a sorted set of `ROLE:ID` by the Unix time its grace period ends;
- `queue`: a pub/sub channel on which a node announces that the queue changed.

A node whose heartbeat expired is cleaned up by the first live node that sees
it: one Lua script removes its sockets and starts the grace period of each
person left with none, so the cleanup happens once however many nodes look.
A due grace period is claimed with ZREM, which only one node wins.

While Redis is unreachable each node keeps serving its own sockets: messages
are stored and reach the people on the same node. When it is back, every node
registers again and drops its sockets; the clients reconnect and fetch what
they missed from the store, as after any drop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from socket import gethostname
from typing import Any, cast

import redis.asyncio as redis
import socketio
from redis.exceptions import LockError, RedisError

from .config import Settings
from .errors import ServerBusy
from .presence import Connection, People, PersonKey, Presence
from .socket_server import ChatManager, OrjsonCodec

logger = logging.getLogger("sio_server.cluster")

# How often a node looks for due grace periods.
GRACE_POLL_S = 0.2
# Pause between attempts to reach Redis again.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 4.0
# How long stopping waits for running expiries and registrations.
STOP_WAIT_S = 5.0
# Redis connections per client. A command waits up to POOL_WAIT_S for a free
# one instead of failing at once, as redis-py's default pool of 100 does.
POOL_SIZE = 256
POOL_WAIT_S = 5.0
# Queue changes within this window go to the other nodes as one notice.
QUEUE_NOTICE_DELAY_S = 0.05
# A lock expires this long after it was taken, in case its node dies holding
# it. A node waits at most LOCK_WAIT_S for a lock and tries every LOCK_POLL_S.
LOCK_TTL_S = 15.0
LOCK_WAIT_S = 10.0
LOCK_POLL_S = 0.005

_ADD = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return redis.call('SCARD', KEYS[1])
"""

_REMOVE = """
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return {removed, redis.call('SCARD', KEYS[1])}
"""

# KEYS: nodes, the node's sockets hash, grace, the node's heartbeat. ARGV:
# node id, key prefix, visitor deadline, agent deadline, and "1" to clean up
# even a node that is not registered or beats again.
_SWEEP = """
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  return {}
end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 and ARGV[5] ~= '1' then
  return {}
end
local entries = redis.call('HGETALL', KEYS[2])
local gone = {}
for i = 1, #entries, 2 do
  local member = entries[i + 1]
  local person = ARGV[2] .. 'person:' .. member
  redis.call('SREM', person, entries[i])
  if redis.call('SCARD', person) == 0 and not gone[member] then
    local role = string.match(member, '^(%a+):')
    local deadline = nil
    if role == 'visitor' then deadline = ARGV[3] end
    if role == 'agent' then deadline = ARGV[4] end
    if deadline then
      redis.call('ZADD', KEYS[3], deadline, member)
      gone[member] = true
    end
  end
end
redis.call('DEL', KEYS[2])
local result = {}
for member, _ in pairs(gone) do table.insert(result, member) end
return result
"""


def _member(key: PersonKey) -> str:
    return f"{key[0]}:{key[1]}"


def _key(member: str) -> PersonKey:
    role, person_id = member.split(":", 1)
    return cast(PersonKey, (role, person_id))


class ChatRedisManager(socketio.AsyncRedisManager, ChatManager):  # type: ignore[misc]
    """python-socketio's Redis manager, with our local emit and a recovery hook.

    After Redis comes back, `on_resubscribed` runs once the channel is
    subscribed again: events published meanwhile are lost to this node.
    """

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(
            url=url,
            channel=channel,
            json=OrjsonCodec,
            redis_options={"socket_connect_timeout": 2, "max_connections": 4096},
        )
        self.on_resubscribed: Callable[[], None] | None = None
        self.listening = True

    # NOTE: `_publish` is python-socketio's hook that sends to Redis. It logs
    # two errors for every event it cannot send. While the subscriber has
    # lost Redis, events are not sent at all, because every node drops its
    # sockets to resync once Redis is back.
    async def _publish(self, data: Any) -> None:
        if self.listening:
            await super()._publish(data)

    # Moves and disconnects of a person's sockets happen here at once, then
    # on the other nodes in the order of the channel. A node that was paused
    # therefore applies them before any event published after them.
    # NOTE: an emit reaches this node's own sockets at once, so it can overtake
    # a move that another node published earlier and this node has not read.

    async def move_in(self, members: Any, room: Any, namespace: str = "/") -> None:
        await super().move_in(members, room, namespace)
        await self._publish_move("enter_room", namespace, members, room)

    async def move_out(self, members: Any, room: Any, namespace: str = "/") -> None:
        await super().move_out(members, room, namespace)
        await self._publish_move("leave_room", namespace, members, room)

    async def disconnect_members(self, members: Any, namespace: str = "/") -> None:
        await super().disconnect_members(members, namespace)
        await self._publish_move("disconnect", namespace, members)

    async def _publish_move(
        self, method: str, namespace: str, members: Any, room: Any = None
    ) -> None:
        # A node without the handlers below, such as one of an older release
        # during an upgrade, has no socket None and ignores the change.
        message = {
            "method": method,
            "sid": None,
            "members": members,
            "namespace": namespace,
            "host_id": self.host_id,
        }
        if room is not None:
            message["room"] = room
        await self._publish(message)

    # NOTE: `_handle_enter_room`, `_handle_leave_room` and `_handle_disconnect`
    # are python-socketio's handlers of changes published by other nodes.
    async def _handle_disconnect(self, message: dict[str, Any]) -> None:
        members = message.get("members")
        if members is None:
            await super()._handle_disconnect(message)
            return
        if not isinstance(members, str):
            logger.warning("ignored a published disconnect of members %r", members)
            return
        # Only this node's sockets: the other nodes read the same message.
        await ChatManager.disconnect_members(
            self, members, message.get("namespace") or "/"
        )

    async def _handle_enter_room(self, message: dict[str, Any]) -> None:
        if message.get("members") is None:
            await super()._handle_enter_room(message)
            return
        self._apply_move(message, enter=True)

    async def _handle_leave_room(self, message: dict[str, Any]) -> None:
        if message.get("members") is None:
            await super()._handle_leave_room(message)
            return
        self._apply_move(message, enter=False)

    def _apply_move(self, message: dict[str, Any], *, enter: bool) -> None:
        members, room = message["members"], message.get("room")
        if not isinstance(members, str) or not isinstance(room, str):
            logger.warning(
                "ignored a published room move of members %r to room %r", members, room
            )
            return
        namespace = message.get("namespace") or "/"
        self.basic_move(namespace, members, room, enter=enter)

    # NOTE: python-socketio's own loop retries with a pause that doubles up to
    # a minute and logs nothing when it succeeds. This copy of it uses a short
    # pause and calls the hook.
    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        pause_s = RETRY_MIN_S
        subscribed = False
        failed = False
        while True:
            try:
                if not subscribed:
                    self._redis_connect()
                    await self.pubsub.subscribe(self.channel)
                    subscribed = True
                    self.listening = True
                    pause_s = RETRY_MIN_S
                    if failed:
                        failed = False
                        logger.warning("Redis is back: fan-out between nodes resumes")
                        if self.on_resubscribed is not None:
                            self.on_resubscribed()
                async for message in self.pubsub.listen():
                    yield message
            except (RedisError, OSError) as exc:
                if not failed:
                    logger.warning(
                        "Redis unreachable, events from other nodes are not"
                        " arriving: %s",
                        exc,
                    )
                subscribed = False
                failed = True
                self.listening = False
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, RETRY_MAX_S)


class RedisPeople(People):
    """Presence and grace timers shared by every node through Redis."""

    def __init__(
        self,
        local: Presence,
        settings: Settings,
        *,
        on_expired: Callable[[PersonKey], Awaitable[None]],
        on_gone: Callable[[list[PersonKey]], Awaitable[None]],
        on_queue_changed: Callable[[], None],
        on_rejoined: Callable[[bool], Awaitable[None]],
        on_returned: Callable[[list[PersonKey]], Awaitable[None]],
    ) -> None:
        super().__init__(local)
        self.node_id = settings.node_id or f"{gethostname()}:{os.getpid()}"
        # from_pool gives the client the pool, so closing one closes both.
        self._redis = redis.Redis.from_pool(
            redis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=POOL_SIZE,
                timeout=POOL_WAIT_S,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=5,
            )
        )
        # A subscriber waits for messages as long as it takes, so its
        # connection has no read timeout.
        self._subscriber = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_keepalive=True,
        )
        self._prefix = f"{settings.cluster_name}:"
        self._nodes_key = f"{self._prefix}nodes"
        # Exists while Redis contains the cluster's state.
        self._epoch_key = f"{self._prefix}epoch"
        self._grace_key = f"{self._prefix}grace"
        self._queue_channel = f"{self._prefix}queue"
        self._ttl_s = settings.node_ttl_s
        self._grace_s = {
            "visitor": settings.visitor_grace_s,
            "agent": settings.agent_grace_s,
        }
        self._on_expired = on_expired
        self._on_gone = on_gone
        self._on_queue_changed = on_queue_changed
        self._on_rejoined = on_rejoined
        self._on_returned = on_returned
        self._add = self._redis.register_script(_ADD)
        self._remove = self._redis.register_script(_REMOVE)
        self._sweep = self._redis.register_script(_SWEEP)
        # Grace periods that started, and sockets that connected, while Redis
        # was unreachable. They go to Redis once it replies again.
        self._pending_grace: dict[PersonKey, float] = {}
        self._unregistered: dict[str, Connection] = {}
        self._reachable = True
        self._rejoining = False
        self._resync_pending = False
        # Whether the Socket.IO channel is subscribed; set by the server.
        self.subscribed: Callable[[], bool] = lambda: True
        self._queue_notice: asyncio.TimerHandle | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopped = False

    def _alive_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}:alive"

    def _sockets_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}:sockets"

    def _person_key(self, key: PersonKey) -> str:
        return f"{self._prefix}person:{_member(key)}"

    # Joining and leaving the cluster

    async def start(self) -> bool:
        alone = await self._register()
        self._loops = [
            asyncio.create_task(self._heartbeat(), name="cluster heartbeat"),
            asyncio.create_task(self._expire_due(), name="cluster grace timers"),
            asyncio.create_task(self._listen_queue(), name="cluster queue notices"),
        ]
        logger.info(
            "node %s joined cluster %s%s",
            self.node_id,
            self._prefix[:-1],
            " as its only node" if alone else "",
        )
        return alone

    async def _register(self) -> bool:
        """Clean up after dead nodes, then announce this one; True if it is alone.

        Alone means that no other node is alive, or that Redis contains no
        cluster state at all: it is new, or it restarted without its data
        and lost every grace period. Either way this node restarts them.
        A lock keeps two nodes that register together from both finding
        themselves alone.
        """
        async with self._redis.lock(
            f"{self._prefix}register", timeout=30, blocking_timeout=30
        ):
            fresh = await self._redis.set(self._epoch_key, self.node_id, nx=True)
            # Sockets a previous process with this node id left behind.
            await self._clean_up(self.node_id, force=True)
            others = []
            for node_id in await self._nodes():
                if node_id == self.node_id:
                    continue
                if await self._redis.exists(self._alive_key(node_id)):
                    others.append(node_id)
                else:
                    await self._clean_up(node_id)
            await self._beat()
        return bool(fresh) or not others

    async def _nodes(self) -> list[str]:
        return [str(node_id) for node_id in await self._redis.smembers(self._nodes_key)]

    async def _beat(self) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._alive_key(self.node_id), "1", px=int(self._ttl_s * 1000))
            pipe.sadd(self._nodes_key, self.node_id)
            await pipe.execute()

    async def _clean_up(self, node_id: str, *, force: bool = False) -> None:
        """Remove a node's sockets; people left with none start their grace."""
        now = time.time()
        gone = await self._sweep(
            keys=[
                self._nodes_key,
                self._sockets_key(node_id),
                self._grace_key,
                self._alive_key(node_id),
            ],
            args=[
                node_id,
                self._prefix,
                now + self._grace_s["visitor"],
                now + self._grace_s["agent"],
                "1" if force else "0",
            ],
        )
        if not gone:
            return
        if node_id != self.node_id:
            logger.warning(
                "node %s stopped: %d people it served start their grace period",
                node_id,
                len(gone),
            )
        await self._on_gone([_key(member) for member in gone])

    async def stop(self) -> None:
        self.stopped = True
        for task in self._loops:
            task.cancel()
        # Grace expiries that are running get a moment to finish; a
        # registration that is still retrying does not.
        pending = {*self._loops, *self._tasks}
        if pending:
            _, unfinished = await asyncio.wait(pending, timeout=STOP_WAIT_S)
            for task in unfinished:
                task.cancel()
            for task in pending:
                with suppress(asyncio.CancelledError, Exception):
                    await task
        if self._queue_notice is not None:
            self._queue_notice.cancel()
        try:
            # Sockets whose disconnect did not reach Redis go the way a dead
            # node's do.
            await self._clean_up(self.node_id, force=True)
            await self._redis.delete(self._alive_key(self.node_id))
        except (RedisError, OSError) as exc:
            logger.warning("could not leave the cluster cleanly: %s", exc)
        await self._redis.aclose()
        await self._subscriber.aclose()
        await super().stop()

    # Sockets

    async def add(self, connection: Connection) -> bool:
        first_here = self.local.add(connection)
        self._pending_grace.pop(connection.key, None)
        try:
            count = await self._register_socket(connection)
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            self._unregistered[connection.sid] = connection
            return first_here
        return count == 1

    async def _register_socket(self, connection: Connection) -> int:
        count = await self._add(
            keys=[
                self._person_key(connection.key),
                self._sockets_key(self.node_id),
                self._grace_key,
            ],
            args=[connection.sid, _member(connection.key)],
        )
        return int(count)

    async def remove(self, sid: str) -> tuple[Connection | None, bool]:
        connection, last_here = self.local.remove(sid)
        if connection is None:
            return None, False
        if self._unregistered.pop(sid, None) is not None:
            return connection, last_here and not await self.is_online(connection.key)
        try:
            removed, count = await self._remove(
                keys=[
                    self._person_key(connection.key),
                    self._sockets_key(self.node_id),
                ],
                args=[sid],
            )
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return connection, last_here
        # A socket a cleanup removed already had its grace period started.
        return connection, bool(removed) and int(count) == 0

    # This node's own sockets always count, also those Redis has not heard of.

    async def sockets(self, key: PersonKey) -> set[str]:
        local = self.local.sockets(key)
        try:
            shared = await self._redis.smembers(self._person_key(key))
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return local
        return local | {str(sid) for sid in shared}

    async def is_online(self, key: PersonKey) -> bool:
        if self.local.is_online(key):
            return True
        try:
            return bool(await self._redis.scard(self._person_key(key)))
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return False

    async def shared_state(self) -> str:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return "unreachable"
        return "ok"

    # Locks

    @asynccontextmanager
    async def lock(self, name: str) -> AsyncIterator[None]:
        """Hold `name` in this process, then in Redis for the whole cluster.

        The local lock comes first, so at most one task per node polls
        Redis for a lock. While Redis is unreachable the local lock alone
        is held, as if this node were alone.
        """
        async with self._locks.hold(name):
            shared = self._redis.lock(
                f"{self._prefix}lock:{name}",
                timeout=LOCK_TTL_S,
                sleep=LOCK_POLL_S,
                blocking_timeout=LOCK_WAIT_S,
            )
            try:
                acquired = await shared.acquire()
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
                yield
                return
            if not acquired:
                logger.warning(
                    "lock %s still held elsewhere after %.0f s", name, LOCK_WAIT_S
                )
                raise ServerBusy(
                    f"{name.split(':')[0]} is busy on another server: retry shortly"
                )
            try:
                yield
            finally:
                try:
                    await shared.release()
                except LockError:
                    logger.warning("lock %s expired before its holder finished", name)
                except (RedisError, OSError) as exc:
                    self._unreachable(exc)

    # Grace periods

    async def start_grace(self, key: PersonKey, seconds: float) -> None:
        deadline = time.time() + seconds
        try:
            await self._redis.zadd(self._grace_key, {_member(key): deadline})
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            self._pending_grace[key] = deadline

    async def cancel_grace(self, key: PersonKey) -> None:
        self._pending_grace.pop(key, None)
        try:
            await self._redis.zrem(self._grace_key, _member(key))
        except (RedisError, OSError) as exc:
            self._unreachable(exc)

    async def _expire_due(self) -> None:
        while True:
            await asyncio.sleep(GRACE_POLL_S)
            try:
                await self._claim_due()
            except (RedisError, OSError) as exc:
                self._unreachable(exc)

    async def _claim_due(self) -> None:
        for sid, connection in list(self._unregistered.items()):
            await self._register_socket(connection)
            if self._unregistered.pop(sid, None) is None:
                # The socket disconnected while it was being registered.
                await self._remove(
                    keys=[
                        self._person_key(connection.key),
                        self._sockets_key(self.node_id),
                    ],
                    args=[sid],
                )
        if self._pending_grace:
            pending = {_member(key): at for key, at in self._pending_grace.items()}
            await self._redis.zadd(self._grace_key, pending)
            self._pending_grace.clear()
        due = await self._redis.zrangebyscore(
            self._grace_key, "-inf", time.time(), start=0, num=100
        )
        for member in map(str, due):
            # Only one node removes it, and that node runs the expiry.
            if await self._redis.zrem(self._grace_key, member):
                self._spawn(self._on_expired(_key(member)))

    # Heartbeat and recovery

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                if self._rejoining:
                    continue
                if not await self._redis.exists(self._alive_key(self.node_id)):
                    # This node stalled and was cleaned up, or Redis lost its
                    # data, so the other nodes no longer know its sockets.
                    self._start_rejoin(resync=False)
                    continue
                await self._beat()
                self._reachable = True
                for node_id in await self._nodes():
                    if node_id != self.node_id and not await self._redis.exists(
                        self._alive_key(node_id)
                    ):
                        await self._clean_up(node_id)
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
            except Exception:
                logger.exception("cluster heartbeat failed")

    def resubscribed(self) -> None:
        """Register again and resynchronise after the Socket.IO channel came back."""
        self._start_rejoin(resync=True)

    def _start_rejoin(self, *, resync: bool) -> None:
        """Register this node again; `resync` when it may have missed events."""
        self._resync_pending |= resync
        if not self._rejoining:
            self._rejoining = True
            self._spawn(self._rejoin())

    async def _rejoin(self) -> None:
        try:
            while True:
                resync = self._resync_pending
                self._resync_pending = False
                alone = await self._register_until_done()
                self._reachable = True
                if resync or alone:
                    await self._resync(alone)
                else:
                    await self._register_local_sockets()
                if not self._resync_pending:
                    return
        finally:
            self._rejoining = False

    async def _register_until_done(self) -> bool:
        pause_s = RETRY_MIN_S
        while True:
            try:
                return await self._register()
            except (RedisError, OSError) as exc:
                logger.warning("registering again with Redis failed: %s", exc)
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, RETRY_MAX_S)

    async def _resync(self, alone: bool) -> None:
        """Drop this node's sockets, once the Socket.IO channel is back.

        Clients that reconnected before the channel is back would miss
        events again.
        """
        waited_s = 0.0
        while not self.subscribed() and waited_s < RETRY_MAX_S * 3:
            await asyncio.sleep(0.1)
            waited_s += 0.1
        logger.warning(
            "node %s registered again: dropping its connections so clients resync",
            self.node_id,
        )
        await self._on_rejoined(alone)

    async def _register_local_sockets(self) -> None:
        """Put this node's sockets back into Redis after another node removed them.

        The subscriber kept its connection, so no event was lost: the
        sockets stay connected and their people's grace periods end.
        """
        returned: set[PersonKey] = set()
        for connection in self.local.connections():
            await self._register_socket(connection)
            if connection.role != "observer":
                returned.add(connection.key)
        logger.warning(
            "node %s registered again after others removed it: %d people back",
            self.node_id,
            len(returned),
        )
        await self._on_returned(sorted(returned))

    def _unreachable(self, exc: BaseException) -> None:
        if self._reachable:
            logger.warning("Redis unreachable, serving this node alone: %s", exc)
        self._reachable = False

    # Queue notices between nodes

    def queue_changed(self) -> None:
        if self._queue_notice is not None:
            return
        loop = asyncio.get_running_loop()
        self._queue_notice = loop.call_later(
            QUEUE_NOTICE_DELAY_S, lambda: self._spawn(self._send_queue_notice())
        )

    async def _send_queue_notice(self) -> None:
        self._queue_notice = None
        try:
            await self._redis.publish(self._queue_channel, self.node_id)
        except (RedisError, OSError) as exc:
            self._unreachable(exc)

    async def _listen_queue(self) -> None:
        pause_s = RETRY_MIN_S
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._queue_channel)
                pause_s = RETRY_MIN_S
                async for message in pubsub.listen():
                    if message.get("data") != self.node_id:
                        self._on_queue_changed()
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, RETRY_MAX_S)
            finally:
                with suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
