"""Reference peer for the benchmark: the chat routing over a raw aiohttp WebSocket.

It speaks Engine.IO v4 and Socket.IO v5 framing by hand, without python-engineio
or python-socketio, on the WebSocket transport only, and keeps everything in
memory with no storage and no token checks. It measures how fast the Python
transport under the chat server can go. The events and reply shapes follow
docs/protocol.md, so one load generator drives this peer and the server alike.

Usage: python bench/peers/raw_relay.py [--port N] [--host ADDRESS]

Differences from the chat server:
- Tokens are not verified. A visitor token and an agent token are the person's id.
- Chats are not checked for ownership.
- There are no grace periods, so the peer never requeues or ends a chat by itself.
- There are no `queue_update` events, and agents get `queue_changed` only once,
  right after connecting.
- Only the WebSocket transport is served, and binary packets are not supported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import secrets
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import uvloop
from aiohttp import WSMsgType, web

logger = logging.getLogger("raw_relay")

# The chat server's values (sio_server/__main__.py).
LISTEN_BACKLOG = 4096
GC_YOUNG_THRESHOLD = 100_000

PING_INTERVAL_S = 25
PING_TIMEOUT_S = 20
MAX_PAYLOAD_BYTES = 1_000_000
MAX_TEXT_CHARS = 4000
STARTED_MESSAGES_LIMIT = 500
DIGITS = "0123456789"
# Client errors are logged for the first few only, then once per this many, so a
# misbehaving client cannot flood the log.
CLIENT_ERROR_LOG_FIRST = 20
CLIENT_ERROR_LOG_EVERY = 1000
client_errors = 0


def utc_now() -> str:
    """Return the time as ISO 8601 in UTC with milliseconds, as the server does."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def log_client_error(message: str, *args: Any) -> None:
    global client_errors
    client_errors += 1
    if (
        client_errors <= CLIENT_ERROR_LOG_FIRST
        or client_errors % CLIENT_ERROR_LOG_EVERY == 0
    ):
        logger.warning(message + " (%d client errors so far)", *args, client_errors)


def dumps(data: Any) -> str:
    # The same encoding as python-socketio 5.18, so frames have the same size.
    return json.dumps(data, separators=(",", ":"))


def event_packet(event: str, data: Any) -> str:
    return "42" + dumps([event, data])


class ChatError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ChatError:
    return ChatError("invalid_payload", message)


@dataclass(eq=False, slots=True)
class Visitor:
    id: str
    name: str
    sockets: set[Connection] = field(default_factory=set)
    chat: Chat | None = None


@dataclass(eq=False, slots=True)
class Agent:
    id: str
    name: str
    status: str = "away"
    max_chats: int = 1
    sockets: set[Connection] = field(default_factory=set)
    active: dict[str, Chat] = field(default_factory=dict)
    last_assigned: int = 0


@dataclass(eq=False, slots=True)
class Chat:
    id: str
    visitor: Visitor
    created_at: str
    queued_at: float
    status: str = "queued"
    agent: Agent | None = None
    ended_at: str | None = None
    ended_by: str | None = None
    end_reason: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    # (sender id, client_id) -> message, so that a retried message is stored once.
    by_client_id: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    read_marks: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def room(self) -> str:
        return f"chat:{self.id}"

    def to_wire(self) -> dict[str, Any]:
        agent = self.agent
        return {
            "id": self.id,
            "status": self.status,
            "visitor": {"id": self.visitor.id, "name": self.visitor.name},
            "agent": {"id": agent.id, "name": agent.name} if agent else None,
            "department": None,
            "created_at": self.created_at,
            "last_seq": len(self.messages),
            "ended_at": self.ended_at,
            "ended_by": self.ended_by,
            "end_reason": self.end_reason,
        }


Person = TypeVar("Person", Visitor, Agent)


