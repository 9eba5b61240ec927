"""python-socketio's server with a firmer hand on malformed client packets."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, cast

import engineio
import engineio.async_socket
import engineio.exceptions
import engineio.payload
import orjson
import socketio
from aiohttp import web
from aiohttp.web import Request, WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import packet

logger = logging.getLogger("sio_server.events")

# Client-to-server event names that python-socketio would route to the
# connection handlers; a client may not send them as events.
RESERVED_EVENTS = frozenset({"connect", "disconnect", "connect_error"})

# python-engineio drops a whole polling POST that carries more than 16 packets
# (python-engineio 4.x, `Payload.max_decode_packets`). A browser that queued
# more events than that while a POST was in flight would lose them all. The
# request size stays capped by `max_http_buffer_size`.
MAX_PACKETS_PER_POST = 1000

# Warnings about undecodable packets are logged for the first few only, then
# once per this many, so a misbehaving client cannot flood the log.
BAD_PACKET_LOG_EVERY = 1000
BAD_PACKET_LOG_FIRST = 20

# Bytes a socket may have waiting in its transport's buffer for a packet to
# still be written from the sender's task. The transport pauses writing at
# 64 KiB by default, and aiohttp's next write then waits, so this stays below.
DIRECT_WRITE_BACKLOG = 16 * 1024


class OrjsonCodec:
    """The `json` module interface python-socketio expects, backed by orjson.

    Input orjson rejects (integers beyond 64 bits, NaN) falls back to the
    standard decoder, so such payloads still reach validation and get a reply.
    """

    @staticmethod
    def dumps(value: Any, **options: Any) -> str:
        return orjson.dumps(value).decode()

    @staticmethod
    def loads(text: str | bytes, **options: Any) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)


# The fields of python-engineio's environ that do not come from headers, as
# its aiohttp driver sets them (python-engineio 4.x, `translate_request`).
_ENVIRON_FIELDS: dict[str, Callable[[Request], Any]] = {
    "wsgi.input": lambda request: request.content,
    "wsgi.errors": lambda request: sys.stderr,
    "wsgi.version": lambda request: (1, 0),
    "wsgi.async": lambda request: True,
    "wsgi.multithread": lambda request: False,
    "wsgi.multiprocess": lambda request: False,
    "wsgi.run_once": lambda request: False,
    "SERVER_SOFTWARE": lambda request: "aiohttp",
    "REQUEST_METHOD": lambda request: request.method,
    "QUERY_STRING": lambda request: request.query_string or "",
    "RAW_URI": lambda request: request.path_qs,
    "SERVER_PROTOCOL": lambda request: "HTTP/{}.{}".format(*request.version),
    "REMOTE_ADDR": lambda request: "127.0.0.1",
    "REMOTE_PORT": lambda request: "0",
    "SERVER_NAME": lambda request: "aiohttp",
    "SERVER_PORT": lambda request: "0",
    "aiohttp.request": lambda request: request,
}
_CONTENT_FIELDS = {"CONTENT-TYPE": "CONTENT_TYPE", "CONTENT-LENGTH": "CONTENT_LENGTH"}
_CONTENT_KEYS = frozenset(_CONTENT_FIELDS.values())
# The fields that python-engineio sets after the headers.
_URL_SCHEME, _PATH_INFO, _SCRIPT_NAME = "wsgi.url_scheme", "PATH_INFO", "SCRIPT_NAME"
_MISSING = object()


def _field_name(header: str) -> str:
    """Return the environ key of a header, as python-engineio writes it."""
    upper = header.upper()
    return _CONTENT_FIELDS.get(upper) or "HTTP_" + upper.replace("-", "_")


class RequestEnviron(Mapping[str, Any]):
    """The WSGI-style environ of an aiohttp request, read from it on demand.

    python-engineio's aiohttp driver copies every header of each request
    into a new dict, and python-socketio keeps a socket's dict for the
    socket's life: about 1 KB each. This mapping has the same keys and
    values but keeps only the request, which aiohttp keeps anyway while the
    socket is open.
    """

    __slots__ = ("_headers", "_request", "_underscores")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._headers = request.headers
        # Whether a header name has "_", which python-engineio's key for it
        # shares with "-". It is found at the first header lookup.
        self._underscores: bool | None = None

    def __getitem__(self, key: str) -> Any:
        value = self._value(key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    # Mapping's own get and `in` go through a KeyError for a missing key,
    # and python-engineio looks up several headers that most requests lack.
    def get(self, key: str, default: Any = None) -> Any:
        value = self._value(key)
        return default if value is _MISSING else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._value(key) is not _MISSING

    def _value(self, key: str) -> Any:
        if key.startswith("HTTP_"):
            return self._header(key)
        field = _ENVIRON_FIELDS.get(key)
        if field is not None:
            return field(self._request)
        if key == _URL_SCHEME:
            scheme = self._header("HTTP_X_FORWARDED_PROTO")
            return "http" if scheme is _MISSING else scheme
        if key == _PATH_INFO:
            return self._request.path
        if key == _SCRIPT_NAME:
            return ""
        if key in _CONTENT_KEYS:
            return self._header(key)
        return _MISSING

    def __iter__(self) -> Iterator[str]:
        yield from _ENVIRON_FIELDS
        yield from dict.fromkeys(_field_name(name) for name in self._headers)
        yield from (_URL_SCHEME, _PATH_INFO, _SCRIPT_NAME)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _header(self, key: str) -> Any:
        """Return the headers that python-engineio files under `key`, joined.

        `key` is CONTENT_TYPE or CONTENT_LENGTH, which take the last such
        header as in python-engineio, or starts with HTTP_ and takes all of
        them, joined by commas. Return `_MISSING` if there are none.
        """
        content_key = not key.startswith("HTTP_")
        name = key if content_key else key[5:]
        headers = self._headers
        if self._underscores is None:
            self._underscores = any("_" in header for header in headers)
        if self._underscores:
            values = [
                value for header, value in headers.items() if _field_name(header) == key
            ]
        elif name != name.upper() or "-" in name:
            # python-engineio writes no such key, and the lookup below would
            # find a header for it regardless of case.
            return _MISSING
        elif not content_key and name in _CONTENT_KEYS:
            # Content-Type and Content-Length have keys of their own, so only
            # a name spelled with "_" would be filed here.
            return _MISSING
        else:
            values = headers.getall(name.replace("_", "-"), [])
        if not values:
            return _MISSING
        return values[-1] if content_key else ",".join(values)


class ChatWebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp WebSocket with a cheaper loop per socket.

    python-engineio's own loop starts a Task for every frame it reads and
    another, through `asyncio.wait_for`, every time its writer waits for a
    packet. This one reads with no Task and no deadline per frame, because
    the PING timer closes a client that stops replying (`_check_pong`), and
    it runs a writer only while packets wait. It otherwise follows the same
    steps: the probe and upgrade of a polling socket and the same close at
    the end.

    `compress` turns permessage-deflate on. aiohttp negotiates it by default,
    which keeps a zlib context of tens of kilobytes per socket and costs CPU on
    every frame, while chat frames are a few hundred bytes. python-engineio
    4.x has no option for it.
    """

    def __init__(self, handler: Any, server: Any, *, compress: bool = False) -> None:
        super().__init__(handler, server)
        self.compress = compress
        self._transport: asyncio.Transport | None = None
        self._sid = ""
        self._queue: PacketQueue | None = None
        self._direct: Callable[[Any, PacketQueue], Awaitable[None]] | None = None
        self._writer: asyncio.Task[bool] | None = None

    async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse:
        request = environ["aiohttp.request"]
        self._transport = request.transport
        # aiohttp rejects a message of `max_msg_size` bytes or more, while
        # `max_http_buffer_size` is the largest packet allowed.
        self._sock = WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size + 1, compress=self.compress
        )
        # NOTE: python-engineio 4.x passes its socket's `_websocket_handler`
        # as `handler`; the socket it is bound to is the one served here.
        socket = self.handler.__self__
        try:
            await self._sock.prepare(request)
        except web.HTTPException as exc:
            # A bad handshake, such as a missing Sec-WebSocket-Key. A new
            # socket's request reaches here without the error middleware.
            logger.warning("sid=%s websocket handshake failed: %s", socket.sid, exc)
            await socket.close(
                wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR
            )
            return web.json_response(
                {"error": {"code": "invalid_payload", "message": exc.reason}},
                status=exc.status,
            )
        # NOTE: aiohttp 3.14 keeps the connection's HTTP parser for the life
        # of the connection. An upgraded connection reads every byte through
        # the WebSocket reader, and each later use of the HTTP parser checks
        # the upgrade first. Dropping the parser and what it kept of the
        # request frees about 1.6 KB per socket (tracemalloc, 2,000 sockets).
        request.protocol._parser = None
        self.environ = environ
        self._sid = socket.sid
        if await self._upgrade(socket):
            await self._serve(socket)
        return self._sock

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._sock.send_bytes(message)
        else:
            await self._sock.send_str(message)

    async def _read(self) -> str | bytes | None:
        data = await self.wait()
        limit = self.server.max_http_buffer_size
        if data and len(data) > limit:
            raise ValueError(f"packet of {len(data)} bytes is over {limit}")
        return data  # type: ignore[no-any-return]

    async def _upgrade(self, socket: Any) -> bool:
        """Start a new socket or take over a polling one; return whether it runs."""
        if not socket.connected:
            socket.connected = True
            socket.upgraded = True
            return True
        # Packets sent meanwhile wait in the queue until the upgrade is done.
        # A client that stops halfway gets the ping timeout to finish. Without
        # a deadline, its WebSocket would stay open until TCP gave up on it.
        socket.upgrading = True
        try:
            async with asyncio.timeout(self.server.ping_timeout):
                return await self._finish_upgrade(socket)
        except TimeoutError:
            logger.info(
                "sid=%s websocket upgrade timed out after %s s: the client"
                " keeps polling",
                socket.sid,
                self.server.ping_timeout,
            )
            socket.upgraded = False
            return False
        except (OSError, ValueError):
            return False
        finally:
            socket.upgrading = False

    async def _finish_upgrade(self, socket: Any) -> bool:
        """Reply to the client's PING probe, then wait for its UPGRADE packet."""
        probe = eio_packet.Packet(encoded_packet=await self._read())
        if probe.packet_type != eio_packet.PING or probe.data != "probe":
            logger.info(
                "sid=%s websocket upgrade failed: expected a PING probe", socket.sid
            )
            return False
        await self.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
        # The NOOP ends the long poll that is still open.
        await socket.queue.put(eio_packet.Packet(eio_packet.NOOP))
        upgrade = eio_packet.Packet(encoded_packet=await self._read())
        if upgrade.packet_type != eio_packet.UPGRADE:
            logger.info("sid=%s websocket upgrade failed: expected UPGRADE", socket.sid)
            socket.upgraded = False
            return False
        socket.upgraded = True
        return True

    async def _serve(self, socket: Any) -> None:
        """Pass frames to the socket until either side closes, then close it."""
        queue = socket.queue
        self._queue = queue
        # A compressed frame may wait for aiohttp's compressor, so those all
        # go through the queue.
        self._direct = None if self.compress else self._send_now
        # Packets queued before the WebSocket was served, such as a new
        # socket's OPEN, go out from here, which saves a writer task.
        if await self._write(queue):
            queue.on_put = self._start_writer
            await self._receive(socket)
        # The end mark starts a writer if none runs, and it closes the
        # WebSocket once the packets before the mark are out.
        await queue.put(None)
        if self._writer is not None:
            await self._writer
        await socket.close(
            wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE
        )

    async def _receive(self, socket: Any) -> None:
        """Pass frames to the socket until the client or the server closes.

        A read has no deadline of its own: `_check_pong` closes a socket
        whose client does not reply to a PING in time. The loop awaits
        aiohttp's `receive` itself, not through `_read` and python-engineio's
        `wait`, because each coroutine between them would keep a frame for as
        long as the socket is idle.
        """
        receive = self._sock.receive
        limit = self.server.max_http_buffer_size
        while True:
            try:
                message = await receive()
            except (OSError, asyncio.CancelledError):
                # A cancelled read ends the loop like a closed one, as in
                # python-engineio, so that the socket is still closed after.
                return
            data = message.data
            # CLOSE, CLOSED and ERROR messages carry no text or bytes.
            if not isinstance(data, str | bytes) or len(data) > limit:
                return
            try:
                decoded = eio_packet.Packet(encoded_packet=data)
            except ValueError as exc:
                self.server.bad_packet(socket.sid, exc)
                continue
            if not 0 <= decoded.packet_type < len(eio_packet.packet_names):
                # python-engineio would fail to log its name, with a traceback.
                error = ValueError(f"unknown packet type {decoded.packet_type}")
                self.server.bad_packet(socket.sid, error)
                continue
            try:
                await socket.receive(decoded)
            except engineio.exceptions.UnknownPacketError:
                pass
            except engineio.exceptions.SocketIsClosedError:
                return
            except Exception:
                logger.exception("sid=%s failed to handle a packet", socket.sid)

    def _start_writer(self) -> None:
        """Start `_write` for packets that were queued, unless it runs already."""
        queue = self._queue
        if self._writer is None and queue is not None:
            queue.send_now = None
            self._writer = asyncio.create_task(self._write(queue))

    async def _write(self, queue: PacketQueue) -> bool:
        """Send queued packets in order, and return whether the WebSocket is open.

        It returns True once the queue is empty, and packets go out from the
        sending task again. At the end mark or a failed write, it closes the
        WebSocket and returns False.

        A PING is always queued, and another packet only when it cannot go
        out at once: the client is behind on reading, or other packets wait
        before it. So the writer task runs only while the queue has packets,
        and an idle socket has none between PINGs. Until this returns, packets
        put on the queue wait their turn behind the others.

        Unlike python-engineio's loop, this one has no idle deadline. The
        server pings every socket, and the reader's deadline ends a silent
        one, which ends its `_serve` too.
        """
        try:
            while not queue.empty():
                item = queue.get_nowait()
                queue.task_done()
                if item is None:
                    break
                await self.send(item.encode())
            else:
                queue.send_now = self._direct
                return True
        except Exception as exc:
            logger.info("sid=%s websocket write failed: %r", self._sid, exc)
        finally:
            self._writer = None
        # Nothing more goes out.
        queue.on_put = None
        queue.send_now = None
        await self.close()
        return False

    async def _send_now(self, pkt: eio_packet.Packet, queue: PacketQueue) -> None:
        """Write one packet from the sending task, or queue it for `_write`.

        The packet is queued when the client is behind on reading, so that a
        slow client makes its own writer wait, never the sender.
        """
        transport = self._transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_WRITE_BACKLOG
        ):
            queue.put_nowait(pkt)
            return
        try:
            await self.send(pkt.encode())
        except Exception as exc:
            logger.info("sid=%s websocket write failed: %r", self._sid, exc)
            # The end mark closes the WebSocket, as a failed write in `_write`
            # does.
            queue.send_now = None
            queue.put_nowait(None)


