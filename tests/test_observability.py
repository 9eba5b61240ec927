"""Metrics, readiness, log lines, and a SIGTERM in the middle of a chat."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client import Histogram

from sio_server.metrics import WAIT_BUCKETS, LoopLagMonitor
from tests.support import (
    ChatClient,
    Clients,
    ServerProcess,
    matched_pair,
    scrape_metrics,
)


def say(chat_id: str, text: str) -> dict[str, str]:
    return {"chat_id": chat_id, "text": text, "client_id": text}


async def test_metrics_follow_a_chat(server: ServerProcess, clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients, first_message="hi")
    before = await scrape_metrics(server)
    assert before["chat_time_to_match_seconds_count"] == 1
    assert before['chat_chats{status="active"}'] == 1
    assert before['chat_connected_sockets{role="visitor"}'] == 1
    assert before["chat_first_agent_reply_seconds_count"] == 0

    assert (await agent.call("message", say(chat_id, "hello")))["ok"]
    assert (await agent.call("message", say(chat_id, "again")))["ok"]
    assert (await visitor.call("agent_ready"))["error"]["code"] == "forbidden"
    assert (await visitor.call("end_chat", {"chat_id": chat_id}))["ok"]

    after = await scrape_metrics(server)
    assert after["chat_first_agent_reply_seconds_count"] == 1
    assert after["chat_duration_seconds_count"] == 1
    assert after['chat_chats{status="ended"}'] == 1
    assert after['chat_chats{status="active"}'] == 0
    assert after['chat_messages_total{role="agent"}'] == 2
    assert after['chat_messages_total{role="visitor"}'] == 1
    assert after['chat_event_errors_total{code="forbidden"}'] == 1
    assert after['chat_lifecycle_total{transition="ended"}'] == 1
    # The two messages sent into the open chat are timed (the first one was
    # stored with the chat), and the loop's lag is sampled all along.
    assert after["chat_message_write_seconds_count"] == 2
    assert after["chat_event_loop_lag_seconds_count"] > 0


def cumulative_buckets(histogram: Histogram) -> dict[str, float]:
    """Return the histogram's cumulative count by upper bound, "+Inf" last."""
    return {
        sample.labels["le"]: sample.value
        for sample in histogram.collect()[0].samples
        if sample.name.endswith("_bucket")
    }


async def test_loop_lag_records_a_blocked_loop() -> None:
    lag = Histogram("lag_seconds", "", buckets=WAIT_BUCKETS, registry=None)
    monitor = LoopLagMonitor(lag, interval_s=0.01)
    monitor.start()
    await asyncio.sleep(0.05)
    # A callback that blocks the loop for 80 ms delays the next sample by
    # about that much.
    asyncio.get_running_loop().call_soon(time.sleep, 0.08)
    await asyncio.sleep(0.15)
    monitor.stop()
    counts = cumulative_buckets(lag)
    assert counts["0.05"] < counts["+Inf"], counts
    assert counts["0.1"] == counts["+Inf"], counts

    await asyncio.sleep(0.05)
    assert cumulative_buckets(lag)["+Inf"] == counts["+Inf"], "sampled after stop"


async def test_readyz(server: ServerProcess) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/readyz") as response,
    ):
        assert response.status == 200
        assert await response.json() == {"status": "ready", "store": "ok"}


async def test_json_logs_without_message_text(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_LOG_FORMAT="json")
    agent, visitor, chat_id = await matched_pair(clients)
    secret = "my card number is 4111"
    assert (await visitor.call("message", say(chat_id, secret)))["ok"]
    assert (await agent.call("end_chat", {"chat_id": chat_id}))["ok"]
    await asyncio.sleep(0.2)

    log = clients.server.log()
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    messages = [entry["message"] for entry in entries]
    for event in ("connect sid=", "queued chat=", "matched chat=", "ended chat="):
        assert any(line.startswith(event) for line in messages), event
    assert all(
        {"time", "level", "logger", "message"} <= set(entry) for entry in entries
    )
    assert secret not in log
    assert agent.auth["token"] not in log
    assert visitor.auth["token"] not in log


async def send_until_dropped(
    client: ChatClient, chat_id: str, acked: list[dict[str, Any]]
) -> None:
    for n in range(2000):
        try:
            reply = await client.call("message", say(chat_id, f"m{n}"), timeout=2)
        except Exception:
            return
        if not reply["ok"]:
            # Refused while the server drains: the client would retry later.
            return
        acked.append(reply["message"])


async def read_all(client: ChatClient, chat_id: str) -> list[dict[str, Any]]:
    """Every stored message of a chat, one `history` page at a time."""
    messages: list[dict[str, Any]] = []
    while True:
        after = messages[-1]["seq"] if messages else 0
        page = await client.call(
            "history", {"chat_id": chat_id, "after_seq": after, "limit": 500}
        )
        messages.extend(page["messages"])
        if not page["has_more"]:
            return messages


async def test_sigterm_mid_chat_loses_nothing(
    server: ServerProcess, clients: Clients
) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    acked: list[dict[str, Any]] = []
    sender = asyncio.create_task(send_until_dropped(visitor, chat_id, acked))
    await asyncio.sleep(0.5)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(server.process.wait, 15)
    await sender
    assert acked, "no message was acknowledged before the signal"

    server.start()
    for client in (agent, visitor):
        await client.next("session", timeout=20)
    # The chat goes on, and the agent reads every acknowledged message once.
    stored = [message["client_id"] for message in await read_all(agent, chat_id)]
    assert stored[: len(acked)] == [message["client_id"] for message in acked]
    assert len(stored) == len(set(stored))
    agent.drain("message")
    reply = await visitor.call("message", say(chat_id, "still here"))
    assert reply["ok"], reply
    assert (await agent.next("message", timeout=5))["text"] == "still here"