class Connection:
    """One WebSocket with its outgoing packet queue, rooms and heartbeat timer."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.sid = secrets.token_urlsafe(15)
        # A writer task drains this queue, so packets leave in the order they were
        # queued even when a slow reader makes one send wait.
        self.outgoing: asyncio.Queue[str] = asyncio.Queue()
        self.rooms: set[str] = set()
        self.role = ""
        self.person: Visitor | Agent | None = None
        self.awaiting_pong = False
        self.timer: asyncio.TimerHandle | None = None
        self.closing: asyncio.Task[Any] | None = None

    def send(self, text: str) -> None:
        self.outgoing.put_nowait(text)

    async def write_loop(self) -> None:
        """Send queued packets until the connection fails or the task is cancelled."""
        while True:
            text = await self.outgoing.get()
            try:
                await self.ws.send_str(text)
            except ConnectionError:
                return

    # Engine.IO heartbeat: the server sends ping `2` every PING_INTERVAL_S and
    # closes the connection when no pong `3` comes back within PING_TIMEOUT_S.
    def schedule_ping(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(PING_INTERVAL_S, self.ping)

    def ping(self) -> None:
        self.awaiting_pong = True
        self.send("2")
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(PING_TIMEOUT_S, self.ping_timed_out)

    def pong(self) -> None:
        if self.awaiting_pong and self.timer is not None:
            self.awaiting_pong = False
            self.timer.cancel()
            self.schedule_ping()

    def ping_timed_out(self) -> None:
        logger.info(
            "sid=%s sent no pong within %d s: closing", self.sid, PING_TIMEOUT_S
        )
        self.closing = asyncio.ensure_future(self.ws.close())


class Peer:
    """The chat state and event handlers, independent of the framing."""

    def __init__(self) -> None:
        # Nothing is ever pruned, so memory grows with the visitors, chats and
        # messages a run creates.
        self.visitors: dict[str, Visitor] = {}
        self.agents: dict[str, Agent] = {}
        self.chats: dict[str, Chat] = {}
        self.queue: dict[str, Chat] = {}  # queued chats, oldest first
        self.rooms: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.assignments = 0
        self.match_requested = False
        self.handlers = {
            "join_queue": self.join_queue,
            "agent_ready": self.agent_ready,
            "agent_away": self.agent_away,
            "message": self.send_message,
            "typing": self.typing,
            "read": self.read,
            "history": self.history,
            "end_chat": self.end_chat,
        }

    # Rooms

    def join(self, conn: Connection, room: str) -> None:
        self.rooms.setdefault(room, set()).add(conn)
        conn.rooms.add(room)

    def close_room(self, room: str) -> None:
        for conn in self.rooms.pop(room, ()):
            conn.rooms.discard(room)

    def emit(
        self, room: str, event: str, data: Any, skip: Connection | None = None
    ) -> None:
        packet = event_packet(event, data)
        for conn in self.rooms.get(room, ()):
            if conn is not skip:
                conn.send(packet)

    # Connections

    def admit(self, conn: Connection, auth: Any) -> None:
        """Find or create the person named by the handshake auth, then greet them."""
        if not isinstance(auth, dict):
            raise ChatError(
                "invalid_auth",
                'auth must be an object such as {"role": "visitor", "token": null}',
            )
        role, token, name = auth.get("role"), auth.get("token"), auth.get("name")
        name = name[:100] if isinstance(name, str) and name else None
        if role == "visitor" and token is None:
            token = str(uuid.uuid4())
        if role not in ("visitor", "agent"):
            raise ChatError(
                "invalid_auth", f'auth.role must be "visitor" or "agent", got {role!r}'
            )
        if not isinstance(token, str) or not token:
            raise ChatError("invalid_auth", "auth.token must be a non-empty string")
        conn.role = role
        conn.send("40" + dumps({"sid": conn.sid}))
        if role == "visitor":
            self.admit_visitor(conn, token, name)
        else:
            self.admit_agent(conn, token, name)

    def admit_visitor(self, conn: Connection, token: str, name: str | None) -> None:
        visitor = self.visitors.get(token)
        if visitor is None:
            visitor = Visitor(token, f"Visitor {token[:4].upper()}")
            self.visitors[token] = visitor
        visitor.name = name or visitor.name
        visitor.sockets.add(conn)
        conn.person = visitor
        chat = visitor.chat
        if chat is not None:
            self.join(conn, chat.room)
        session = {
            "role": "visitor",
            "visitor_id": visitor.id,
            "name": visitor.name,
            "token": visitor.id,
            "chat": chat.to_wire() if chat else None,
            "agents_online": self.agents_online(),
        }
        conn.send(event_packet("session", session))

    def admit_agent(self, conn: Connection, token: str, name: str | None) -> None:
        agent = self.agents.get(token)
        if agent is None:
            agent = self.agents[token] = Agent(token, name or f"Agent {token}")
        agent.sockets.add(conn)
        conn.person = agent
        for chat in agent.active.values():
            self.join(conn, chat.room)
        session = {
            "role": "agent",
            "agent_id": agent.id,
            "name": agent.name,
            "status": agent.status,
            "max_chats": agent.max_chats,
            "chats": [chat.to_wire() for chat in agent.active.values()],
        }
        conn.send(event_packet("session", session))
        oldest = next(iter(self.queue.values()), None)
        wait_s = round(time.monotonic() - oldest.queued_at, 3) if oldest else None
        summary = {"queued": len(self.queue), "oldest_wait_s": wait_s}
        conn.send(event_packet("queue_changed", summary))
        # An agent who comes back ready can take waiting chats again.
        if len(agent.sockets) == 1 and agent.status == "ready":
            self.match()

    def forget(self, conn: Connection) -> None:
        for room in conn.rooms:
            members = self.rooms.get(room)
            if members is not None:
                members.discard(conn)
                if not members:
                    del self.rooms[room]
        if conn.person is not None:
            conn.person.sockets.discard(conn)

    def dispatch(self, conn: Connection, ack_id: int | None, data: Any) -> None:
        """Run one event and send its reply when the client asked for one."""
        try:
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                raise invalid("the event name must be a string")
            handler = self.handlers.get(data[0])
            if handler is None:
                raise invalid(f"unknown event {data[0][:64]!r}")
            payload = data[1] if len(data) > 1 else {}
            if not isinstance(payload, dict) or len(data) > 2:
                raise invalid("the payload must be one JSON object")
            reply = {"ok": True, **handler(conn, payload)}
        except ChatError as exc:
            log_client_error(
                "sid=%s event rejected: %s %s", conn.sid, exc.code, exc.message[:200]
            )
            reply = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
        except Exception:
            logger.exception("sid=%s event failed", conn.sid)
            reply = {
                "ok": False,
                "error": {
                    "code": "internal_error",
                    "message": "the peer failed to handle the event",
                },
            }
        if ack_id is not None:
            conn.send(f"43{ack_id}" + dumps([reply]))
        if self.match_requested:
            self.match()

    # Matching

    def agents_online(self) -> int:
        return sum(
            1
            for agent in self.agents.values()
            if agent.status == "ready" and agent.sockets
        )

    def pick_agent(self) -> Agent | None:
        """Return the ready, connected agent with a free slot and the fewest chats.

        A tie goes to the agent whose last assignment is the oldest.
        """
        free = [
            agent
            for agent in self.agents.values()
            if agent.status == "ready"
            and agent.sockets
            and len(agent.active) < agent.max_chats
        ]
        return min(
            free,
            key=lambda agent: (len(agent.active), agent.last_assigned),
            default=None,
        )

    def match(self) -> None:
        """Assign the oldest queued chats while an agent has a free slot."""
        self.match_requested = False
        while self.queue and (agent := self.pick_agent()) is not None:
            chat = self.queue.pop(next(iter(self.queue)))
            chat.status, chat.agent = "active", agent
            agent.active[chat.id] = chat
            self.assignments += 1
            agent.last_assigned = self.assignments
            for conn in chat.visitor.sockets | agent.sockets:
                self.join(conn, chat.room)
            started = {
                "chat": chat.to_wire(),
                "messages": chat.messages[:STARTED_MESSAGES_LIMIT],
                "has_more": len(chat.messages) > STARTED_MESSAGES_LIMIT,
            }
            self.emit(chat.room, "chat_started", started)

    # Events. Each handler returns the fields of the `ok` reply.

    def find_chat(self, payload: dict[str, Any]) -> Chat:
        chat_id = require_string(payload, "chat_id", 64)
        chat = self.chats.get(chat_id)
        if chat is None:
            raise ChatError("not_found", f"chat {chat_id!r} not found")
        return chat

    def post_message(
        self,
        conn: Connection,
        chat: Chat,
        text: str,
        client_id: str,
        relay: bool = True,
    ) -> dict[str, Any]:
        """Store and relay a message, or return the stored one when retried."""
        person = conn.person
        assert person is not None
        stored = chat.by_client_id.get((person.id, client_id))
        if stored is not None:
            return stored
        if chat.status == "ended":
            raise ChatError(
                "wrong_state", f"chat {chat.id!r} has ended: start a new chat"
            )
        message = {
            "id": str(uuid.uuid4()),
            "chat_id": chat.id,
            "seq": len(chat.messages) + 1,
            "sender": {"role": conn.role, "id": person.id, "name": person.name},
            "text": text,
            "client_id": client_id,
            "created_at": utc_now(),
        }
        chat.messages.append(message)
        chat.by_client_id[(person.id, client_id)] = message
        if relay:
            self.emit(chat.room, "message", message, skip=conn)
        return message

    def join_queue(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        visitor = require_role(conn, Visitor, "join_queue")
        if payload.get("department") is not None:
            raise invalid("leave department out: this peer has one queue")
        text = (
            None if payload.get("message") is None else require_text(payload, "message")
        )
        client_id = (
            None
            if payload.get("client_id") is None
            else require_string(payload, "client_id", 128)
        )
        if client_id is None and text is not None:
            client_id = (
                "join:"
                + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
            )
        chat, message = visitor.chat, None
        # A new chat is the last in the queue until the matcher runs after this reply.
        position = len(self.queue) + 1
        if chat is not None:
            if text is not None and client_id is not None:
                message = self.post_message(conn, chat, text, client_id)
            queued = chat.status == "queued"
            position = list(self.queue).index(chat.id) + 1 if queued else 0
        else:
            chat = visitor.chat = Chat(
                str(uuid.uuid4()), visitor, utc_now(), time.monotonic()
            )
            self.chats[chat.id] = self.queue[chat.id] = chat
            if text is not None and client_id is not None:
                message = self.post_message(conn, chat, text, client_id, relay=False)
            for visitor_conn in visitor.sockets:
                self.join(visitor_conn, chat.room)
            self.match_requested = True
        return {
            "chat": chat.to_wire(),
            "position": position,
            "estimated_wait_s": None,
            "agents_online": self.agents_online(),
            "message": message,
        }

    def agent_ready(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        agent = require_role(conn, Agent, "agent_ready")
        if payload.get("departments"):
            raise invalid("leave departments out: this peer has one queue")
        agent.max_chats = optional_int(payload, "max_chats", 1, 50, agent.max_chats)
        agent.status = "ready"
        self.match_requested = True
        return {
            "status": "ready",
            "max_chats": agent.max_chats,
            "chats": [chat.to_wire() for chat in agent.active.values()],
        }

    def agent_away(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        require_role(conn, Agent, "agent_away").status = "away"
        return {"status": "away"}

    def send_message(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        chat = self.find_chat(payload)
        text = require_text(payload, "text")
        client_id = require_string(payload, "client_id", 128)
        return {"message": self.post_message(conn, chat, text, client_id)}

    def typing(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        chat = self.find_chat(payload)
        if not isinstance(payload.get("typing"), bool):
            raise invalid("typing must be true or false")
        if chat.status == "ended":
            raise ChatError("wrong_state", f"chat {chat.id!r} has ended")
        self.emit(
            chat.room,
            "typing",
            {"chat_id": chat.id, "role": conn.role, "typing": payload["typing"]},
            skip=conn,
        )
        return {}

    def read(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        chat = self.find_chat(payload)
        if payload.get("seq") is None:
            raise invalid("seq is missing")
        seq = optional_int(payload, "seq", 0, len(chat.messages), 0)
        assert conn.person is not None
        key = (conn.role, conn.person.id)
        if seq <= chat.read_marks.get(key, 0):
            return {"seq": chat.read_marks.get(key, 0)}
        chat.read_marks[key] = seq
        self.emit(
            chat.room,
            "read",
            {"chat_id": chat.id, "role": conn.role, "seq": seq},
            skip=conn,
        )
        return {"seq": seq}

    def history(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        chat = self.find_chat(payload)
        after_seq = optional_int(payload, "after_seq", 0, 2**53, 0)
        limit = optional_int(payload, "limit", 1, 500, 100)
        # Message seq n sits at index n - 1.
        messages = chat.messages[after_seq : after_seq + limit]
        return {
            "messages": messages,
            "has_more": after_seq + limit < len(chat.messages),
        }

    def end_chat(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        chat = self.find_chat(payload)
        reason = (
            None
            if payload.get("reason") is None
            else require_string(payload, "reason", 200)
        )
        if chat.status == "ended":
            raise ChatError("wrong_state", f"chat {chat.id!r} has already ended")
        self.queue.pop(chat.id, None)
        if chat.agent is not None:
            chat.agent.active.pop(chat.id, None)
        if chat.visitor.chat is chat:
            chat.visitor.chat = None
        chat.status, chat.ended_at, chat.ended_by, chat.end_reason = (
            "ended",
            utc_now(),
            conn.role,
            reason,
        )
        self.emit(
            chat.room,
            "chat_ended",
            {"chat_id": chat.id, "ended_by": conn.role, "reason": reason},
        )
        self.close_room(chat.room)
        self.match_requested = True
        return {"chat": chat.to_wire()}


def require_role(conn: Connection, kind: type[Person], event: str) -> Person:
    if not isinstance(conn.person, kind):
        raise ChatError("forbidden", f"{event} is for {kind.__name__.lower()}s only")
    return conn.person


def require_string(payload: dict[str, Any], name: str, max_length: int) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise invalid(f"{name} must be a string of 1 to {max_length} characters")
    return value


def require_text(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        raise ChatError(
            "payload_too_large", f"{name} exceeds {MAX_TEXT_CHARS} characters"
        )
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"{name} must be a string that is not empty or only whitespace")
    return value


def optional_int(
    payload: dict[str, Any], name: str, low: int, high: int, default: int
) -> int:
    value = payload.get(name)
    if value is None:
        return default
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not low <= value <= high
    ):
        raise invalid(f"{name} must be an integer from {low} to {high}")
    return value


def parse_socket_packet(text: str) -> tuple[str, str, int | None, Any]:
    """Split a Socket.IO packet into type, namespace, ack id and JSON data.

    The format is `<type>[/<namespace>,][<ack id>][<JSON>]`, for example
    `2` + `12["message",{...}]` for an event that requests acknowledgement 12.
    """
    kind, index, namespace = text[:1], 1, "/"
    if text.startswith("/", index):
        end = text.find(",", index)
        end = len(text) if end == -1 else end
        namespace, index = text[index:end], end + 1
    start = index
    while index < len(text) and text[index] in DIGITS:
        index += 1
    ack_id = int(text[start:index]) if index > start else None
    data = json.loads(text[index:]) if index < len(text) else None
    return kind, namespace, ack_id, data


async def handle_socket_packet(peer: Peer, conn: Connection, text: str) -> None:
    if text[:1] in ("5", "6"):
        log_client_error(
            "sid=%s sent a binary packet, which is not supported", conn.sid
        )
        return
    kind, namespace, ack_id, data = parse_socket_packet(text)
    if namespace != "/":
        conn.send(f"44{namespace}," + dumps({"message": "Invalid namespace"}))
    elif kind == "0" and conn.person is None:
        try:
            peer.admit(conn, data)
        except ChatError as exc:
            log_client_error("sid=%s connection rejected: %s", conn.sid, exc.message)
            error = {"code": exc.code, "message": exc.message}
            conn.send("44" + dumps({"message": exc.message, "data": error}))
    elif kind == "1":
        await conn.ws.close()
    elif kind == "2" and conn.person is not None:
        peer.dispatch(conn, ack_id, data)


async def read_packets(peer: Peer, conn: Connection) -> None:
    """Handle Engine.IO packets until the client closes the WebSocket."""
    async for msg in conn.ws:
        if msg.type != WSMsgType.TEXT or not msg.data:
            continue
        kind, rest = msg.data[0], msg.data[1:]
        if kind == "4":
            try:
                await handle_socket_packet(peer, conn, rest)
            except (ValueError, RecursionError) as exc:
                log_client_error(
                    "sid=%s sent a malformed packet: %s", conn.sid, str(exc)[:200]
                )
        elif kind == "3":
            conn.pong()
        elif kind == "2":
            conn.send("3" + rest)
        elif kind == "1":
            return


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    peer: Peer = request.app[PEER_KEY]
    query = request.query

    if query.get("EIO") != "4":
        return web.json_response(
            {"code": 5, "message": "Unsupported protocol version"}, status=400
        )
    if query.get("transport") != "websocket" or "sid" in query:
        return web.json_response(
            {
                "code": 0,
                "message": "Transport unknown: this peer serves WebSocket only",
            },
            status=400,
        )
    # aiohttp negotiates permessage-deflate by default, and every socket with it
    # keeps its own zlib state, which costs memory and CPU per socket.
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_PAYLOAD_BYTES)
    await ws.prepare(request)

    conn = Connection(ws)
    peer.connections.add(conn)
    writer = asyncio.create_task(conn.write_loop())
    open_packet = {
        "sid": conn.sid,
        "upgrades": [],
        "pingInterval": PING_INTERVAL_S * 1000,
        "pingTimeout": PING_TIMEOUT_S * 1000,
        "maxPayload": MAX_PAYLOAD_BYTES,
    }
    conn.send("0" + dumps(open_packet))
    conn.schedule_ping()

    try:
        await read_packets(peer, conn)
    finally:
        if conn.timer is not None:
            conn.timer.cancel()
        peer.connections.discard(conn)
        peer.forget(conn)
        writer.cancel()
        await ws.close()
    return ws


PEER_KEY = web.AppKey("peer", Peer)


async def close_connections(app: web.Application) -> None:
    connections = list(app[PEER_KEY].connections)
    logger.info("shutting down: closing %d connections", len(connections))
    for conn in connections:
        await conn.ws.close(code=1001)


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app[PEER_KEY] = Peer()
    app.router.add_get("/socket.io/", websocket_handler)
    app.on_shutdown.append(close_connections)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    # The same listen backlog and collector settings as the chat server, so
    # that this stays the ceiling of its transport.
    await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
    print(f"listening on {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    logger.info("stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="TCP port to listen on (default 8080)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The chat server runs on uvloop as well.
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
