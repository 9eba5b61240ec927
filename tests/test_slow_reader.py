"""A client that stops reading delays only its own packets.

The WebSocket writer hands a packet straight to the socket when nothing is
waiting before it, from the task that sent it. Once a client falls behind, its
packets wait in its own queue instead, so the sender's reply still comes at
once and the order of the slow client's packets is kept.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from tests.support import Clients, ServerProcess

TEXT = "x" * 3990
# Maximum time for a reply to the agent while its partner reads nothing.
REPLY_WITHIN_S = 2.0


def bytes_to_stall() -> int:
    """Return more bytes than the server's socket and transport can buffer.

    The kernel grows a TCP send buffer up to the third value of
    net.ipv4.tcp_wmem (4 MiB by default on Linux), and the transport pauses
    writing at 64 KiB, so 2 MiB more than the maximum stalls the writes.
    """
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem", encoding="ascii") as limits:
            largest = int(limits.read().split()[2])
    except (OSError, ValueError, IndexError):
        largest = 4 * 2**20
    return largest + 2 * 2**20


class StalledVisitor:
    """A visitor on a hand-made WebSocket with a small receive buffer.

    It joins the queue, waits for its chat, then reads nothing until
    `read_messages`, so the server's writes to it back up.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: ServerProcess) -> StalledVisitor:
        address = urlsplit(server.url)
        client_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A fixed size turns off the kernel's growth of the buffer.
        client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client_socket.setblocking(False)
        await asyncio.get_running_loop().sock_connect(
            client_socket, (address.hostname, address.port)
        )
        reader, writer = await asyncio.open_connection(sock=client_socket)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {address.netloc}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response_head = await reader.readuntil(b"\r\n\r\n")
        assert response_head.startswith(b"HTTP/1.1 101"), response_head
        return cls(reader, writer)

    def send(self, text: str) -> None:
        """Send a short text frame, masked as a client must."""
        payload = text.encode()
        assert len(payload) < 126, "only frames under 126 bytes are supported"
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def receive(self) -> str:
        """Return the text of the next frame from the server."""
        first, second = await self.reader.readexactly(2)
        assert first == 0x81, f"expected a final text frame, got {first:#x}"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return (await self.reader.readexactly(length)).decode()

    async def wait_for(self, prefix: str) -> str:
        """Return the next frame that starts with `prefix`, replying to pings."""
        while True:
            frame = await asyncio.wait_for(self.receive(), 10)
            if frame == "2":
                self.send("3")
            elif frame.startswith(prefix):
                return frame

    async def read_messages(self, count: int) -> list[str]:
        """Return the texts of the next `count` message events."""
        texts = []
        while len(texts) < count:
            frame = await self.wait_for('42["message"')
            texts.append(json.loads(frame[2:])[1]["text"])
        return texts

    def close(self) -> None:
        self.writer.close()


async def test_stalled_reader_delays_no_reply(
    server: ServerProcess, clients: Clients
) -> None:
    agent = await clients.agent(ready=True)
    visitor = await StalledVisitor.connect(server)
    try:
        await visitor.wait_for("0")
        visitor.send('40{"role":"visitor","token":null}')
        await visitor.wait_for('42["session"')
        visitor.send('420["join_queue",{}]')
        await visitor.wait_for("430")
        started = await agent.next("chat_started")
        chat_id = started["chat"]["id"]

        count = bytes_to_stall() // len(TEXT)
        slowest = 0.0
        for n in range(count):
            began = time.monotonic()
            reply: Any = await agent.call(
                "message",
                {"chat_id": chat_id, "text": f"{n} {TEXT}", "client_id": f"m{n}"},
                timeout=REPLY_WITHIN_S * 5,
            )
            slowest = max(slowest, time.monotonic() - began)
            assert reply["ok"], reply
        assert slowest < REPLY_WITHIN_S, f"a reply took {slowest:.2f} s"

        texts = await asyncio.wait_for(visitor.read_messages(count), 60)
        assert [text.split(" ", 1)[0] for text in texts] == [
            str(n) for n in range(count)
        ]
    finally:
        visitor.close()
