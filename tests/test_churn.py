"""Connect, join, send and leave many times; afterwards the server is back at rest.

Visitors come and go in parallel, some of them dropping their connection in
the middle of a handler. Once their grace periods are over, three checks
follow. Every count the server keeps in memory (sockets, rooms, locks, timers,
queue positions) equals its value before the churn. The queue is empty.
Resident memory grew by at most `MEMORY_BOUND_MB` after a warm-up.

`CHURN_CYCLES` sets the number of visitors (`make fuzz` runs a long form).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from tests.support import ChatClient, Clients, ServerProcess, scrape_metrics

CYCLES = int(os.environ.get("CHURN_CYCLES", "240"))
# Caches and allocator pools fill up first: in a probe of 5,000 visitors in
# rounds of 1,000, resident memory grew by 7, 2, 5 and 0 MB over the rounds
# after the first.
WARM_UP = max(100, CYCLES // 2)
PARALLEL = 12
MEMORY_BOUND_MB = 25


def at_rest(samples: dict[str, float]) -> dict[str, float]:
    """Pick the counts that must return to their idle values."""
    return {
        key: value
        for key, value in samples.items()
        if key.startswith(("chat_tracked_entries", "chat_connected_"))
        or key in ("chat_queue_length", 'chat_chats{status="active"}')
    }


async def serve_forever(agent: ChatClient) -> None:
    """End every chat the agent gets, after one reply."""
    while True:
        started = await agent.next("chat_started", timeout=3600)
        chat_id = started["chat"]["id"]
        await agent.call(
            "message", {"chat_id": chat_id, "text": "hello", "client_id": "a"}
        )
        await agent.call("end_chat", {"chat_id": chat_id})


async def one_visitor(clients: Clients, n: int) -> None:
    visitor = await clients.visitor()
    kind = n % 4
    if kind == 0:
        # A whole chat, ended by the visitor or the agent, whichever is first.
        await visitor.call("join_queue", {"message": f"v{n}"})
        with contextlib.suppress(TimeoutError):
            await visitor.next("chat_ended", timeout=5)
        await visitor.disconnect()
    elif kind == 1:
        # Gone while its join is being handled.
        await visitor.sio.emit("join_queue", {"message": f"v{n}"})
        await visitor.sio.eio.disconnect(abort=True)
    elif kind == 2:
        # Looks at the page and leaves.
        await visitor.disconnect()
    else:
        # Joins, then drops while a message is in flight.
        await visitor.call("join_queue", {})
        await visitor.sio.emit(
            "message", {"chat_id": "x", "text": "bye", "client_id": f"c{n}"}
        )
        await visitor.sio.eio.disconnect(abort=True)


async def churn(clients: Clients, first: int, count: int) -> None:
    gate = asyncio.Semaphore(PARALLEL)

    async def guarded(n: int) -> None:
        async with gate:
            await one_visitor(clients, n)

    await asyncio.gather(*(guarded(n) for n in range(first, first + count)))


async def settle(server: ServerProcess, expected: dict[str, float]) -> dict[str, float]:
    """Wait until the resting counts equal `expected`, or return the last ones."""
    counts: dict[str, float] = {}
    for _ in range(100):
        counts = at_rest(await scrape_metrics(server))
        if counts == expected:
            break
        await asyncio.sleep(0.2)
    return counts


async def test_churn_returns_to_rest(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_VISITOR_GRACE_S="1")
    clients = Clients(server)
    agent = await clients.agent(ready=True, max_chats=PARALLEL)
    serving = asyncio.create_task(serve_forever(agent))
    try:
        resting = at_rest(await scrape_metrics(server))
        assert resting['chat_connected_sockets{role="agent"}'] == 1

        await churn(clients, 0, WARM_UP)
        assert await settle(server, resting) == resting
        memory_before = (await scrape_metrics(server))["process_resident_memory_bytes"]

        await churn(clients, WARM_UP, CYCLES)
        assert await settle(server, resting) == resting
        samples = await scrape_metrics(server)
        growth_mb = (samples["process_resident_memory_bytes"] - memory_before) / 2**20
        assert growth_mb < MEMORY_BOUND_MB, growth_mb
        assert samples['chat_lifecycle_total{transition="queued"}'] >= CYCLES // 2
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await clients.close()
