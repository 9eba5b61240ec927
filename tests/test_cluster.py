"""Several nodes sharing PostgreSQL and Redis, behind nginx.

Every test runs real nodes, a real nginx from deploy/nginx.conf.template, a
fresh PostgreSQL database and the machine's Redis (the Redis restart test
starts a redis-server of its own). They skip when one is missing, unless
CHAT_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.cluster import SHORT_PINGS, Cluster, ClusterFactory, RedisServer
from tests.support import (
    ChatClient,
    Clients,
    ServerProcess,
    assert_capacity_kept,
    chat_both_ways,
    collect_started,
    http_json,
    read_history,
    scrape_metrics,
    started_count,
)


class ChatView:
    """What one client has seen of one chat: live `message` events and history.

    A client that reconnects calls `history` after the last `seq` it has, as
    docs/protocol.md describes, and drops messages whose `seq` it has already.
    This one starts after the last `seq` before a gap, so that an event lost
    while Redis was away is fetched too.
    """

    def __init__(self, client: ChatClient, chat_id: str) -> None:
        self.client = client
        self.chat_id = chat_id
        self.messages: dict[int, dict[str, Any]] = {}
        self.live_seqs: list[int] = []

    def take_live(self) -> None:
        """Record the `message` events that arrived since the last call."""
        for message in self.client.drain("message"):
            if message["chat_id"] == self.chat_id:
                self.live_seqs.append(message["seq"])
                self.messages.setdefault(message["seq"], message)

    def contiguous_seq(self) -> int:
        """Return the highest `seq` up to which no message is missing."""
        seq = 0
        while seq + 1 in self.messages:
            seq += 1
        return seq

    async def catch_up(self) -> None:
        """Take live events, then fetch every message after the first gap."""
        self.take_live()
        for message in await read_history(
            self.client, self.chat_id, self.contiguous_seq()
        ):
            self.messages.setdefault(message["seq"], message)
        self.take_live()

    def assert_no_repeats(self) -> None:
        """Check that no `message` event with a `seq` seen live came twice."""
        repeats = len(self.live_seqs) - len(set(self.live_seqs))
        assert repeats == 0, f"seqs delivered twice: {sorted(self.live_seqs)}"

    async def wait_for(self, client_ids: set[str], timeout: float = 20) -> None:
        """Wait until the messages with `client_ids` are seen, at most `timeout` s.

        Catches up after every reconnect, which the client sees as `session`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.client.drain("session"):
                await self.catch_up()
            self.take_live()
            seen = {message["client_id"] for message in self.messages.values()}
            if client_ids <= seen:
                return
            if loop.time() > deadline:
                raise AssertionError(
                    f"{len(client_ids - seen)} messages never arrived:"
                    f" {sorted(client_ids - seen)[:10]}"
                )
            await asyncio.sleep(0.05)