class TextPacket(packet.Packet):  # type: ignore[misc]
    """A Socket.IO packet that never carries binary attachments.

    python-socketio scans every outgoing payload for bytes to decide between
    EVENT and BINARY_EVENT. This server only ever sends JSON text, so the scan
    is skipped; incoming binary packets still decode as usual.
    """

    def data_is_binary(self, data: Any) -> bool:
        return False


class ChatManager(socketio.AsyncManager):  # type: ignore[misc]
    """The in-process client manager, without a Task per recipient.

    python-socketio's manager starts a Task for every socket it sends to and
    waits for all of them. Queueing an Engine.IO packet does not block, so
    sending in a plain loop costs a fraction of that and keeps the order.

    Events for a socket whose connect handler is still running are held back
    until its CONNECT packet and `session` event have gone out. The handler
    puts the socket in its rooms, and python-socketio would otherwise send
    that room's events to the client before it is even connected.

    It also keeps the rooms of each socket. python-socketio finds them by
    checking every room of the namespace, so each disconnect cost time in
    proportion to all the rooms, and a mass disconnect grew quadratically.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Frames waiting for each socket that is still connecting, by sid.
        self.held_frames: dict[str, list[eio_packet.Packet]] = {}
        # Sockets to disconnect as soon as their connect completes.
        self.cut_off: set[str] = set()
        # Called with a room's name when it closes here or, in a cluster,
        # when another node closes it.
        self.on_room_closed: Callable[[Any], None] | None = None
        # The rooms of each socket, by namespace and sid, in the order entered.
        self._rooms_of: dict[tuple[str, str], dict[Any, None]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        if room is None:
            # The namespace's own room maps sids to Engine.IO sids and back.
            super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        else:
            self._enter_plain_room(sid, namespace, room, eio_sid)
        self._rooms_of.setdefault((namespace, sid), {})[room] = None

    def _enter_plain_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None
    ) -> None:
        # NOTE: the checks of python-socketio 5.x's `basic_enter_room`, with
        # a dict for the room where it makes a `bidict`. Only the namespace's
        # room is ever read backwards. Each socket has two rooms of its own,
        # its sid's and its person's, and a bidict 0.24 with one entry took
        # 12 µs to create and 270 bytes more than a dict (timeit, tracemalloc).
        rooms = self.rooms.get(namespace)
        if rooms is None:
            if eio_sid is None:
                raise ValueError("sid is not connected to requested namespace")
            rooms = self.rooms[namespace] = {}
        if sid != room and self.is_sid_room(namespace, room):
            raise ValueError("cannot enter a sid room")
        if eio_sid is None:
            eio_sid = rooms[None][sid]
        members = rooms.get(room)
        if members is None:
            members = rooms[room] = {}
        members[sid] = eio_sid

    def get_participants(self, namespace: str, room: Any) -> Iterator[tuple[str, str]]:
        """Yield `(sid, eio_sid)` of the sockets in a room, or in a list of rooms.

        The members are copied before the first one is yielded, so callers
        may enter, leave or await while they iterate.
        """
        rooms = self.rooms.get(namespace, {})
        names = (
            [room] if isinstance(room, str) or not hasattr(room, "__len__") else room
        )
        participants: dict[str, str] = {}
        for name in names:
            participants.update(rooms.get(name, {}))
        yield from participants.items()

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # NOTE: the same steps as python-socketio 5.x's own `basic_disconnect`,
        # with the socket's rooms taken from the index.
        for room in list(self._rooms_of.pop((namespace, sid), {})):
            super().basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    # A person's own room contains all of that person's sockets, so moving its
    # members needs no list of sids. The cluster's manager repeats each move
    # on every node.

    async def move_in(self, members: Any, room: Any, namespace: str = "/") -> None:
        """Put every socket of room `members` into `room` as well."""
        self.basic_move(namespace, members, room, enter=True)

    async def move_out(self, members: Any, room: Any, namespace: str = "/") -> None:
        """Take every socket of room `members` out of `room`."""
        self.basic_move(namespace, members, room, enter=False)

    async def disconnect_members(self, members: Any, namespace: str = "/") -> None:
        """Disconnect every socket of room `members` from the server."""
        for sid, _ in self.get_participants(namespace, members):
            if sid in self.held_frames:
                # python-socketio skips a socket whose connect handler is running.
                self.cut_off.add(sid)
            else:
                await self.server.disconnect(
                    sid, namespace=namespace, ignore_queue=True
                )

    def basic_move(
        self, namespace: str, members: Any, room: Any, *, enter: bool
    ) -> None:
        """Put this node's sockets of room `members` into `room`, or take them out."""
        for sid, eio_sid in self.get_participants(namespace, members):
            if enter:
                self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
            else:
                self.basic_leave_room(sid, namespace, room)

    async def close_room(self, room: Any, namespace: str) -> None:
        await super().close_room(room, namespace)
        if self.on_room_closed is not None:
            self.on_room_closed(room)

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        rooms = self._rooms_of.get((namespace, sid), {})
        return [room for room in rooms if room is not None]

    def room_entries(self) -> int:
        """Count the sockets with rooms in the index, for leak checks."""
        return len(self._rooms_of)

    async def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        sid: str | None = await super().pre_connect(eio_sid, namespace)
        if sid is not None:
            self.held_frames[sid] = []
        return sid

    def release(self, sid: str) -> list[eio_packet.Packet]:
        """Stop holding events for `sid` and return those held so far."""
        return self.held_frames.pop(sid, [])

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        self.held_frames.pop(sid, None)
        self.cut_off.discard(sid)
        return await super().disconnect(sid, namespace, **kwargs)

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **options: Any,
    ) -> None:
        if callback is not None or namespace not in self.rooms:
            await super().emit(
                event, data, namespace, room, skip_sid, callback, to, **options
            )
            return
        if isinstance(data, tuple):
            args = list(data)
        elif data is None:
            args = []
        else:
            args = [data]
        skipped = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        frame = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        for sid, eio_sid in self.get_participants(namespace, to or room):
            if sid in skipped:
                continue
            held = self.held_frames.get(sid)
            if held is None:
                await self.server._send_eio_packet(eio_sid, frame)
            else:
                held.append(frame)


