"""Chat operations: queueing, matching, messages, ending, grace expiry.

Event handlers call these methods with the caller's `Connection` and a parsed
payload, and return what the methods return as the `ok` reply. Everything that
touches one chat runs under that chat's lock, taken before the first await that
can suspend, so messages get their seq in arrival order and are delivered in
that order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import socketio

from . import schemas
from .auth import TokenSigner, hash_password, verify_password_async
from .config import Settings
from .errors import (
    Forbidden,
    InvalidPayload,
    NotFound,
    RateLimited,
    ServerClosing,
    Unauthorized,
    WrongState,
)
from .estimate import WINDOW, WaitEstimator
from .mail import LogMailer, Mailer
from .metrics import Metrics
from .models import (
    Agent,
    AgentChanges,
    Chat,
    Message,
    Sender,
    SenderRole,
    Visitor,
    default_visitor_name,
    format_time,
    new_id,
    parse_time,
    utc_now,
)
from .presence import (
    CoalescedRunner,
    Connection,
    LocalPeople,
    People,
    PersonKey,
    Presence,
)
from .ratelimit import Limit, RateLimiter
from .socket_server import ChatManager
from .store import Store

logger = logging.getLogger("sio_server.chats")

AGENTS_ROOM = "agents"
# `queue_changed` goes to agents at most this often, because the protocol
# allows it at most a few times a second.
QUEUE_CHANGED_INTERVAL_S = 0.25
# With many agents connected, `queue_changed` goes out less often, so that it
# costs at most about this many frames a second: at 4 a second, 5,000 agent
# sockets took a quarter of the process's time in the benchmark's storm.
QUEUE_CHANGED_MAX_FRAMES_PER_S = 2000
# Position updates to visitors go out at most this often. Each run reads the
# whole queue, so a burst of joins costs one run per interval, not one per join.
QUEUE_UPDATE_INTERVAL_S = 0.2
# How long the count of agents online may be reused for sessions and queue
# replies; agent changes in this process clear it at once.
AGENTS_ONLINE_CACHE_S = 1.0
# Suggested wait before a client retries a connection refused for a full
# server or too many sockets, and a join refused for a full queue.
RETRY_FULL_S = 10
# `chat_started` carries the first messages of the chat, at most this many;
# when `has_more` is true, clients fetch the rest with `history`.
STARTED_MESSAGES_LIMIT = 500


CHAT_ROOM_PREFIX = "chat:"


def chat_room(chat_id: str) -> str:
    return f"{CHAT_ROOM_PREFIX}{chat_id}"


def person_room(role: str, person_id: str) -> str:
    return f"{role}:{person_id}"


def reply(**fields: Any) -> dict[str, Any]:
    """Build an `ok: true` reply."""
    return {"ok": True, **fields}


class ChatService:
    """The chat server's behaviour, independent of how events arrive."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        store: Store,
        signer: TokenSigner,
        settings: Settings,
        metrics: Metrics,
        mailer: Mailer | None = None,
    ) -> None:
        if not isinstance(sio.manager, ChatManager):
            raise TypeError(
                "the Socket.IO server's client manager must be a ChatManager"
            )
        self.sio = sio
        # Moves a person's sockets in and out of rooms, on every node.
        self.manager: ChatManager = sio.manager
        self.store = store
        self.signer = signer
        self.settings = settings
        self.metrics = metrics
        self.mailer = mailer or LogMailer()
        self.estimator = WaitEstimator()
        self.limiter = RateLimiter(metrics)
        self.connect_limit = Limit(
            "connect_per_ip",
            settings.limit_connect_per_ip,
            "new connections from this address",
        )
        self.event_limit = Limit(
            "events_per_socket",
            settings.limit_events_per_socket,
            "events on this connection",
        )
        self.message_limit = Limit(
            "messages_per_visitor", settings.limit_messages_per_visitor, "messages"
        )
        self.login_account_limit = Limit(
            "login_per_account",
            settings.limit_login_per_account,
            "login attempts for this account",
        )
        self.login_ip_limit = Limit(
            "login_per_ip",
            settings.limit_login_per_ip,
            "login attempts from this address",
        )
        self._departments = [item.to_wire() for item in settings.departments]
        self.presence = Presence(self._on_grace_expired)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False
        self._matcher = CoalescedRunner("matchmaker", self._match)
        self._queue_notifier = CoalescedRunner(
            "queue updates", self._send_queue_updates, QUEUE_UPDATE_INTERVAL_S
        )
        self._sent_positions: dict[str, tuple[int, int, float | None]] = {}
        self._timers: asyncio.Task[None] | None = None
        # Chats whose agent has not written yet, with the time it took them,
        # for the first-reply histogram. In a cluster the agent may write
        # through another node, so an entry goes at the latest when the chat
        # ends, whichever node ends it.
        self._awaiting_reply: dict[str, float] = {}
        self.manager.on_room_closed = self._room_closed
        # Events for sockets whose CONNECT packet has not gone out yet.
        self._after_connect: dict[str, list[tuple[str, Any]]] = {}
        self._availability_cache: tuple[tuple[int, int], float] | None = None
        # Raised at every local change of agents, so that a read that started
        # before the change does not put its stale result into the cache.
        self._availability_version = 0
        self._agents_notice: asyncio.TimerHandle | None = None
        self._agents_notice_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.people: People = self._create_people()

    # Start and stop

    def _create_people(self) -> People:
        if not self.settings.redis_url:
            return LocalPeople(self.presence)
        from .cluster import ChatRedisManager, RedisPeople

        people = RedisPeople(
            self.presence,
            self.settings,
            on_expired=self._on_grace_expired,
            on_gone=self._went_offline,
            on_queue_changed=self._queue_notifier.request,
            on_rejoined=self._rejoined,
            on_returned=self._came_back,
        )
        if isinstance(self.sio.manager, ChatRedisManager):
            manager = self.sio.manager
            manager.on_resubscribed = people.resubscribed
            people.subscribed = lambda: bool(manager.listening)
        return people

    async def start(self) -> None:
        """Join the deployment; after a full restart, start everyone's grace period."""
        if await self.people.start():
            await self._restart_grace()
        timings = await self.store.recent_timings(WINDOW)
        self.estimator = WaitEstimator(timings.waits, timings.durations)
        if (
            self.settings.queue_timeout_s
            or self.settings.agent_reply_timeout_s
            or self.settings.visitor_idle_timeout_s
        ):
            self._timers = asyncio.create_task(self._run_timers())

    async def _restart_grace(self) -> None:
        """Give everyone who had open chats before a restart a grace period.

        Runs when no server was up, so no one is connected whatever the store
        records, and each person's timer starts now.
        """
        await self.store.reset_connections()
        visitors, agents = await self.store.people_with_open_state()
        for visitor_id in visitors:
            await self.people.start_grace(
                ("visitor", visitor_id), self.settings.visitor_grace_s
            )
        for agent_id in agents:
            await self.people.start_grace(
                ("agent", agent_id), self.settings.agent_grace_s
            )
        logger.info(
            "started: %d visitor(s) and %d agent(s) have a grace period to reconnect",
            len(visitors),
            len(agents),
        )

    async def _rejoined(self, alone: bool) -> None:
        """Recover after the cluster's Redis came back.

        Events published while it was away never reached the other nodes, so
        every socket here is dropped: the clients reconnect, to any node, and
        catch up from the store as after any drop.
        """
        if alone:
            await self._restart_grace()
        await self.drop_connections()
        self._agents_changed()
        self._queue_notifier.request()

    async def _came_back(self, keys: list[PersonKey]) -> None:
        """Restore people whom another node took for gone while this one stalled.

        Their agents are connected again for matching. Chats that left them
        meanwhile need nothing here: the room changes and `chat_removed`
        reached this node through Redis, in order, before any event that
        other nodes sent to those chats afterwards.
        """
        for role, agent_id in keys:
            if role == "agent":
                await self.store.set_agent_connected(agent_id, True)
        self._agents_changed()
        self._matcher.request()
        self._queue_moved()

    async def drop_connections(self) -> int:
        """Drop every socket of this process as a network failure would.

        No Engine.IO CLOSE packet goes out: python-socketio clients do not
        reconnect after a CLOSE, while every stock client reconnects after a
        drop.
        """
        sockets = list(self.sio.eio.sockets.values())
        for socket in sockets:
            await _drop_socket(socket)
        return len(sockets)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count an event handler as running; reject it once shutdown began."""
        if self.closing:
            raise ServerClosing("the server is restarting: retry after reconnecting")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> None:
        """Reject new events and wait for running handlers, at most `timeout_s`."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            logger.warning(
                "shutdown: %d event handlers still running after %.1f s",
                self._in_flight,
                timeout_s,
            )

    async def stop(self) -> None:
        if self._timers is not None:
            self._timers.cancel()
        await self.people.stop()
        if self._agents_notice is not None:
            self._agents_notice.cancel()
        await self._matcher.cancel()
        await self._queue_notifier.cancel()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Connections

    def admit(self, client_ip: str) -> None:
        """Raise `RateLimited` when a connection from `client_ip` is over a limit."""
        if self.presence.socket_count() >= self.settings.max_connections:
            self.metrics.rate_limited.labels("max_connections").inc()
            logger.warning(
                "connection from %s rejected: %d connections is the limit",
                client_ip,
                self.settings.max_connections,
            )
            raise RateLimited(
                "the server is at its connection limit: retry shortly", RETRY_FULL_S
            )
        self.limiter.check(self.connect_limit, client_ip)

    async def _check_sockets(self, key: PersonKey, limit: int) -> None:
        if len(await self.people.sockets(key)) < limit:
            return
        role, person_id = key
        self.metrics.rate_limited.labels(f"sockets_per_{role}").inc()
        logger.warning(
            "connection of %s=%s rejected: %d sockets is the limit",
            role,
            person_id,
            limit,
        )
        raise RateLimited(
            f"this {role} has {limit} connections open, the most allowed:"
            " close a tab or window",
            RETRY_FULL_S,
        )

    async def connect_visitor(self, sid: str, auth: schemas.VisitorAuth) -> Connection:
        """Admit a visitor socket, creating the visitor when the auth has no token."""
        # A visitor is stored only when it first joins the queue, so a connect
        # costs no write: most page views never open a chat.
        if auth.token:
            claims = self.signer.verify(auth.token, "visitor")
            stored = await self.store.get_visitor(claims.subject)
            if stored is not None and (auth.name is not None or auth.email is not None):
                stored = await self.store.update_visitor(
                    stored.id, auth.name, auth.email
                )
            visitor = stored or _new_visitor(claims.subject, auth)
            known = stored is not None
        else:
            known = False
            visitor = _new_visitor(new_id(), auth)
            logger.info("visitor %s new", visitor.id)

        await self._check_sockets(
            ("visitor", visitor.id), self.settings.max_sockets_per_visitor
        )
        connection = Connection(
            sid,
            "visitor",
            visitor.id,
            visitor.name,
            email=visitor.email,
            created_at=visitor.created_at,
        )
        await self.people.add(connection)
        await self.sio.enter_room(sid, person_room("visitor", visitor.id))

        # A visitor is stored when it first joins, so one not in the store has
        # no chat. A grace expiry that is ending the chat right now finishes
        # first, so the session never shows a chat that has just ended.
        chat = None
        if known:
            async with self.people.lock(f"visitor:{visitor.id}"):
                chat = await self.store.open_chat_of_visitor(visitor.id)
                if chat is not None:
                    await self.sio.enter_room(sid, chat_room(chat.id))
        if chat is not None and chat.status == "queued":
            # Send the position again to the new socket.
            self._sent_positions.pop(chat.id, None)
            self._queue_notifier.request()

        token = self.signer.issue("visitor", visitor.id)
        session = {
            "role": "visitor",
            "visitor_id": visitor.id,
            "name": visitor.name,
            "token": token,
            "chat": chat.to_wire() if chat else None,
            "agents_online": await self._agents_online(),
            "departments": self._departments,
        }
        self._after_connect[sid] = [("session", session)]
        logger.info("connect sid=%s visitor=%s", sid, visitor.id)
        return connection

    async def authenticate_agent(self, token: str) -> Agent:
        """Return the agent of a valid access token, or raise `Unauthorized`.

        The token must name an agent who exists and is not disabled, and must
        be newer than the agent's last password change.
        """
        claims = self.signer.verify(token, "agent")
        agent = await self.store.get_agent(claims.subject)
        if agent is None:
            raise Unauthorized("agent token names an unknown agent")
        if agent.disabled:
            raise Unauthorized("this agent account is disabled: ask an admin")
        if claims.version != agent.token_version:
            raise Unauthorized(
                "the password changed since this token was issued: sign in again"
            )
        return agent

    async def _mark_connected(self, agent: Agent, token: str) -> Agent:
        """Record that `agent` is connected, if its token is still valid.

        An offline agent comes back away. A sign-out or password change since
        `authenticate_agent` raises `Unauthorized` as it would.
        """
        updated = await self.store.agent_connected(agent.id, agent.token_version)
        if updated is None:
            # Raises with the reason the token is no longer valid.
            await self.authenticate_agent(token)
            raise Unauthorized("this agent token is no longer valid: sign in again")
        return updated

    async def admin_ui_login(self, client_auth: Any) -> bool:
        """Check the Admin UI's `{"username", "password"}` against admin accounts."""
        if not isinstance(client_auth, dict):
            return False
        email, password = client_auth.get("username"), client_auth.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            return False
        try:
            self.limiter.check(self.login_account_limit, email.lower())
        except RateLimited:
            return False
        agent = await self.store.get_agent_by_email(email)
        password_hash = agent.password_hash if agent else None
        valid = await verify_password_async(password_hash, password)
        if not valid or agent is None or not agent.is_admin or agent.disabled:
            logger.warning("Admin UI login rejected for an account")
            return False
        logger.info("Admin UI login agent=%s", agent.id)
        return True

    def issue_agent_token(self, agent: Agent) -> str:
        return self.signer.issue("agent", agent.id, agent.token_version)

    async def connect_agent(self, sid: str, auth: schemas.AgentAuth) -> Connection:
        """Admit an agent socket carrying a valid access token."""
        agent = await self.authenticate_agent(auth.token)
        if auth.observer:
            return await self._connect_observer(sid, agent, auth.token)

        await self._check_sockets(
            ("agent", agent.id), self.settings.max_sockets_per_agent
        )
        connection = Connection(sid, "agent", agent.id, agent.name)
        first = await self.people.add(connection)
        await self.sio.enter_room(sid, person_room("agent", agent.id))
        await self.sio.enter_room(sid, AGENTS_ROOM)

        # A grace expiry that is requeueing this agent's chats finishes first;
        # the agent then comes back away, with no chats.
        async with self.people.lock(f"agent:{agent.id}"):
            # The token is checked again in the same write, now that the
            # socket is in the agent's room: a sign-out from here on reaches
            # the socket, and one before it is seen here.
            agent = await self._mark_connected(agent, auth.token)
            if first and agent.status == "ready":
                # Only ready agents count as available.
                self._agents_changed()
            chats = await self.store.active_chats_of_agent(agent.id)
            for chat in chats:
                await self.sio.enter_room(sid, chat_room(chat.id))

        session = {
            "role": "agent",
            "agent_id": agent.id,
            "name": agent.name,
            "is_admin": agent.is_admin,
            "status": agent.status,
            "max_chats": agent.max_chats,
            "chats": [chat.to_wire() for chat in chats],
            "departments": self._departments,
            "serving": list(agent.departments)
            if agent.departments is not None
            else None,
        }
        queue = await self.queue_summary()
        self._after_connect[sid] = [("session", session), ("queue_changed", queue)]
        if first and agent.status == "ready":
            # An agent who comes back can take waiting chats again.
            self._matcher.request()
            self._queue_moved()
        logger.info("connect sid=%s agent=%s status=%s", sid, agent.id, agent.status)
        return connection

    async def _connect_observer(self, sid: str, agent: Agent, token: str) -> Connection:
        """Admit an admin's socket that only watches chats.

        It is not the agent being online: it takes no part in matching,
        presence or grace periods.
        """
        if not agent.is_admin:
            raise Forbidden("observer sockets are for admins only")
        await self._check_sockets(
            ("observer", agent.id), self.settings.max_sockets_per_agent
        )
        connection = Connection(sid, "observer", agent.id, agent.name)
        await self.people.add(connection)
        await self.sio.enter_room(sid, person_room("observer", agent.id))
        # Checked again, as for an agent socket.
        await self.authenticate_agent(token)
        session = {"role": "observer", "agent_id": agent.id, "name": agent.name}
        self._after_connect[sid] = [("session", session)]
        logger.info("connect sid=%s observer=%s", sid, agent.id)
        return connection

    async def flush_after_connect(self, sid: str) -> None:
        """Send the events a connect handler left for after the CONNECT packet.

        python-socketio sends CONNECT once the connect handler has returned,
        so events emitted inside the handler would reach the client first.
        """
        for event, data in self._after_connect.pop(sid, ()):
            await self.sio.emit(event, data, to=sid, ignore_queue=True)

    async def _availability(self) -> tuple[int, int]:
        """Return agents ready and connected, and their `max_chats` summed.

        Both are cached for a moment: changes made by this process clear the
        cache at once, and the lifetime bounds how stale a change made
        elsewhere can look.
        """
        now = time.monotonic()
        cached = self._availability_cache
        if cached is not None and now < cached[1]:
            return cached[0]
        version = self._availability_version
        availability = await self.store.available_agents()
        if version == self._availability_version:
            self._availability_cache = (availability, now + AGENTS_ONLINE_CACHE_S)
        return availability

    async def _agents_online(self) -> int:
        return (await self._availability())[0]

    async def _open_capacity(self) -> int:
        return (await self._availability())[1]

    def _agents_changed(self) -> None:
        self._availability_cache = None
        self._availability_version += 1

    def _queue_moved(self) -> None:
        """Send queue positions and counts again, on every node."""
        self._queue_notifier.request()
        self.people.queue_changed()

    async def disconnect(self, sid: str, reason: str) -> None:
        """Forget a socket and start the person's grace period if it was the last."""
        self._after_connect.pop(sid, None)
        connection, last = await self.people.remove(sid)
        if connection is None:
            return
        logger.info(
            "disconnect sid=%s %s=%s reason=%s",
            sid,
            connection.role,
            connection.person_id,
            reason,
        )
        if not last or connection.role == "observer":
            return
        if connection.role == "visitor":
            await self.people.start_grace(connection.key, self.settings.visitor_grace_s)
            return
        await self.people.start_grace(connection.key, self.settings.agent_grace_s)
        await self._went_offline([connection.key])

    async def _went_offline(self, keys: list[PersonKey]) -> None:
        """Record that agents have no socket left, here or on a node that died."""
        agents = [person_id for role, person_id in keys if role == "agent"]
        for agent_id in agents:
            await self.store.set_agent_connected(agent_id, False)
            # The agent may have come back on another node meanwhile.
            if await self.people.is_online(("agent", agent_id)):
                await self.store.set_agent_connected(agent_id, True)
        if agents:
            self._agents_changed()
            self._queue_moved()

    # Visitor events

    async def join_queue(
        self, connection: Connection, payload: schemas.JoinQueue
    ) -> dict[str, Any]:
        require_role(connection, "visitor", "join_queue")
        self._check_department(payload.department)
        if payload.message is not None:
            self.limiter.check(self.message_limit, connection.person_id)
        if (
            await self.store.count_queued() >= self.settings.max_queue
            and await self.store.open_chat_of_visitor(connection.person_id) is None
        ):
            self.metrics.rate_limited.labels("max_queue").inc()
            logger.warning(
                "join of visitor=%s rejected: the queue is full", connection.person_id
            )
            raise RateLimited(
                "the queue is full: leave a message or retry later", RETRY_FULL_S
            )

        # Without a client_id, the text itself identifies the message, so a
        # retried join stores it once and a join with new text adds it.
        client_id = payload.client_id
        if client_id is None and payload.message is not None:
            client_id = _text_client_id("join", payload.message)
        first_message = None
        if payload.message is not None and client_id is not None:
            first_message = (payload.message, client_id)
        chat, created = await self.store.open_chat(
            _visitor_of(connection),
            department=payload.department,
            metadata=payload.metadata,
            first_message=first_message,
        )

        await self.manager.move_in(person_room(*connection.key), chat_room(chat.id))

        message = None
        if created:
            logger.info("queued chat=%s visitor=%s", chat.id, connection.person_id)
            self.metrics.chat_events.labels("queued").inc()
            if payload.message is not None:
                self.metrics.messages.labels("visitor").inc()
                stored, _ = await self.store.list_messages(chat.id, limit=1)
                message = stored[0]
            self._matcher.request()
        elif payload.message is not None and client_id is not None:
            # An open chat exists: the text goes into it instead of being lost.
            message = await self._post_message(
                connection, chat.id, payload.message, client_id
            )

        if not created:
            # Resend the position to every tab. A new chat is skipped, because a
            # running update may have sent its position already.
            self._sent_positions.pop(chat.id, None)
        self._queue_moved()
        position = await self._position(chat)
        agents_online = await self._agents_online()
        return reply(
            chat=chat.to_wire(),
            position=position,
            estimated_wait_s=await self._estimate(position),
            agents_online=agents_online,
            message=message.to_wire() if message else None,
        )

    async def _position(self, chat: Chat) -> int:
        if chat.status != "queued":
            return 0
        return await self.store.queue_position(chat.id)

    async def _estimate(
        self, position: int, capacity: int | None = None
    ) -> float | None:
        if position < 1:
            return None
        if capacity is None:
            capacity = await self._open_capacity()
        return self.estimator.estimate(position, capacity)

    def _check_department(self, department: str | None) -> None:
        if department is None or department in self.settings.department_ids:
            return
        if not self.settings.departments:
            raise InvalidPayload(
                f"department {department!r} is unknown: this server has one"
                " general queue, so leave department out"
            )
        known = ", ".join(sorted(self.settings.department_ids))
        raise InvalidPayload(
            f"department {department!r} is unknown: use one of {known}"
        )

    async def leave_message(
        self, connection: Connection, payload: schemas.LeaveMessage
    ) -> dict[str, Any]:
        """Store a message for agents to reply to later, with the visitor's email."""
        require_role(connection, "visitor", "leave_message")
        self._check_department(payload.department)
        self.limiter.check(self.message_limit, connection.person_id)
        client_id = payload.client_id or _text_client_id("leave", payload.text)
        if payload.name is not None:
            connection.name = payload.name
        connection.email = payload.email
        async with self.people.lock(f"visitor:{connection.person_id}"):
            chat = await self.store.leave_message(
                _visitor_of(connection),
                department=payload.department,
                text=payload.text,
                client_id=client_id,
            )
        self.metrics.chat_events.labels("missed").inc()
        logger.info("left message chat=%s visitor=%s", chat.id, connection.person_id)
        self._sent_positions.pop(chat.id, None)
        self._queue_moved()
        return reply(chat=chat.to_wire())

    async def rate_chat(
        self, connection: Connection, payload: schemas.RateChat
    ) -> dict[str, Any]:
        require_role(connection, "visitor", "rate_chat")
        chat = await self.store.rate_chat(
            payload.chat_id, connection.person_id, payload.score, payload.comment
        )
        rating = chat.rating_to_wire()
        logger.info("rated chat=%s score=%d", chat.id, payload.score)
        self.metrics.chat_events.labels("rated").inc()
        if chat.agent_id is not None:
            await self.sio.emit(
                "chat_rated",
                {"chat_id": chat.id, "rating": rating},
                room=person_room("agent", chat.agent_id),
            )
        return reply(rating=rating)

    # Agent events

    async def agent_ready(
        self, connection: Connection, payload: schemas.AgentReady
    ) -> dict[str, Any]:
        require_role(connection, "agent", "agent_ready")
        for department in payload.departments or ():
            self._check_department(department)
        serving = (
            tuple(dict.fromkeys(payload.departments)) if payload.departments else None
        )
        agent = await self.store.set_agent_ready(
            connection.person_id, payload.max_chats, serving
        )
        self._agents_changed()
        chats = await self.store.active_chats_of_agent(agent.id)
        logger.info(
            "agent=%s ready max_chats=%d serving=%s",
            agent.id,
            agent.max_chats,
            ",".join(serving) if serving else "all",
        )
        self._matcher.request()
        self._queue_moved()
        return reply(
            status="ready",
            max_chats=agent.max_chats,
            serving=list(serving) if serving else None,
            chats=[chat.to_wire() for chat in chats],
        )

    # Team administration

    async def create_agent(
        self, actor: Agent, email: str, name: str, password: str, is_admin: bool
    ) -> Agent:
        """Add an agent account on behalf of the admin `actor`."""
        password_hash = await asyncio.to_thread(hash_password, password)
        agent = await self.store.create_agent(
            email, name, password_hash, is_admin=is_admin, actor_id=actor.id
        )
        logger.info("admin=%s created agent=%s", actor.id, agent.id)
        return agent

    async def update_agent(
        self, actor: Agent, agent_id: str, changes: AgentChanges
    ) -> Agent:
        """Apply an admin's changes; a disabled agent is signed out at once."""
        for department in changes.departments or ():
            self._check_department(department)
        if agent_id == actor.id and (changes.disabled or changes.is_admin is False):
            raise WrongState(
                "admins cannot disable themselves or drop their own admin role:"
                " ask another admin"
            )
        agent = await self.store.update_agent(agent_id, changes, actor.id)
        self._agents_changed()
        logger.info(
            "admin=%s changed agent=%s: %s",
            actor.id,
            agent.id,
            ",".join(sorted(changes.to_details())),
        )
        if changes.disabled:
            await self._sign_out(agent.id, "disabled")
            # The chats go back to the queue now, not after a grace period.
            await self.people.cancel_grace(("agent", agent.id))
            await self._agent_left(agent.id, signed_out=True)
        else:
            await self.sio.emit(
                "agent_updated", agent.to_wire(), room=person_room("agent", agent.id)
            )
        self._matcher.request()
        self._queue_moved()
        return agent

    async def set_password(self, actor: Agent, agent_id: str, password: str) -> Agent:
        """Replace an agent's password and sign out every session it had."""
        password_hash = await asyncio.to_thread(hash_password, password)
        agent = await self.store.set_password(agent_id, password_hash, actor.id)
        logger.info("agent=%s password changed by agent=%s", agent.id, actor.id)
        await self._sign_out(agent.id, "password_changed")
        return agent

    async def _sign_out(self, agent_id: str, reason: str) -> None:
        """Tell an agent's sockets why, then disconnect them; their tokens are void."""
        for role in ("agent", "observer"):
            room = person_room(role, agent_id)
            await self.sio.emit("signed_out", {"reason": reason}, room=room)
            await self.manager.disconnect_members(room)
        logger.info("signed out agent=%s reason=%s", agent_id, reason)

    async def overview(self) -> dict[str, Any]:
        """Return the live queue, every agent with its load, and the active chats."""
        now = datetime.now(UTC)
        queued = await self.store.list_chats(
            status="queued", limit=self.settings.max_queue
        )
        names = {chat.id: chat.visitor_name for chat in queued}
        queue = []
        for position, entry in enumerate(await self.store.queue_entries(), start=1):
            waited = (now - parse_time(entry.queued_at)).total_seconds()
            queue.append(
                {
                    "chat_id": entry.chat_id,
                    "visitor_id": entry.visitor_id,
                    "visitor_name": names.get(entry.chat_id),
                    "department": entry.department,
                    "position": position,
                    "waited_s": round(waited, 1),
                }
            )
        agents = [
            {**item.agent.to_wire(), "online": item.connected, "load": item.load}
            for item in await self.store.list_agent_loads()
        ]
        chats = await self.store.list_chats(status="active", limit=500)
        return {
            "queue": queue,
            "agents": agents,
            "chats": [chat.to_wire() for chat in chats],
        }

    async def watch_chat(
        self, connection: Connection, payload: schemas.WatchChat
    ) -> dict[str, Any]:
        """Let an admin's socket follow a chat read-only, from its history on."""
        await self._require_admin(connection, "watch_chat")
        chat = await self.store.get_chat(payload.chat_id)
        if chat is None:
            raise NotFound(f"chat {payload.chat_id!r} not found")
        if not chat.closed:
            await self.sio.enter_room(connection.sid, chat_room(chat.id))
        messages, has_more = await self.store.list_messages(
            chat.id, limit=STARTED_MESSAGES_LIMIT
        )
        notes = await self.store.list_notes(chat.id)
        logger.info("admin=%s watches chat=%s", connection.person_id, chat.id)
        return reply(
            chat=chat.to_wire(),
            messages=[message.to_wire() for message in messages],
            has_more=has_more,
            notes=[note.to_wire() for note in notes],
        )

    async def unwatch_chat(
        self, connection: Connection, payload: schemas.WatchChat
    ) -> dict[str, Any]:
        await self._require_admin(connection, "unwatch_chat")
        chat = await self.store.get_chat(payload.chat_id)
        if chat is not None and chat.agent_id != connection.person_id:
            await self.sio.leave_room(connection.sid, chat_room(chat.id))
        return reply()

    async def _require_admin(self, connection: Connection, event: str) -> None:
        if connection.role == "visitor":
            raise Forbidden(f"{event} is for admins only")
        agent = await self.store.get_agent(connection.person_id)
        if agent is None or not agent.is_admin:
            raise Forbidden(f"{event} is for admins only")

    async def agent_away(
        self, connection: Connection, payload: schemas.AgentAway
    ) -> dict[str, Any]:
        require_role(connection, "agent", "agent_away")
        await self.store.set_agent_status(connection.person_id, "away")
        self._agents_changed()
        logger.info("agent=%s away", connection.person_id)
        self._queue_moved()
        return reply(status="away")

    async def transfer_chat(
        self, connection: Connection, payload: schemas.TransferChat
    ) -> dict[str, Any]:
        """Hand an active chat to another agent, or back to a department's queue."""
        require_role(connection, "agent", "transfer_chat")
        # `"department": null` names the general queue, so an explicit null
        # counts as given.
        to_queue = "department" in payload.model_fields_set
        if (payload.agent_id is not None) == to_queue:
            raise InvalidPayload(
                "give exactly one of agent_id and department (null for the"
                " general queue)"
            )
        self._check_department(payload.department)

        old_agent = connection.person_id
        agents = {old_agent} | ({payload.agent_id} if payload.agent_id else set())
        people = sorted(f"agent:{agent_id}" for agent_id in agents)
        async with (
            self.people.lock(f"chat:{payload.chat_id}"),
            AsyncExitStack() as stack,
        ):
            # Hold both agents' connects back, so a socket that connects right
            # now enters the rooms of the chats it has after the transfer.
            for person in people:
                await stack.enter_async_context(self.people.lock(person))
            if payload.agent_id is not None:
                chat = await self.store.transfer_to_agent(
                    payload.chat_id, old_agent, payload.agent_id
                )
            else:
                chat = await self.store.transfer_to_queue(
                    payload.chat_id, old_agent, payload.department
                )
            await self._hand_over(chat, old_agent, "transferred", connection.name)

        self.metrics.chat_events.labels("transferred").inc()
        logger.info(
            "transferred chat=%s from agent=%s to %s",
            chat.id,
            old_agent,
            (
                f"agent={chat.agent_id}"
                if chat.agent_id
                else f"queue={chat.department or 'general'}"
            ),
        )
        # The old agent has a free slot, and a queued chat may be waiting.
        self._matcher.request()
        self._queue_moved()
        return reply(chat=chat.to_wire())

    async def _hand_over(
        self, chat: Chat, old_agent: str, reason: str, old_name: str = ""
    ) -> None:
        """Tell everyone that a chat left `old_agent` for a new agent or the queue."""
        # The caller has the chat lock.
        self._awaiting_reply.pop(chat.id, None)
        await self.manager.move_out(person_room("agent", old_agent), chat_room(chat.id))
        to = None
        if chat.agent_id is not None:
            to = {"id": chat.agent_id, "name": chat.agent_name}
        await self.sio.emit(
            "chat_removed",
            {"chat_id": chat.id, "reason": reason, "to": to},
            room=person_room("agent", old_agent),
        )

        visitor_room = person_room("visitor", chat.visitor_id)
        if to is not None:
            await self.sio.emit(
                "chat_transferred", {"chat_id": chat.id, "agent": to}, room=visitor_room
            )
            await self._start_for_agent(
                chat, transferred_from={"id": old_agent, "name": old_name}
            )
            return
        await self.sio.emit(
            "chat_requeued",
            {"chat_id": chat.id, "reason": reason, "department": chat.department},
            room=visitor_room,
        )
        self._sent_positions.pop(chat.id, None)

    async def _start_for_agent(
        self,
        chat: Chat,
        transferred_from: dict[str, str] | None = None,
        history: tuple[list[Message], bool] | None = None,
    ) -> None:
        """Put the chat's agent in its room and send it the chat so far.

        `history` is the chat's first messages and `has_more`, when the
        caller has read them already.
        """
        assert chat.agent_id is not None
        self._awaiting_reply[chat.id] = time.monotonic()
        await self.manager.move_in(
            person_room("agent", chat.agent_id), chat_room(chat.id)
        )
        if history is None:
            history = await self.store.list_messages(
                chat.id, limit=STARTED_MESSAGES_LIMIT
            )
        messages, has_more = history
        notes = await self.store.list_notes(chat.id)
        await self.sio.emit(
            "chat_started",
            {
                "chat": chat.to_wire(),
                "messages": [message.to_wire() for message in messages],
                "has_more": has_more,
                "notes": [note.to_wire() for note in notes],
                "transferred_from": transferred_from,
            },
            room=person_room("agent", chat.agent_id),
        )

    async def add_note(
        self, connection: Connection, payload: schemas.AddNote
    ) -> dict[str, Any]:
        """Store a remark that only agents see, and show it on the agent's tabs."""
        require_role(connection, "agent", "note")
        # Under the chat lock, so a concurrent transfer stores its snapshot
        # either before or after the note, and the new agent gets every note.
        async with self.people.lock(f"chat:{payload.chat_id}"):
            chat = await self._authorized_chat(connection, payload.chat_id)
            sender = Sender("agent", connection.person_id, connection.name)
            note, created = await self.store.add_note(
                chat.id, sender, payload.text, payload.client_id
            )
            if created:
                # Never to the chat room: the visitor's sockets are in it.
                await self.sio.emit(
                    "note",
                    note.to_wire(),
                    room=person_room("agent", connection.person_id),
                    skip_sid=connection.sid,
                )
        return reply(note=note.to_wire())

    async def list_notes(
        self, connection: Connection, payload: schemas.ListNotes
    ) -> dict[str, Any]:
        require_role(connection, "agent", "list_notes")
        chat = await self._authorized_chat(connection, payload.chat_id)
        notes = await self.store.list_notes(chat.id)
        return reply(notes=[note.to_wire() for note in notes])

    async def reply_to_missed(
        self, agent_id: str, chat_id: str, text: str, client_id: str | None
    ) -> tuple[Message, bool]:
        """Store an agent's reply to a missed chat and pass it on to the visitor.

        The reply goes by mail to the address the visitor left, and to the
        visitor's sockets when any is connected. Return the message and whether
        a mail transport accepted it.
        """
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise Unauthorized("agent token names an unknown agent")
        sender = Sender("agent", agent.id, agent.name)
        async with self.people.lock(f"chat:{chat_id}"):
            message, created = await self.store.reply_to_missed(
                chat_id, sender, text, client_id or _text_client_id("reply", text)
            )
            chat = await self.store.get_chat(chat_id)
            assert chat is not None
            if not created:
                return message, False
            await self.sio.emit(
                "message",
                message.to_wire(),
                room=person_room("visitor", chat.visitor_id),
            )
        logger.info("replied to missed chat=%s agent=%s", chat.id, agent.id)
        if chat.visitor_email is None:
            return message, False
        mailed = await self.mailer.send(
            chat.visitor_email, f"Answer from {agent.name}", text
        )
        return message, mailed

    # Events of both sides

    async def send_message(
        self, connection: Connection, payload: schemas.SendMessage
    ) -> dict[str, Any]:
        if connection.role == "visitor":
            # Checked before the chat lock, and it never awaits, so the order
            # of messages stays the order of arrival.
            self.limiter.check(self.message_limit, connection.person_id)
        message = await self._post_message(
            connection, payload.chat_id, payload.text, payload.client_id
        )
        return reply(message=message.to_wire())

    async def _post_message(
        self, connection: Connection, chat_id: str, text: str, client_id: str
    ) -> Message:
        async with self.people.lock(f"chat:{chat_id}"):
            # The store checks that the sender belongs to the chat.
            sender = Sender(side_of(connection), connection.person_id, connection.name)
            started = time.perf_counter()
            message, created = await self.store.add_message(
                chat_id, sender, text, client_id
            )
            self.metrics.message_write.observe(time.perf_counter() - started)
            if created:
                self.metrics.messages.labels(connection.role).inc()
                taken_at = None
                if connection.role == "agent":
                    taken_at = self._awaiting_reply.pop(chat_id, None)
                if taken_at is not None:
                    self.metrics.first_reply.observe(time.monotonic() - taken_at)
                await self.sio.emit(
                    "message",
                    message.to_wire(),
                    room=chat_room(chat_id),
                    skip_sid=connection.sid,
                )
                logger.debug("message chat=%s seq=%d", message.chat_id, message.seq)
        return message

    async def typing(
        self, connection: Connection, payload: schemas.Typing
    ) -> dict[str, Any]:
        chat = await self._authorized_chat(connection, payload.chat_id)
        if chat.closed:
            raise WrongState(f"chat {chat.id!r} has ended")
        await self.sio.emit(
            "typing",
            {"chat_id": chat.id, "role": connection.role, "typing": payload.typing},
            room=chat_room(chat.id),
            skip_sid=connection.sid,
        )
        return reply()

    async def read(
        self, connection: Connection, payload: schemas.Read
    ) -> dict[str, Any]:
        chat = await self._authorized_chat(connection, payload.chat_id)
        if payload.seq > chat.last_seq:
            raise InvalidPayload(
                f"seq {payload.seq} is beyond the last message of the chat"
                f" ({chat.last_seq})"
            )
        current = await self.store.get_read_mark(
            chat.id, side_of(connection), connection.person_id
        )
        if payload.seq <= current:
            # Marks only rise, so a repeated or older mark costs no write.
            return reply(seq=current)
        mark = await self.store.set_read_mark(
            chat.id, side_of(connection), connection.person_id, payload.seq
        )
        await self.sio.emit(
            "read",
            {"chat_id": chat.id, "role": connection.role, "seq": mark},
            room=chat_room(chat.id),
            skip_sid=connection.sid,
        )
        return reply(seq=mark)

    async def history(
        self, connection: Connection, payload: schemas.History
    ) -> dict[str, Any]:
        chat = await self._authorized_chat(connection, payload.chat_id)
        messages, has_more = await self.store.list_messages(
            chat.id, after_seq=payload.after_seq, limit=payload.limit
        )
        return reply(
            messages=[message.to_wire() for message in messages], has_more=has_more
        )

    async def end_chat(
        self, connection: Connection, payload: schemas.EndChat
    ) -> dict[str, Any]:
        async with self.people.lock(f"chat:{payload.chat_id}"):
            chat = await self._authorized_chat(connection, payload.chat_id)
            if chat.closed:
                raise WrongState(f"chat {chat.id!r} has already ended")
            ended = await self._close_chat(chat, side_of(connection), payload.reason)
        return reply(chat=ended.to_wire())

    async def _close_chat(
        self, chat: Chat, ended_by: SenderRole, reason: str | None
    ) -> Chat:
        # The caller has the chat lock.
        ended = await self.store.end_chat(chat.id, ended_by, reason)
        await self._announce_end(ended)
        return ended

    async def _announce_end(self, chat: Chat) -> None:
        """Tell the room that a chat ended or was missed, then close the room."""
        # The caller has the chat lock. Closing the room below also drops the
        # chat's first-reply entry, through `_room_closed`.
        if chat.assigned_at is not None and chat.ended_at is not None:
            duration = parse_time(chat.ended_at) - parse_time(chat.assigned_at)
            self.estimator.record_duration(duration.total_seconds())
            self.metrics.duration.observe(duration.total_seconds())
        room = chat_room(chat.id)
        await self.sio.emit(
            "chat_ended",
            {"chat_id": chat.id, "ended_by": chat.ended_by, "reason": chat.end_reason},
            room=room,
        )
        await self.sio.close_room(room)
        logger.info(
            "%s chat=%s by=%s reason=%s",
            chat.status,
            chat.id,
            chat.ended_by,
            chat.end_reason,
        )
        self.metrics.chat_events.labels(chat.status).inc()
        self._sent_positions.pop(chat.id, None)
        # The chat may have been assigned since the caller read it, so every
        # end can free a slot.
        self._matcher.request()
        self._queue_moved()

    async def _authorized_chat(self, connection: Connection, chat_id: str) -> Chat:
        chat = await self.store.get_chat(chat_id)
        if chat is None:
            raise NotFound(f"chat {chat_id!r} not found")
        owner = chat.visitor_id if connection.role == "visitor" else chat.agent_id
        if owner != connection.person_id:
            raise Forbidden(f"chat {chat_id!r} is not yours")
        return chat

    # Matching

    async def _match(self) -> None:
        chats = await self.store.assign_waiting()
        # Each announcement waits on its own chat's lock and reads, so those
        # of different agents run side by side. One agent's chats go out one
        # after another, so that the agent receives them in queue order
        # whichever read finishes first.
        by_agent: dict[str | None, list[Chat]] = {}
        for chat in chats:
            by_agent.setdefault(chat.agent_id, []).append(chat)
        await asyncio.gather(
            *(self._announce_in_order(assigned) for assigned in by_agent.values())
        )
        if chats:
            self._queue_moved()

    async def _announce_in_order(self, chats: list[Chat]) -> None:
        for chat in chats:
            await self._announce_match(chat)

    async def _announce_match(self, assigned: Chat) -> None:
        agent_id = assigned.agent_id
        assert agent_id is not None
        room = chat_room(assigned.id)
        async with self.people.lock(f"chat:{assigned.id}"):
            # The visitor may have ended the chat between the assignment and
            # this lock. The agent then gets no event for it at all.
            chat = await self.store.get_chat(assigned.id)
            if chat is None or chat.status != "active" or chat.agent_id != agent_id:
                return
            await self.manager.move_in(person_room("visitor", chat.visitor_id), room)
            messages, has_more = await self.store.list_messages(
                chat.id, limit=STARTED_MESSAGES_LIMIT
            )
            payload = {
                "chat": chat.to_wire(),
                "messages": [message.to_wire() for message in messages],
                "has_more": has_more,
            }
            await self.sio.emit(
                "chat_started", payload, room=person_room("visitor", chat.visitor_id)
            )
            # The agent's copy carries the notes, which visitors never see.
            await self._start_for_agent(chat, history=(messages, has_more))
        if chat.queued_at is not None and chat.assigned_at is not None:
            wait = parse_time(chat.assigned_at) - parse_time(chat.queued_at)
            self.estimator.record_wait(wait.total_seconds())
            self.metrics.time_to_match.observe(wait.total_seconds())
        self._sent_positions.pop(chat.id, None)
        self.metrics.chat_events.labels("matched").inc()
        logger.info(
            "matched chat=%s visitor=%s agent=%s", chat.id, chat.visitor_id, agent_id
        )

    # Queue notifications

    async def _send_queue_updates(self) -> None:
        entries = await self.store.queue_entries()
        agents_online = await self._agents_online()
        capacity = await self._open_capacity()
        queued = {entry.chat_id for entry in entries}
        for chat_id in [key for key in self._sent_positions if key not in queued]:
            del self._sent_positions[chat_id]
        # Each department, and the general queue, counts positions on its own.
        # Each node sends positions to the visitors connected to it.
        counts: dict[str | None, int] = {}
        for entry in entries:
            position = counts[entry.department] = counts.get(entry.department, 0) + 1
            visitor_key: PersonKey = ("visitor", entry.visitor_id)
            if not self.presence.is_online(visitor_key):
                # Sent again when the visitor connects.
                self._sent_positions.pop(entry.chat_id, None)
                continue
            estimate = self.estimator.estimate(position, capacity)
            state = (position, agents_online, estimate)
            if self._sent_positions.get(entry.chat_id) == state:
                continue
            self._sent_positions[entry.chat_id] = state
            await self.sio.emit(
                "queue_update",
                {
                    "chat_id": entry.chat_id,
                    "position": position,
                    "estimated_wait_s": estimate,
                    "agents_online": agents_online,
                },
                room=person_room("visitor", entry.visitor_id),
                ignore_queue=True,
            )
        self._schedule_agents_notice()

    def _schedule_agents_notice(self) -> None:
        if self._agents_notice is not None:
            return
        interval = max(
            QUEUE_CHANGED_INTERVAL_S,
            self.presence.socket_count("agent") / QUEUE_CHANGED_MAX_FRAMES_PER_S,
        )
        delay = max(0.0, self._agents_notice_at + interval - time.monotonic())
        loop = asyncio.get_running_loop()
        self._agents_notice = loop.call_later(
            delay, lambda: self._spawn(self._send_queue_changed())
        )

    async def _send_queue_changed(self) -> None:
        self._agents_notice = None
        self._agents_notice_at = time.monotonic()
        # Every node sends the summary to the agents connected to it.
        await self.sio.emit(
            "queue_changed",
            await self.queue_summary(),
            room=AGENTS_ROOM,
            ignore_queue=True,
        )

    def tracked_entries(self) -> dict[str, int]:
        """Count the per-chat and per-person entries held in memory.

        Each count returns to its idle value when the chats end and the
        people leave; one that keeps growing is a leak.
        """
        return {
            "socketio_rooms": len(self.manager.rooms.get("/", {})),
            "held_connects": len(self.manager.held_frames),
            "socket_room_index": self.manager.room_entries(),
            "cut_off_connects": len(self.manager.cut_off),
            "locks": self.people.lock_count(),
            "queue_positions": len(self._sent_positions),
            "awaiting_reply": len(self._awaiting_reply),
            "grace_timers": self.people.timer_count(),
        }

    async def queue_summary(self) -> dict[str, Any]:
        """Return the `queue_changed` payload: counts and the longest wait."""
        counts = await self.store.queue_counts()
        oldest = None
        if counts:
            oldest_at = parse_time(min(count.oldest_queued_at for count in counts))
            oldest = round((datetime.now(UTC) - oldest_at).total_seconds(), 3)
        return {
            "queued": sum(count.queued for count in counts),
            "oldest_wait_s": oldest,
            "departments": [
                {"department": count.department, "queued": count.queued}
                for count in counts
            ],
        }

    # Timeouts

    async def _run_timers(self) -> None:
        """Check the queue, reply and inactivity timeouts at a fixed interval.

        Each check is one conditional update in the store, so a chat times
        out once however many checks see it, and after a restart the checks
        find what timed out while the server was down.
        """
        while True:
            await asyncio.sleep(self.settings.timer_interval_s)
            try:
                await self.check_timeouts()
            except Exception:
                logger.exception("timeout check failed")

    async def check_timeouts(self) -> None:
        now = datetime.now(UTC)
        settings = self.settings
        if settings.queue_timeout_s:
            cutoff = format_time(now - timedelta(seconds=settings.queue_timeout_s))
            for chat in await self.store.miss_waiting(cutoff):
                async with self.people.lock(f"chat:{chat.id}"):
                    await self._announce_end(chat)
        if settings.agent_reply_timeout_s:
            cutoff = format_time(
                now - timedelta(seconds=settings.agent_reply_timeout_s)
            )
            for chat, agent_id in await self.store.requeue_unreplied(cutoff):
                await self._take_back(chat, agent_id, "no_reply")
        if settings.visitor_idle_timeout_s:
            cutoff = format_time(
                now - timedelta(seconds=settings.visitor_idle_timeout_s)
            )
            for chat in await self.store.end_inactive(cutoff):
                async with self.people.lock(f"chat:{chat.id}"):
                    await self._announce_end(chat)

    def _room_closed(self, room: Any) -> None:
        """Forget the first-reply entry of a chat whose room closed on any node."""
        if isinstance(room, str) and room.startswith(CHAT_ROOM_PREFIX):
            self._awaiting_reply.pop(room.removeprefix(CHAT_ROOM_PREFIX), None)

    async def _take_back(self, chat: Chat, agent_id: str, reason: str) -> None:
        """Tell both sides that a requeued chat left its agent."""
        async with self.people.lock(f"chat:{chat.id}"):
            await self._hand_over(chat, agent_id, reason)
        self.metrics.chat_events.labels("requeued").inc()
        logger.info(
            "requeued chat=%s from agent=%s reason=%s", chat.id, agent_id, reason
        )
        self._matcher.request()
        self._queue_moved()

    # Grace expiry

    async def _on_grace_expired(self, key: PersonKey) -> None:
        role, person_id = key
        logger.info("grace expired for %s=%s", role, person_id)
        if role == "visitor":
            await self._visitor_left(person_id)
        else:
            await self._agent_left(person_id)

    async def _visitor_left(self, visitor_id: str) -> None:
        async with self.people.lock(f"visitor:{visitor_id}"):
            if await self.people.is_online(("visitor", visitor_id)):
                return
            chat = await self.store.open_chat_of_visitor(visitor_id)
            if chat is None:
                return
            async with self.people.lock(f"chat:{chat.id}"):
                current = await self.store.get_chat(chat.id)
                if current is None or current.status == "ended":
                    return
                await self._close_chat(current, "system", "visitor_left")

    async def _agent_left(self, agent_id: str, *, signed_out: bool = False) -> None:
        """Requeue the chats of an agent who is gone.

        `signed_out` means the agent's sockets are being disconnected and
        cannot come back, even if some on other nodes still count as online.
        """
        async with self.people.lock(f"agent:{agent_id}"):
            if not signed_out and await self.people.is_online(("agent", agent_id)):
                return
            chats = await self.store.requeue_agent_chats(agent_id)
            self._agents_changed()
        for chat in chats:
            # The agent's sockets can still be open on a node that stalled
            # and was taken for dead; they get `chat_removed` when it resumes.
            async with self.people.lock(f"chat:{chat.id}"):
                await self._hand_over(chat, agent_id, "agent_left")
            self.metrics.chat_events.labels("requeued").inc()
            logger.info("requeued chat=%s from agent=%s", chat.id, agent_id)
        self._queue_moved()
        self._matcher.request()