async def send_until_failure(
    client: ChatClient, chat_id: str, prefix: str, acked: list[dict[str, Any]]
) -> str:
    """Send numbered messages until one fails; return that message's client_id.

    The failed message may or may not have been stored, so the caller sends
    it again with the same client_id once the client is back.
    """
    for n in range(1000):
        client_id = f"{prefix}{n}"
        payload = {"chat_id": chat_id, "text": client_id, "client_id": client_id}
        try:
            reply = await client.call("message", payload, timeout=2)
        except socketio.exceptions.SocketIOError:
            return client_id
        if not reply["ok"]:
            return client_id
        acked.append(reply["message"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"{prefix}: 1000 messages went through without a failure")


async def send_with_retries(
    client: ChatClient, chat_id: str, client_id: str, timeout: float = 20
) -> dict[str, Any]:
    """Send one message, retrying with the same client_id until it is acknowledged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    payload = {"chat_id": chat_id, "text": client_id, "client_id": client_id}
    while True:
        try:
            reply = await client.call("message", payload, timeout=2)
        except socketio.exceptions.SocketIOError as exc:
            reply = {"ok": False, "error": repr(exc)}
        if reply["ok"]:
            return dict(reply["message"])
        if loop.time() > deadline:
            raise AssertionError(f"{client_id} was never acknowledged: {reply}")
        await asyncio.sleep(0.2)


def assert_stored_once(
    stored: list[dict[str, Any]], acked: list[dict[str, Any]]
) -> None:
    """Check that the history has gap-free seqs and each acked message once."""
    assert [message["seq"] for message in stored] == list(range(1, len(stored) + 1))
    keys = [
        (message["sender"]["role"], message["sender"]["id"], message["client_id"])
        for message in stored
    ]
    assert len(keys) == len(set(keys)), "a message was stored twice"
    stored_by_id = {message["id"]: message for message in stored}
    for message in acked:
        assert message["id"] in stored_by_id, f"acknowledged but lost: {message}"
        assert stored_by_id[message["id"]]["seq"] == message["seq"]


def count_events(client: ChatClient, event: str) -> int:
    return sum(1 for name, _ in client.received if name == event)


async def next_or_logs(
    cluster: Cluster, client: ChatClient, event: str, timeout: float
) -> Any:
    """Return the next `event` payload, or fail with the end of every log."""
    try:
        return await client.next(event, timeout)
    except TimeoutError:
        raise AssertionError(
            f"no {event} within {timeout} s\n{cluster.logs()}"
        ) from None


async def chat_message_both_ways(
    agent: ChatClient, visitor: ChatClient, chat_id: str
) -> None:
    """Send one message each way in an active chat and check that it arrives."""
    for sender, receiver in ((agent, visitor), (visitor, agent)):
        text = f"from {sender.auth['role']}"
        payload = {"chat_id": chat_id, "text": text, "client_id": text}
        assert (await sender.call("message", payload))["ok"]
        assert (await receiver.next("message"))["text"] == text


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest.mark.parametrize("route", ["direct", "nginx"])
async def test_chat_across_nodes(
    cluster_factory: ClusterFactory, route: str, transport: str
) -> None:
    """A visitor on node 0 and an agent on node 1 chat both ways."""
    cluster = await cluster_factory(2, **SHORT_PINGS)
    clients = Clients(cluster.nodes[0])
    try:
        if route == "direct":
            visitors = clients.at(cluster.nodes[0].url)
            agents = clients.at(cluster.nodes[1].url)
        else:
            visitor_source = await cluster.source_for(0)
            agent_source = await cluster.source_for(1)
            visitors = clients.at(cluster.url, visitor_source)
            agents = clients.at(cluster.url, agent_source)

        agent = await agents.agent(ready=True)
        visitor = await visitors.visitor(transports=[transport])
        assert visitor.sio.transport() == transport
        node0 = await scrape_metrics(cluster.nodes[0])
        node1 = await scrape_metrics(cluster.nodes[1])
        assert node0['chat_connected_sockets{role="visitor"}'] == 1
        assert node1['chat_connected_sockets{role="agent"}'] == 1

        await chat_both_ways(agent, visitor, f"{route} {transport}")
        # A second chat starts from the other side's node.
        await chat_both_ways(agent, visitor, "again")
    finally:
        await clients.close()


async def test_simultaneous_ready_one_match(cluster_factory: ClusterFactory) -> None:
    """Two agents on two nodes go ready at once for one visitor, twenty times."""
    cluster = await cluster_factory(3)
    clients = Clients(cluster.nodes[0])
    try:
        alice = await clients.at(cluster.nodes[0].url).agent("alice@example.com")
        bob = await clients.at(cluster.nodes[1].url).agent("bob@example.com")
        visitors = clients.at(cluster.nodes[2].url)
        wins = {"alice": 0, "bob": 0}
        for round_number in range(20):
            visitor = await visitors.visitor()
            joined = await visitor.call("join_queue", {})
            assert joined["ok"], joined
            chat_id = joined["chat"]["id"]

            readies = await asyncio.gather(
                alice.call("agent_ready", {"max_chats": 1}),
                bob.call("agent_ready", {"max_chats": 1}),
            )
            for reply in readies:
                assert reply["ok"], (round_number, reply)
            started = await visitor.next("chat_started")
            assert started["chat"]["id"] == chat_id
            # Let a second, wrong assignment arrive if there is one.
            await asyncio.sleep(0.3)
            winners = [
                (name, data["chat"]["id"])
                for name, agent in (("alice", alice), ("bob", bob))
                for data in agent.drain("chat_started")
            ]
            assert len(winners) == 1, f"round {round_number}: {winners}"
            assert winners[0][1] == chat_id
            assert visitor.drain("chat_started") == []

            winner = alice if winners[0][0] == "alice" else bob
            wins[winners[0][0]] += 1
            assert (await winner.call("end_chat", {"chat_id": chat_id}))["ok"]
            aways = await asyncio.gather(
                alice.call("agent_away"), bob.call("agent_away")
            )
            for reply in aways:
                assert reply["ok"], (round_number, reply)
            await visitor.disconnect()
        assert sum(wins.values()) == 20
    finally:
        await clients.close()


async def queue_order(node: ServerProcess, admin_token: str) -> list[str]:
    """Return the ids of the queued chats in the order the server serves them."""
    status, body = await http_json(
        node, "GET", "/api/admin/overview", token=admin_token
    )
    assert status == 200, body
    return [entry["chat_id"] for entry in body["queue"]]


async def serve_in_waves(
    agents: list[ChatClient],
    capacities: list[int],
    chat_ids: list[str],
    next_in_line: Callable[[], Awaitable[list[str]]] | None = None,
) -> list[list[str]]:
    """Take every chat in waves of the agents' full capacity, checking each wave.

    A wave fills every agent to its capacity, never beyond, and serves each
    chat once. Before the wave's chats end, `next_in_line` returns the queue
    in the order the next wave must take it. Without `next_in_line`, the next
    wave must be the next chats of `chat_ids`.
    """
    waves: list[list[str]] = []
    remaining = list(chat_ids)
    expected_next: list[str] | None = None
    while remaining:
        size = min(sum(capacities), len(remaining))
        open_chats = await collect_started(agents, size)
        wave_ids = [chat_id for _, chat_id in open_chats]
        assert len(wave_ids) == size, f"wave {len(waves)}: {open_chats}"
        assert len(set(wave_ids)) == size, f"wave {len(waves)} repeats a chat"
        for agent, capacity in zip(agents, capacities, strict=True):
            assert assert_capacity_kept(agent, capacity) <= capacity
        assert set(wave_ids) <= set(remaining), f"wave {len(waves)} served a chat again"
        if expected_next is not None:
            assert set(wave_ids) == set(expected_next[:size]), (
                f"wave {len(waves)} is not the head of the queue"
            )
        remaining = [chat_id for chat_id in remaining if chat_id not in wave_ids]
        if next_in_line is not None:
            expected_next = await next_in_line()
            assert set(expected_next) == set(remaining)
        else:
            expected_next = remaining
        waves.append(wave_ids)

        ends = [agent.call("end_chat", {"chat_id": c}) for agent, c in open_chats]
        for ended in await asyncio.gather(*ends):
            assert ended["ok"], ended
    return waves


async def test_burst_across_nodes_capacity(cluster_factory: ClusterFactory) -> None:
    """Joins and readies at once on three nodes: capacity holds, queue order kept.

    Joins sent at the same moment to different nodes have no order of their
    own, so each later wave is checked against the queue order the server
    reports while every agent is full.
    """
    cluster = await cluster_factory(3)
    clients = Clients(cluster.nodes[0])
    capacities = [2, 2, 3]
    try:
        await cluster.nodes[0].create_agent("root@example.com", is_admin=True)
        admin_token = await cluster.nodes[0].login("root@example.com")
        groups = [clients.at(node.url) for node in cluster.nodes]
        agents = [
            await group.agent(f"agent{n}@example.com") for n, group in enumerate(groups)
        ]
        visitors = [await groups[n % 3].visitor() for n in range(21)]

        joins = [visitor.call("join_queue", {}) for visitor in visitors]
        readies = [
            agent.call("agent_ready", {"max_chats": capacity})
            for agent, capacity in zip(agents, capacities, strict=True)
        ]
        replies = await asyncio.gather(*joins, *readies)
        for reply in replies:
            assert reply["ok"], reply
        chat_ids = [reply["chat"]["id"] for reply in replies[:21]]
        assert len(set(chat_ids)) == 21

        waves = await serve_in_waves(
            agents,
            capacities,
            chat_ids,
            lambda: queue_order(cluster.nodes[1], admin_token),
        )
        assert [len(wave) for wave in waves] == [7, 7, 7]
        for visitor in visitors:
            assert started_count(visitor) == 1
    finally:
        await clients.close()


async def test_join_order_across_nodes(cluster_factory: ClusterFactory) -> None:
    """Visitors who join one after another on three nodes are served in that order.

    The agents go ready while the joins arrive, on nodes of their own.
    """
    cluster = await cluster_factory(3)
    clients = Clients(cluster.nodes[0])
    capacities = [2, 3]
    try:
        agents = [
            await clients.at(cluster.nodes[n].url).agent(f"agent{n}@example.com")
            for n in range(2)
        ]
        groups = [clients.at(node.url) for node in cluster.nodes]
        visitors = [await groups[n % 3].visitor() for n in range(15)]

        readies = [
            asyncio.create_task(agent.call("agent_ready", {"max_chats": capacity}))
            for agent, capacity in zip(agents, capacities, strict=True)
        ]
        chat_ids = []
        for visitor in visitors:
            joined = await visitor.call("join_queue", {})
            assert joined["ok"], joined
            chat_ids.append(joined["chat"]["id"])
        for reply in await asyncio.gather(*readies):
            assert reply["ok"], reply

        waves = await serve_in_waves(agents, capacities, chat_ids)
        assert [set(wave) for wave in waves] == [
            set(chat_ids[start : start + 5]) for start in range(0, 15, 5)
        ]
    finally:
        await clients.close()


async def test_node_killed_mid_chat(cluster_factory: ClusterFactory) -> None:
    """Kill node 1 with SIGKILL while two chats have people on it.

    Chat 1: a visitor and an agent connected through nginx to node 1 send
    messages when it dies. Both come back through nginx to other nodes and
    catch up, and every acknowledged message is stored once.

    Chat 2: its agent was connected to node 1 alone and does not come back.
    The other nodes see node 1's heartbeat expire and start the agent's grace
    period. When it ends, the chat goes back to the queue once, and a third
    agent takes it.
    """
    cluster = await cluster_factory(3, CHAT_AGENT_GRACE_S="3", CHAT_NODE_TTL_S="2")
    clients = Clients(cluster.nodes[0])
    try:
        visitor_source = await cluster.source_for(1)
        agent_source = await cluster.source_for(1, exclude={visitor_source})
        agent = await clients.at(cluster.url, agent_source).agent(
            "alice@example.com", ready=True
        )
        visitor = await clients.at(cluster.url, visitor_source).visitor()
        joined = await visitor.call("join_queue", {})
        chat_id = joined["chat"]["id"]
        assert (await agent.next("chat_started"))["chat"]["id"] == chat_id
        assert (await visitor.next("chat_started"))["chat"]["id"] == chat_id

        lost_agent = await clients.at(cluster.nodes[1].url).agent(
            "bob@example.com", ready=True, reconnection=False
        )
        second_visitor = await clients.at(cluster.nodes[0].url).visitor()
        second_chat = (await second_visitor.call("join_queue", {}))["chat"]["id"]
        assert (await lost_agent.next("chat_started"))["chat"]["id"] == second_chat
        await second_visitor.next("chat_started")
        spare = await clients.at(cluster.nodes[2].url).agent("carol@example.com")

        acked: list[dict[str, Any]] = []
        agent_view = ChatView(agent, chat_id)
        visitor_view = ChatView(visitor, chat_id)
        senders = [
            asyncio.create_task(send_until_failure(visitor, chat_id, "v", acked)),
            asyncio.create_task(send_until_failure(agent, chat_id, "a", acked)),
        ]
        await asyncio.sleep(1.0)
        cluster.kill(1)
        killed_at = asyncio.get_running_loop().time()
        in_doubt = await asyncio.wait_for(asyncio.gather(*senders), 20)
        assert len(acked) > 10, acked
        assert (await spare.call("agent_ready", {"max_chats": 1}))["ok"]

        # Both come back through nginx to a live node and resend what failed.
        for client in (visitor, agent):
            await next_or_logs(cluster, client, "session", 15)
            assert client.sio.connected
        for client, client_id in zip((visitor, agent), in_doubt, strict=True):
            acked.append(await send_with_retries(client, chat_id, client_id))

        stored = await read_history(agent, chat_id)
        assert_stored_once(stored, acked)
        visitor_ids = {
            m["client_id"] for m in stored if m["sender"]["role"] == "visitor"
        }
        agent_ids = {m["client_id"] for m in stored if m["sender"]["role"] == "agent"}
        await agent_view.catch_up()
        await agent_view.wait_for(visitor_ids)
        await visitor_view.catch_up()
        await visitor_view.wait_for(agent_ids)
        assert count_events(visitor, "chat_requeued") == 0

        # The chat goes on, live, wherever the two landed.
        after = await visitor.call(
            "message", {"chat_id": chat_id, "text": "after", "client_id": "after"}
        )
        assert after["ok"], after
        assert after["message"]["seq"] == len(stored) + 1
        await agent_view.wait_for({"after"}, timeout=10)
        agent_view.assert_no_repeats()
        visitor_view.assert_no_repeats()

        # Chat 2 is requeued once after the node's heartbeat and the grace
        # period expire, and the spare agent takes it.
        requeued = await next_or_logs(cluster, second_visitor, "chat_requeued", 20)
        assert asyncio.get_running_loop().time() - killed_at >= 3
        assert requeued["chat_id"] == second_chat
        assert requeued["reason"] == "agent_left"
        restarted = await next_or_logs(cluster, spare, "chat_started", 10)
        assert restarted["chat"]["id"] == second_chat
        assert (await second_visitor.next("chat_started"))["chat"]["id"] == second_chat
        await asyncio.sleep(1.5)
        assert count_events(second_visitor, "chat_requeued") == 1
        assert count_events(spare, "chat_started") == 1
        assert not lost_agent.sio.connected

        # Node 1 starts again and serves: its agent takes a visitor of node 2.
        cluster.restart(1)
        bob = await clients.at(cluster.nodes[1].url).agent("bob@example.com")
        assert (await bob.call("agent_ready", {"max_chats": 1}))["ok"]
        newcomer = await clients.at(cluster.nodes[2].url).visitor()
        third_chat = (await newcomer.call("join_queue", {}))["chat"]["id"]
        assert (await bob.next("chat_started"))["chat"]["id"] == third_chat
        await chat_message_both_ways(bob, newcomer, third_chat)
    finally:
        await clients.close()


async def test_redis_restart_mid_chat(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    """Restart Redis during a chat between two nodes.

    Messages sent while Redis is down are stored, and reach the other side
    once it is back by reconnect and `history`, with no duplicates. Then live
    delivery resumes without help.
    """
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        cluster = await cluster_factory(2, redis_url=redis.url)
        clients = Clients(cluster.nodes[0])
        try:
            await chat_during_redis_restart(cluster, clients, redis)
        finally:
            await clients.close()
            # Before Redis, so that the nodes do not log its absence again.
            cluster.stop()
    finally:
        redis.stop()


async def chat_during_redis_restart(
    cluster: Cluster, clients: Clients, redis: RedisServer
) -> None:
    agent = await clients.at(cluster.nodes[1].url).agent(ready=True)
    visitor = await clients.at(cluster.nodes[0].url).visitor()
    chat_id = (await visitor.call("join_queue", {"message": "before"}))["chat"]["id"]
    assert (await agent.next("chat_started"))["chat"]["id"] == chat_id
    agent_view = ChatView(agent, chat_id)
    visitor_view = ChatView(visitor, chat_id)
    acked = [await send_with_retries(agent, chat_id, "agent before")]
    await visitor_view.wait_for({"agent before"}, timeout=10)

    redis.stop()
    during = [f"visitor during {n}" for n in range(3)]
    for client_id in during:
        acked.append(await send_with_retries(visitor, chat_id, client_id))
    acked.append(await send_with_retries(agent, chat_id, "agent during"))
    await asyncio.sleep(1.0)
    redis.start()

    # Each side gets what the other sent during the outage, by live events
    # or by catching up after the nodes drop their sockets.
    await agent_view.wait_for(set(during))
    await visitor_view.wait_for({"agent during"})
    stored = await read_history(agent, chat_id)
    assert_stored_once(stored, acked)

    # Live delivery works again, both ways.
    acked.append(await send_with_retries(visitor, chat_id, "visitor after"))
    await agent_view.wait_for({"visitor after"}, timeout=10)
    acked.append(await send_with_retries(agent, chat_id, "agent after"))
    await visitor_view.wait_for({"agent after"}, timeout=10)

    assert_stored_once(await read_history(agent, chat_id), acked)
    for view in (agent_view, visitor_view):
        view.assert_no_repeats()