class PacketQueue:
    """An unbounded FIFO with the part of `asyncio.Queue` that python-engineio uses.

    Each socket has one, for the packets waiting to go out. An idle socket's
    `asyncio.Queue` has three deques and an event, about 3 KB by tracemalloc.
    This one keeps its item and waiter lists only while they are not empty.
    """

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished", "on_put", "send_now")

    def __init__(self) -> None:
        # The WebSocket's `_send_now`, set while no packet waits to go out.
        # `put` passes a packet to it instead of queueing.
        self.send_now: Callable[[Any, PacketQueue], Awaitable[None]] | None = None
        # Called when a packet is queued and no task waits in `get`: the
        # WebSocket starts its writer then.
        self.on_put: Callable[[], None] | None = None
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._joiners: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._unfinished += 1
        if self._getters:
            self._wake_getter()
        elif self.on_put is not None:
            self.on_put()

    async def put(self, item: Any) -> None:
        send_now = self.send_now
        if send_now is not None and item is not None and not self._items:
            await send_now(item, self)
        else:
            self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if self._getters is not None and waiter in self._getters:
                    self._getters.remove(waiter)
                if self._items and not waiter.cancelled():
                    # Woken and cancelled at once: the item goes to the next.
                    self._wake_getter()
                raise
        return self.get_nowait()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners:
            for joiner in self._joiners:
                if not joiner.done():
                    joiner.set_result(None)
            self._joiners = None

    async def join(self) -> None:
        if self._unfinished == 0:
            return
        joiner = asyncio.get_running_loop().create_future()
        if self._joiners is None:
            self._joiners = []
        self._joiners.append(joiner)
        await joiner

    def _wake_getter(self) -> None:
        while self._getters:
            waiter = self._getters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break
        if not self._getters:
            self._getters = None