async def _drop_socket(socket: Any) -> None:
    """Close an Engine.IO socket without a CLOSE packet, as a network failure would."""
    await socket.close(wait=False, abort=True)
    # NOTE: `queue` is python-engineio's outgoing packet queue. None ends a
    # pending long-poll or WebSocket writer at once, instead of after the
    # shutdown timeout.
    socket.queue.put_nowait(None)


def _visitor_of(connection: Connection) -> Visitor:
    return Visitor(
        id=connection.person_id,
        name=connection.name,
        email=connection.email,
        created_at=connection.created_at or utc_now(),
    )


def _text_client_id(prefix: str, text: str) -> str:
    """Derive a client_id from the text, so a retry without one stores it once."""
    return f"{prefix}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def _new_visitor(visitor_id: str, auth: schemas.VisitorAuth) -> Visitor:
    return Visitor(
        id=visitor_id,
        name=auth.name or default_visitor_name(visitor_id),
        email=auth.email,
        created_at=utc_now(),
    )


def require_role(connection: Connection, role: str, event: str) -> None:
    if connection.role != role:
        raise Forbidden(f"{event} is for {role}s only")


def side_of(connection: Connection) -> Literal["visitor", "agent"]:
    """Return the side of a chat that a socket speaks for; observers speak for none."""
    if connection.role == "observer":
        raise Forbidden("this socket only watches chats")
    return connection.role
