"""Shutdown under load: events in flight must end cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tests.database import fetch_rows
from tests.support import ChatClient, Clients, ServerProcess

PUMPING_VISITORS = 3
MESSAGES_IN_FLIGHT = 10


async def pump_messages(
    visitor: ChatClient, chat_id: str, acked: list[str], prefix: str
) -> None:
    """Keep `MESSAGES_IN_FLIGHT` messages outstanding until the connection drops."""
    round_number = 0
    while visitor.sio.connected:
        round_number += 1
        client_ids = [f"{prefix}-{round_number}-{n}" for n in range(MESSAGES_IN_FLIGHT)]
        replies = await asyncio.gather(
            *(
                visitor.call(
                    "message",
                    {"chat_id": chat_id, "text": client_id, "client_id": client_id},
                    timeout=2,
                )
                for client_id in client_ids
            ),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, dict) and reply.get("ok"):
                acked.append(reply["message"]["client_id"])


async def test_stop_during_messages_is_clean(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    clients = Clients(server)
    acked: list[str] = []
    pumps = []
    try:
        for n in range(PUMPING_VISITORS):
            visitor = await clients.visitor()
            chat_id = (await visitor.call("join_queue", {}))["chat"]["id"]
            pumps.append(
                asyncio.create_task(pump_messages(visitor, chat_id, acked, f"v{n}"))
            )
        await asyncio.sleep(0.5)

        await asyncio.to_thread(server.stop)
    finally:
        for pump in pumps:
            pump.cancel()
        for pump in pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await clients.close()

    assert acked, "no message was acknowledged before the stop"
    rows = await fetch_rows(server.database_url, "SELECT client_id FROM messages")
    stored = {row[0] for row in rows}
    assert set(acked) <= stored
    assert "Traceback" not in server.log(), server.log()[-3000:]