class CoarseTimers:
    """Callbacks that run up to `resolution_s` late, sharing loop timers.

    Every socket waits for its next PING, and after each PING for its PONG.
    A uvloop timer takes about 530 bytes (tracemalloc). Here the callbacks
    due in the same slot of `resolution_s` share one loop timer, and each
    costs a tuple in the slot's list. A callback cannot be cancelled, so it
    checks when it runs whether it still has work to do.
    """

    def __init__(self, resolution_s: float = 0.05) -> None:
        self.resolution_s = resolution_s
        self._slots: dict[int, list[tuple[Any, ...]]] = {}

    def call_later(
        self, delay_s: float, callback: Callable[..., None], *args: Any
    ) -> None:
        """Run `callback(*args)` after `delay_s`, up to `resolution_s` later."""
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + delay_s) / self.resolution_s)
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = []
            loop.call_at(slot * self.resolution_s, self._run, slot)
        entries.append((callback, *args))

    def pending(self) -> int:
        """Return how many callbacks wait."""
        return sum(len(entries) for entries in self._slots.values())

    def _run(self, slot: int) -> None:
        for callback, *args in self._slots.pop(slot, ()):
            try:
                callback(*args)
            except Exception:
                logger.exception("timer callback %r failed", callback)


class ChatEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server with less state per idle socket.

    Each socket's outgoing queue is a `PacketQueue`, and its next PING and
    the deadline for its PONG wait in `timers` instead of in a Task of their
    own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timers = CoarseTimers()
        self.bad_packets = 0

    def bad_packet(self, eio_sid: str, exc: BaseException) -> None:
        """Count a dropped malformed packet, and log the first few, then one in many."""
        self.bad_packets += 1
        count = self.bad_packets
        if count <= BAD_PACKET_LOG_FIRST or count % BAD_PACKET_LOG_EVERY == 0:
            logger.warning(
                "eio_sid=%s sent a malformed packet, dropped (%d so far): %s",
                eio_sid,
                count,
                str(exc)[:200],
            )

    def create_queue(self, *args: Any, **kwargs: Any) -> PacketQueue:
        # NOTE: python-engineio 4.x calls this for each socket's outgoing
        # queue and uses put, put_nowait, get, get_nowait, task_done, join
        # and empty on it, as PacketQueue provides.
        return PacketQueue()

    def start_background_task(
        self, target: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        # NOTE: python-engineio 4.x schedules a socket's next PING by starting
        # `AsyncSocket._send_ping` here, which sleeps for the ping interval in
        # a Task: a Task, a coroutine, a future and a timer for every idle
        # socket. A shared timer does the same.
        if getattr(target, "__func__", None) is _SEND_PING and not args:
            socket = cast(Any, target).__self__
            self.timers.call_later(self.ping_interval, _send_ping, socket)
            return None
        return super().start_background_task(target, *args, **kwargs)


_SEND_PING = engineio.async_socket.AsyncSocket._send_ping


def _send_ping(socket: engineio.async_socket.AsyncSocket) -> None:
    """Queue a PING for `socket`, as python-engineio's `_send_ping` does.

    A PONG clears `last_ping` and schedules the next PING, and `_check_pong`
    runs once the client's time to reply to this one is up.
    """
    if socket.closing or socket.closed:
        return
    sent_at = socket.last_ping = time.time()
    socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
    socket.server.timers.call_later(
        socket.server.ping_timeout, _check_pong, socket, sent_at
    )


def _check_pong(socket: engineio.async_socket.AsyncSocket, sent_at: float) -> None:
    """Close `socket` if its client has not replied to the PING sent at `sent_at`.

    This is the only deadline on a WebSocket's reads, so one callback per
    socket in `CoarseTimers` does the work of a timeout around every read. The
    end mark on the queue closes the WebSocket: aiohttp sends a CLOSE frame,
    ends the waiting read and closes the connection. python-engineio's own
    monitor may have closed the Engine.IO socket already, but it leaves the
    WebSocket open, so the end mark goes out in that case too.
    """
    if socket.last_ping != sent_at:
        return
    logger.info("sid=%s sent no PONG within the ping timeout: closing", socket.sid)
    if not (socket.closing or socket.closed):
        socket.server.start_background_task(
            socket.close,
            wait=False,
            abort=True,
            reason=socket.server.reason.PING_TIMEOUT,
        )
    socket.queue.put_nowait(None)


class ChatSocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """An `AsyncServer` that replies to malformed events instead of raising.

    Every packet python-socketio cannot decode, and every event whose name is
    not a plain string, is logged as a client error and dropped. An event that
    requested an acknowledgement gets an `invalid_payload` reply.
    """

    def __init__(
        self,
        *,
        websocket_compression: bool = False,
        client_manager: socketio.AsyncManager | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            json=OrjsonCodec,
            serializer=TextPacket,
            client_manager=client_manager or ChatManager(),
            **options,
        )
        engineio.payload.Payload.max_decode_packets = MAX_PACKETS_PER_POST
        # NOTE: `_async` is python-engineio's table of driver classes and
        # functions. A copy on this instance swaps the WebSocket class and
        # the environ for this server only.
        self.eio._async = {
            **self.eio._async,
            "websocket": functools.partial(
                ChatWebSocket, compress=websocket_compression
            ),
            "translate_request": RequestEnviron,
        }
        # Called with the sid once a client's CONNECT packet went out.
        self.after_connect: Callable[[str], Awaitable[None]] | None = None

    async def _handle_connect(
        self, eio_sid: str, namespace: str | None, data: Any
    ) -> None:
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
            # Released even when the handler raised, so that nothing is kept.
            held = self.manager.release(sid) if sid is not None else []
        if sid is None:
            return
        if self.after_connect is not None:
            await self.after_connect(sid)
        for frame in held:
            await self._send_eio_packet(eio_sid, frame)
        if sid in self.manager.cut_off:
            await self.disconnect(sid, ignore_queue=True)

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return ChatEngineServer

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
            self.eio.bad_packet(eio_sid, exc)

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        name = data[0] if isinstance(data, list) and data else None
        if isinstance(name, str) and name not in RESERVED_EVENTS:
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        self.eio.bad_packet(eio_sid, ValueError(f"invalid event name {_preview(name)}"))
        if id is None:
            return
        reply = {
            "ok": False,
            "error": {
                "code": "invalid_payload",
                "message": "the event name must be a string and not a reserved name",
            },
        }
        await self._send_packet(
            eio_sid,
            self.packet_class(
                packet.ACK, namespace=namespace or "/", id=id, data=[reply]
            ),
        )


def _preview(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:64]
