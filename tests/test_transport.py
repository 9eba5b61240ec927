"""Transport-level input: polling bursts and malformed packets.

The protocol promises that every event gets a reply, that stock clients work
over polling, and that no input leaves a traceback in the server log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import pytest

from tests.support import Clients, ServerProcess, scrape_metrics

# python-engineio 4.x rejects a polling POST that carries more packets than
# this (`engineio.payload.Payload.max_decode_packets`).
ENGINEIO_PACKETS_PER_POST = 16


class RawSocket:
    """A bare Engine.IO v4 WebSocket that sends hand-written Socket.IO packets."""

    def __init__(self, server: ServerProcess) -> None:
        self.url = (
            server.url.replace("http://", "ws://")
            + "/socket.io/?EIO=4&transport=websocket"
        )
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect_visitor(self) -> None:
        self.ws = await self.http.ws_connect(self.url)
        opening = await self.ws.receive_str(timeout=5)
        assert opening.startswith("0"), opening
        await self.ws.send_str('40{"role": "visitor", "token": null}')
        await self.wait_for("40")

    async def wait_for(self, prefix: str, timeout: float = 2) -> str:
        """Return the next text frame that starts with `prefix`, replying to pings."""
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.ws.receive(timeout=max(0.01, deadline - loop.time()))
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            if frame.data == "2":
                await self.ws.send_str("3")
            elif frame.data.startswith(prefix):
                return str(frame.data)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


async def test_polling_burst_reaches_server(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # A python-socketio polling client's disconnect waits for its pending
    # long-poll, which the server ends only after a ping interval plus a ping
    # timeout. Short ones keep the test at seconds instead of 45 s.
    server = server_factory(CHAT_PING_INTERVAL_S="1", CHAT_PING_TIMEOUT_S="1")
    clients = Clients(server)
    try:
        await send_polling_burst(clients)
    finally:
        await clients.close()


async def send_polling_burst(clients: Clients) -> None:
    visitor = await clients.visitor(transports=["polling"])
    chat_id = (await visitor.call("join_queue", {}))["chat"]["id"]
    count = ENGINEIO_PACKETS_PER_POST * 2

    # The client batches the events queued during one POST into the next one.
    replies = await asyncio.gather(
        *(
            visitor.call(
                "message",
                {"chat_id": chat_id, "text": f"burst {n}", "client_id": f"b{n}"},
                timeout=3,
            )
            for n in range(count)
        ),
        return_exceptions=True,
    )

    answered = [reply for reply in replies if isinstance(reply, dict)]
    assert len(answered) == count, f"{count - len(answered)} events got no reply"
    history = await visitor.call("history", {"chat_id": chat_id})
    assert len(history["messages"]) == count


# Packets with an ack id: the server must reply, as for any unknown event.
PACKETS_NEEDING_REPLY = [
    pytest.param('421[{"name": "message"}, {}]', id="object-event-name"),
    pytest.param('421[["message"], {}]', id="array-event-name"),
    pytest.param('421["connect"]', id="connect-event-without-auth"),
    pytest.param('421["connect", 1, 2, 3]', id="connect-event-extra-args"),
    pytest.param('421["disconnect", "a", "b", "c"]', id="disconnect-event-extra-args"),
]


@pytest.mark.parametrize("packet", PACKETS_NEEDING_REPLY)
async def test_malformed_event_gets_reply(server: ServerProcess, packet: str) -> None:
    raw = RawSocket(server)
    try:
        await raw.connect_visitor()
        assert raw.ws is not None
        await raw.ws.send_str(packet)
        ack = await raw.wait_for("431")
        assert '"ok":false' in ack.replace(" ", ""), ack

        await raw.ws.send_str('422["history", {}]')
        assert await raw.wait_for("432"), "socket stopped answering"
    finally:
        await raw.close()
    assert "Traceback" not in server.log(), server.log()[-3000:]


# Packets that python-socketio fails to decode, one Socket.IO packet each.
UNDECODABLE_PACKETS = [
    pytest.param("42[", id="truncated-json"),
    pytest.param("42[]", id="empty-array"),
    pytest.param("42123", id="number-payload"),
    pytest.param("4x", id="unknown-packet-type"),
    pytest.param("42" + "9" * 200 + '["history", {}]', id="overlong-ack-id"),
    pytest.param('42["history", ' + "[" * 5000 + "]" * 5000 + "]", id="deep-nesting"),
]


async def send_then_check_alive(server: ServerProcess, frames: list[str]) -> None:
    """Send `frames` as a visitor, then check that the socket still replies."""
    raw = RawSocket(server)
    try:
        await raw.connect_visitor()
        assert raw.ws is not None
        for frame in frames:
            await raw.ws.send_str(frame)
        await raw.ws.send_str('422["history", {}]')
        assert await raw.wait_for("432"), "socket stopped answering"
    finally:
        await raw.close()


@pytest.mark.parametrize("packet", UNDECODABLE_PACKETS)
async def test_undecodable_packet_logs_no_traceback(
    server: ServerProcess, packet: str
) -> None:
    await send_then_check_alive(server, [packet])
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.mark.parametrize(("size", "served"), [(65536, True), (65537, False)])
async def test_largest_packet_is_the_limit(
    server_factory: Callable[..., ServerProcess], size: int, served: bool
) -> None:
    raw = RawSocket(server_factory(CHAT_MAX_PAYLOAD_BYTES="65536"))
    try:
        await raw.connect_visitor()
        assert raw.ws is not None
        head, tail = '421["typing", {"chat_id": "', '"}]'
        await raw.ws.send_str(head + "x" * (size - len(head) - len(tail)) + tail)
        if served:
            ack = await raw.wait_for("431")
            assert '"ok":false' in ack.replace(" ", ""), ack
        else:
            # Frames sent before the close, such as `session`, come first.
            frame = await raw.ws.receive(timeout=5)
            while frame.type == aiohttp.WSMsgType.TEXT:
                assert not frame.data.startswith("431"), frame.data
                frame = await raw.ws.receive(timeout=5)
            assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await raw.close()


# Engine.IO frames that python-engineio cannot decode, or of no packet type.
UNDECODABLE_FRAMES = [
    pytest.param("", id="empty"),
    pytest.param("x", id="not-a-type"),
    pytest.param("9", id="type-9"),
    pytest.param("-1", id="negative-type"),
]


@pytest.mark.parametrize("frame", UNDECODABLE_FRAMES)
async def test_undecodable_frames_dropped_quietly(
    server: ServerProcess, frame: str
) -> None:
    await send_then_check_alive(server, [frame] * 100)
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    # The first 20 are logged, then one in a thousand.
    assert log.count("sent a malformed packet") == 20, log[-3000:]


@pytest.mark.parametrize(("setting", "expected"), [("off", None), ("on", "deflate")])
async def test_websocket_compression_setting(
    server_factory: Callable[..., ServerProcess], setting: str, expected: str | None
) -> None:
    server = server_factory(CHAT_WS_COMPRESSION=setting)
    url = (
        server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    )
    async with aiohttp.ClientSession() as http, http.ws_connect(url, compress=15) as ws:
        extensions = ws._response.headers.get("Sec-WebSocket-Extensions")
        assert (await ws.receive_str(timeout=5)).startswith("0")
    if expected is None:
        assert extensions is None
    else:
        assert extensions is not None
        assert expected in extensions


# Heartbeats: the server pings every interval after the client's last PONG, and
# closes a socket that stays silent for an interval plus the timeout.
PING_INTERVAL_S = 0.5
PING_TIMEOUT_S = 0.5


def short_pings(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(
        CHAT_PING_INTERVAL_S=str(PING_INTERVAL_S),
        CHAT_PING_TIMEOUT_S=str(PING_TIMEOUT_S),
    )


async def test_answered_pings_keep_websocket_open(
    server_factory: Callable[..., ServerProcess],
) -> None:
    raw = RawSocket(short_pings(server_factory))
    try:
        await raw.connect_visitor()
        assert raw.ws is not None
        pings = 0
        loop = asyncio.get_running_loop()
        until = loop.time() + 3
        while loop.time() < until:
            try:
                frame = await raw.ws.receive(timeout=until - loop.time())
            except TimeoutError:
                break
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            if frame.data == "2":
                pings += 1
                await raw.ws.send_str("3")
        # One ping per half second over three seconds, less scheduling slack.
        assert pings >= 4, pings
        await raw.ws.send_str('421["history", {}]')
        assert await raw.wait_for("431"), "socket stopped answering"
    finally:
        await raw.close()


async def test_silent_websocket_is_closed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = short_pings(server_factory)
    raw = RawSocket(server)
    try:
        await raw.connect_visitor()
        assert raw.ws is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        pings = 0
        while True:
            frame = await raw.ws.receive(timeout=5)
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            pings += int(frame.data == "2")
        closed_after = loop.time() - started
    finally:
        await raw.close()
    # No PONG, so no second PING.
    assert pings == 1
    # The first PING goes out after one interval, and the socket is closed
    # when the timeout after it is up.
    assert closed_after < PING_INTERVAL_S + PING_TIMEOUT_S + 1.5, closed_after
    # The server disconnected the visitor too, not only the connection.
    metrics = await scrape_metrics(server)
    assert metrics['chat_connected_sockets{role="visitor"}'] == 0


async def test_unanswered_ping_closes_busy_websocket(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """A client that sends events but never a PONG is closed all the same."""
    raw = RawSocket(short_pings(server_factory))
    try:
        await raw.connect_visitor()
        assert raw.ws is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        closed = False
        while loop.time() - started < 5:
            await raw.ws.send_str('42["typing", {}]')
            try:
                frame = await raw.ws.receive(timeout=0.1)
            except TimeoutError:
                continue
            if frame.type != aiohttp.WSMsgType.TEXT:
                closed = True
                break
        closed_after = loop.time() - started
    finally:
        await raw.close()
    assert closed, "the server kept a socket that never answered a PING"
    assert closed_after < PING_INTERVAL_S + PING_TIMEOUT_S + 1.5, closed_after


async def test_answered_pings_keep_polling_open(
    server_factory: Callable[..., ServerProcess],
) -> None:
    clients = Clients(short_pings(server_factory))
    try:
        visitor = await clients.visitor(transports=["polling"])
        sid = visitor.sio.get_sid()
        await asyncio.sleep(3)
        # The same session, not one the client reconnected meanwhile.
        assert visitor.sio.get_sid() == sid
        assert visitor.sio.transport() == "polling"
        reply = await visitor.call("join_queue", {})
        assert reply["chat"]["status"] == "queued", reply
    finally:
        await clients.close()


async def test_stalled_upgrade_is_closed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """An upgrade WebSocket that never sends the probe is closed."""
    server = short_pings(server_factory)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        polling = server.url + "/socket.io/?EIO=4&transport=polling"
        async with http.get(polling) as response:
            opening = await response.text()
        assert opening.startswith("0"), opening
        sid = json.loads(opening[1:])["sid"]
        upgrade = (
            server.url.replace("http://", "ws://")
            + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
        )
        async with http.ws_connect(upgrade) as ws:
            started = loop.time()
            frame = await ws.receive(timeout=PING_INTERVAL_S + PING_TIMEOUT_S + 5)
            closed_after = loop.time() - started
    assert frame.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
    ), frame
    assert closed_after < PING_INTERVAL_S + PING_TIMEOUT_S + 1.5, closed_after
