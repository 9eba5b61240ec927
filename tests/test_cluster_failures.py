"""Adversarial cases for cluster mode: paused nodes, split sockets, timeouts.

Each test runs real nodes sharing a fresh PostgreSQL database and Redis, as
tests/test_cluster.py does, and stays under 60 s.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from tests.cluster import Cluster, ClusterFactory, RedisServer
from tests.support import ChatClient, Clients, ServerProcess, http_json, scrape_metrics


def count_events(client: ChatClient, event: str) -> int:
    return sum(1 for name, _ in client.received if name == event)


async def join_and_take(visitor: ChatClient, agent: ChatClient) -> str:
    """Queue `visitor` and return the chat id once `agent` has the chat."""
    chat_id = str((await visitor.call("join_queue", {}))["chat"]["id"])
    assert (await agent.next("chat_started"))["chat"]["id"] == chat_id
    return chat_id


async def chat_across_nodes(
    cluster: Cluster, clients: Clients, **agent_options: Any
) -> tuple[ChatClient, ChatClient, str]:
    """Return a ready agent on node 1, a visitor on node 0, and their chat id."""
    agent = await clients.at(cluster.nodes[1].url).agent(
        "alice@example.com", ready=True, **agent_options
    )
    visitor = await clients.at(cluster.nodes[0].url).visitor()
    return agent, visitor, await join_and_take(visitor, agent)


async def test_paused_node_keeps_its_people(cluster_factory: ClusterFactory) -> None:
    """A node paused past its heartbeat TTL still counts its sockets when it resumes.

    Steps: an agent on node 1 serves a visitor on node 0. Node 1 is stopped
    with SIGSTOP for 4 s (the TTL is 2 s), as a long pause of the process or
    its VM would, then resumes with SIGCONT. The agent's WebSocket stays open
    throughout, because the ping timeout is far longer than the pause.

    Expected: once node 1 beats again the agent is online, so the agent's
    grace period never expires and the chat stays with the agent.
    """
    cluster = await cluster_factory(2, CHAT_NODE_TTL_S="2", CHAT_AGENT_GRACE_S="3")
    clients = Clients(cluster.nodes[0])
    try:
        agent, visitor, chat_id = await chat_across_nodes(cluster, clients)

        process = cluster.nodes[1].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(4)
        finally:
            process.send_signal(signal.SIGCONT)
        # Node 0 swept node 1 while it was paused, so the grace period would
        # end 3 s after that sweep.
        await asyncio.sleep(6)

        assert agent.sio.connected
        assert count_events(visitor, "chat_requeued") == 0, cluster.logs()
        payload = {"chat_id": chat_id, "text": "still there?", "client_id": "v1"}
        assert (await visitor.call("message", payload))["ok"]
        assert (await agent.next("message", 5))["text"] == "still there?"
    finally:
        await clients.close()


async def test_paused_node_agent_takes_chats(
    cluster_factory: ClusterFactory,
) -> None:
    """An agent on a node that was paused past its TTL can take chats again.

    Steps: an agent with no chat is connected to node 1. Node 1 is stopped
    with SIGSTOP for 4 s (the TTL is 2 s) and resumes with SIGCONT. Its
    WebSocket stays open. Then the agent goes ready, and a visitor on
    node 0 joins the queue.

    Expected: the agent, connected and ready, gets the chat.
    """
    cluster = await cluster_factory(2, CHAT_NODE_TTL_S="2", CHAT_AGENT_GRACE_S="3")
    clients = Clients(cluster.nodes[0])
    try:
        agent = await clients.at(cluster.nodes[1].url).agent("alice@example.com")
        process = cluster.nodes[1].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(4)
        finally:
            process.send_signal(signal.SIGCONT)
        await asyncio.sleep(5)
        assert agent.sio.connected

        assert (await agent.call("agent_ready", {"max_chats": 1}))["ok"]
        visitor = await clients.at(cluster.nodes[0].url).visitor()
        joined = await visitor.call("join_queue", {})
        assert joined["ok"], joined
        try:
            started = await agent.next("chat_started", 10)
        except TimeoutError:
            raise AssertionError(
                f"the ready agent got no chat within 10 s\n{cluster.logs()}"
            ) from None
        assert started["chat"]["id"] == joined["chat"]["id"]
        assert joined["agents_online"] == 1, joined
    finally:
        await clients.close()


async def test_agent_on_two_nodes_one_killed(cluster_factory: ClusterFactory) -> None:
    """An agent with sockets on nodes 0 and 1 keeps the chat when node 1 dies.

    Steps: the agent connects to node 0 and node 1, serves a visitor on
    node 2, and node 1 is killed with SIGKILL. Its heartbeat expires after
    2 s and node 0 or 2 sweeps its sockets.

    Expected: the agent still has a socket on node 0, so no grace period
    starts and the chat is not requeued.
    """
    cluster = await cluster_factory(3, CHAT_NODE_TTL_S="2", CHAT_AGENT_GRACE_S="2")
    clients = Clients(cluster.nodes[0])
    try:
        first = await clients.at(cluster.nodes[0].url).agent(
            "alice@example.com", ready=True
        )
        second = await clients.at(cluster.nodes[1].url).agent(
            "alice@example.com", reconnection=False
        )
        visitor = await clients.at(cluster.nodes[2].url).visitor()
        chat_id = await join_and_take(visitor, first)
        assert (await second.next("chat_started"))["chat"]["id"] == chat_id

        cluster.kill(1)
        await asyncio.sleep(7)

        assert count_events(visitor, "chat_requeued") == 0, cluster.logs()
        payload = {"chat_id": chat_id, "text": "hello", "client_id": "v1"}
        assert (await visitor.call("message", payload))["ok"]
        assert (await first.next("message", 5))["text"] == "hello"
    finally:
        await clients.close()


async def test_queue_timeout_once_in_cluster(cluster_factory: ClusterFactory) -> None:
    """A queue timeout checked by three nodes ends each chat once.

    Steps: three visitors, one per node, join with no agent online and
    CHAT_QUEUE_TIMEOUT_S=2. Every node checks the timeouts each 0.2 s.

    Expected: each visitor receives one `chat_ended` with reason
    `queue_timeout`.
    """
    cluster = await cluster_factory(
        3, CHAT_QUEUE_TIMEOUT_S="2", CHAT_TIMER_INTERVAL_S="0.2"
    )
    clients = Clients(cluster.nodes[0])
    try:
        visitors = [await clients.at(node.url).visitor() for node in cluster.nodes]
        for visitor in visitors:
            assert (await visitor.call("join_queue", {}))["ok"]
        for visitor in visitors:
            ended = await visitor.next("chat_ended", 10)
            assert ended["reason"] == "queue_timeout"
        await asyncio.sleep(1.5)
        for visitor in visitors:
            assert count_events(visitor, "chat_ended") == 1
    finally:
        await clients.close()


async def admin_disable(cluster: Cluster, node: int, agent_id: str) -> None:
    """Disable an agent over the admin API of node `node`, as another admin."""
    server = cluster.nodes[node]
    await server.create_agent("root@example.com", is_admin=True)
    token = await server.login("root@example.com")
    status, body = await http_json(
        server,
        "PATCH",
        f"/api/admin/agents/{agent_id}",
        token=token,
        json={"disabled": True},
    )
    assert status == 200, body


async def test_disable_agent_on_two_nodes(cluster_factory: ClusterFactory) -> None:
    """Disabling an agent on node 2 signs out its sockets on nodes 0 and 1.

    Steps: the agent has one socket on node 0 and one on node 1 and serves a
    visitor on node 2. An admin disables the agent through node 2.

    Expected: both sockets receive `signed_out` and are disconnected, the
    visitor receives `chat_requeued` at once, and only once, also after the
    agent grace period (2 s) that the disconnects could start has passed.
    """
    cluster = await cluster_factory(3, CHAT_AGENT_GRACE_S="2")
    clients = Clients(cluster.nodes[0])
    try:
        first = await clients.at(cluster.nodes[0].url).agent(
            "alice@example.com", ready=True, reconnection=False
        )
        second = await clients.at(cluster.nodes[1].url).agent(
            "alice@example.com", reconnection=False
        )
        sessions = [data for name, data in first.received if name == "session"]
        agent_id = sessions[0]["agent_id"]
        visitor = await clients.at(cluster.nodes[2].url).visitor()
        chat_id = await join_and_take(visitor, first)

        await admin_disable(cluster, 2, agent_id)
        for socket in (first, second):
            assert await socket.next("signed_out", 5) == {"reason": "disabled"}
        requeued = await visitor.next("chat_requeued", 2)
        assert requeued["chat_id"] == chat_id
        await asyncio.sleep(4)
        assert not first.sio.connected
        assert not second.sio.connected
        assert count_events(visitor, "chat_requeued") == 1
    finally:
        await clients.close()


async def test_disable_agent_on_paused_node(cluster_factory: ClusterFactory) -> None:
    """Disabling an agent signs out its socket on a node that was stalled.

    Steps: the agent is connected to node 1 only. Node 1 stops with SIGSTOP
    (TTL 2 s) until node 0 has taken it for dead and removed its sockets
    from Redis, and an admin disables the agent through node 0 meanwhile.
    Then node 1 resumes.

    Expected: the agent's socket receives `signed_out` and is disconnected
    once node 1 runs again.
    """
    cluster = await cluster_factory(2, CHAT_NODE_TTL_S="2", CHAT_AGENT_GRACE_S="30")
    clients = Clients(cluster.nodes[0])
    try:
        agent = await clients.at(cluster.nodes[1].url).agent(
            "alice@example.com", reconnection=False
        )
        sessions = [data for name, data in agent.received if name == "session"]
        agent_id = sessions[0]["agent_id"]

        process = cluster.nodes[1].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            # The TTL plus node 0's next heartbeat, with a margin.
            await asyncio.sleep(4)
            await admin_disable(cluster, 0, agent_id)
        finally:
            process.send_signal(signal.SIGCONT)

        assert await agent.next("signed_out", 5) == {"reason": "disabled"}
        for _ in range(50):
            if not agent.sio.connected:
                break
            await asyncio.sleep(0.1)
        assert not agent.sio.connected
    finally:
        await clients.close()


async def test_sigterm_node_mid_chat(cluster_factory: ClusterFactory) -> None:
    """A node stopped with SIGTERM mid-chat hands its people to the other nodes.

    Steps: through nginx, a visitor and an agent both land on node 1 and
    chat. Node 1 gets SIGTERM. Both clients reconnect through nginx to
    another node. The agent grace period is 3 s.

    Expected: the chat stays active with no `chat_requeued` or `chat_ended`,
    even after the grace period, and messages flow both ways.
    """
    cluster = await cluster_factory(3, CHAT_AGENT_GRACE_S="3", CHAT_VISITOR_GRACE_S="3")
    clients = Clients(cluster.nodes[0])
    try:
        visitor_source = await cluster.source_for(1)
        agent_source = await cluster.source_for(1, exclude={visitor_source})
        agent = await clients.at(cluster.url, agent_source).agent(
            "alice@example.com", ready=True
        )
        visitor = await clients.at(cluster.url, visitor_source).visitor()
        chat_id = await join_and_take(visitor, agent)
        agent.drain("session")
        visitor.drain("session")

        process = cluster.nodes[1].process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 15)
        for client in (visitor, agent):
            await client.next("session", 15)
        await asyncio.sleep(5)

        assert count_events(visitor, "chat_requeued") == 0, cluster.logs()
        assert count_events(visitor, "chat_ended") == 0, cluster.logs()
        for sender, receiver in ((agent, visitor), (visitor, agent)):
            text = f"after from {sender.auth['role']}"
            payload = {"chat_id": chat_id, "text": text, "client_id": text}
            assert (await sender.call("message", payload))["ok"]
            assert (await receiver.next("message", 5))["text"] == text
    finally:
        await clients.close()


async def admin_token(cluster: Cluster) -> str:
    """Create an admin account and return its token."""
    await cluster.nodes[0].create_agent("root@example.com", is_admin=True)
    return await cluster.nodes[0].login("root@example.com")


async def admin_overview(cluster: Cluster, node: int, token: str) -> dict[str, Any]:
    """Return GET /api/admin/overview from node `node`."""
    server = cluster.nodes[node]
    status, body = await http_json(server, "GET", "/api/admin/overview", token=token)
    assert status == 200, body
    return dict(body)


def count_in_logs(cluster: Cluster, text: str) -> int:
    return sum(node.log().count(text) for node in cluster.nodes)


async def wait_until_queued(
    cluster: Cluster, token: str, chat_id: str, within_s: float
) -> None:
    """Poll node 0's admin overview until `chat_id` is in the queue."""
    queued: list[str] = []
    for _ in range(int(within_s * 2)):
        overview = await admin_overview(cluster, 0, token)
        queued = [entry["chat_id"] for entry in overview["queue"]]
        if chat_id in queued:
            return
        await asyncio.sleep(0.5)
    assert chat_id in queued, cluster.logs()


async def test_redis_lost_during_agent_grace(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    """An agent grace period running when Redis loses its data still ends once.

    Steps: an agent on node 1 serves a visitor on node 0, then disconnects
    for good, which starts a 4 s grace period kept in Redis. One second
    later Redis restarts with no data.

    Expected: the chat goes back to the queue within 15 s, and the cluster
    requeues it once.
    """
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        cluster = await cluster_factory(2, redis_url=redis.url, CHAT_AGENT_GRACE_S="4")
        clients = Clients(cluster.nodes[0])
        try:
            agent, _, chat_id = await chat_across_nodes(
                cluster, clients, reconnection=False
            )

            token = await admin_token(cluster)
            await agent.disconnect()
            await asyncio.sleep(1)
            redis.stop()
            redis.start()

            await wait_until_queued(cluster, token, chat_id, 15)
            await asyncio.sleep(5)
            assert count_in_logs(cluster, f"requeued chat={chat_id}") == 1
        finally:
            await clients.close()
            cluster.stop()
    finally:
        redis.stop()


async def test_all_nodes_killed_restarted(cluster_factory: ClusterFactory) -> None:
    """After every node is killed and restarted, no agent stays online.

    Steps: an agent on node 1 serves a visitor on node 0, neither of them
    reconnecting. Both nodes are killed with SIGKILL and started again with
    the same node ids. Grace periods are 3 s and the TTL is 2 s.

    Expected: within 15 s the agent is no longer online and the chat has
    ended (the visitor left), so no chat stays active.
    """
    cluster = await cluster_factory(
        2, CHAT_NODE_TTL_S="2", CHAT_AGENT_GRACE_S="3", CHAT_VISITOR_GRACE_S="3"
    )
    clients = Clients(cluster.nodes[0])
    try:
        agent = await clients.at(cluster.nodes[1].url).agent(
            "alice@example.com", ready=True, reconnection=False
        )
        visitor = clients.at(cluster.nodes[0].url).client(
            {"role": "visitor", "token": None}, reconnection=False
        )
        await visitor.connect()
        chat_id = await join_and_take(visitor, agent)
        token = await admin_token(cluster)

        cluster.kill(0)
        cluster.kill(1)
        await asyncio.gather(
            asyncio.to_thread(cluster.restart, 0),
            asyncio.to_thread(cluster.restart, 1),
        )

        overview: dict[str, Any] = {}
        for _ in range(30):
            overview = await admin_overview(cluster, 1, token)
            active = [chat["id"] for chat in overview["chats"]]
            online = [item["name"] for item in overview["agents"] if item["online"]]
            if chat_id not in active and not online:
                break
            await asyncio.sleep(0.5)
        active = [chat["id"] for chat in overview["chats"]]
        online = [item["name"] for item in overview["agents"] if item["online"]]
        assert chat_id not in active, cluster.logs()
        assert online == [], cluster.logs()
    finally:
        await clients.close()


async def test_queue_events_once_per_socket(cluster_factory: ClusterFactory) -> None:
    """Queue changes reach each socket on every node once.

    Steps: visitor A is queued on node 2. Visitor B, with one socket on
    node 0 and one on node 1, queues behind A. An agent on node 0 and one
    on node 1 watch `queue_changed`. Then A leaves the queue on node 2
    (`end_chat`), which moves B to position 1.

    Expected: each of B's sockets gets one `queue_update` with position 1,
    and each agent gets one `queue_changed` with `queued` 1.
    """
    cluster = await cluster_factory(3)
    clients = Clients(cluster.nodes[0])
    try:
        watchers = [
            await clients.at(cluster.nodes[n].url).agent(f"agent{n}@example.com")
            for n in range(2)
        ]
        first = await clients.at(cluster.nodes[2].url).visitor()
        first_chat = (await first.call("join_queue", {}))["chat"]["id"]
        tab0 = await clients.at(cluster.nodes[0].url).visitor()
        tab1 = await clients.at(cluster.nodes[1].url).visitor(tab0.auth["token"])
        joined = await tab0.call("join_queue", {})
        assert joined["position"] == 2, joined
        await asyncio.sleep(1.5)
        for client in (tab0, tab1, *watchers):
            client.drain("queue_update")
            client.drain("queue_changed")

        ended = await first.call("end_chat", {"chat_id": first_chat})
        assert ended["ok"], ended
        await asyncio.sleep(2)

        for tab in (tab0, tab1):
            updates = tab.drain("queue_update")
            assert [update["position"] for update in updates] == [1], updates
        for watcher in watchers:
            changes = watcher.drain("queue_changed")
            assert [change["queued"] for change in changes] == [1], changes
    finally:
        await clients.close()


async def test_grace_owner_node_killed(cluster_factory: ClusterFactory) -> None:
    """A grace period started by a node that then dies still ends once.

    Steps: an agent connected only to node 1 serves a visitor on node 0 and
    disconnects for good, so node 1 starts a 3 s grace period. Node 1 is
    killed with SIGKILL right after.

    Expected: the visitor receives `chat_requeued` once, 3 s or more after
    the disconnect.
    """
    cluster = await cluster_factory(3, CHAT_NODE_TTL_S="2", CHAT_AGENT_GRACE_S="3")
    clients = Clients(cluster.nodes[0])
    try:
        agent, visitor, chat_id = await chat_across_nodes(
            cluster, clients, reconnection=False
        )

        loop = asyncio.get_running_loop()
        left_at = loop.time()
        await agent.disconnect()
        await asyncio.sleep(0.3)
        cluster.kill(1)

        requeued = await visitor.next("chat_requeued", 15)
        assert requeued["chat_id"] == chat_id
        assert loop.time() - left_at >= 3
        await asyncio.sleep(3)
        assert count_events(visitor, "chat_requeued") == 1
    finally:
        await clients.close()


async def test_reply_timeout_once_in_cluster(cluster_factory: ClusterFactory) -> None:
    """An agent reply timeout checked by three nodes requeues the chat once.

    Steps: an agent on node 1 takes a chat from a visitor on node 0 and
    sends nothing. CHAT_AGENT_REPLY_TIMEOUT_S is 2 and every node checks
    timeouts each 0.2 s.

    Expected: the agent gets one `chat_removed` and the visitor one
    `chat_requeued`, both with reason `no_reply`.
    """
    cluster = await cluster_factory(
        3, CHAT_AGENT_REPLY_TIMEOUT_S="2", CHAT_TIMER_INTERVAL_S="0.2"
    )
    clients = Clients(cluster.nodes[0])
    try:
        agent, visitor, _ = await chat_across_nodes(cluster, clients)

        removed = await agent.next("chat_removed", 10)
        assert removed["reason"] == "no_reply"
        requeued = await visitor.next("chat_requeued", 5)
        assert requeued["reason"] == "no_reply"
        await asyncio.sleep(2)
        assert count_events(agent, "chat_removed") == 1
        assert count_events(visitor, "chat_requeued") == 1
    finally:
        await clients.close()


async def test_redis_lost_heartbeat_first(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    """A grace period lost with Redis's data ends even when heartbeats return first.

    Steps: as in `test_redis_lost_during_agent_grace`, an agent on node 1
    disconnects for good from a chat with a visitor on node 0, which starts
    a 4 s grace period in Redis. Then Redis is down for 3 s and comes back
    with no data. With CHAT_NODE_TTL_S=1 each node's heartbeat runs every
    0.33 s, so both nodes write their heartbeat before their Socket.IO
    subscriber, which retries after 0.5, 1 and 2 s, registers them again.

    Expected: the chat goes back to the queue within 20 s, as it does when
    the subscriber registers first.
    """
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        cluster = await cluster_factory(
            2, redis_url=redis.url, CHAT_NODE_TTL_S="1", CHAT_AGENT_GRACE_S="4"
        )
        clients = Clients(cluster.nodes[0])
        try:
            agent, _, chat_id = await chat_across_nodes(
                cluster, clients, reconnection=False
            )
            token = await admin_token(cluster)

            await agent.disconnect()
            await asyncio.sleep(0.5)
            redis.stop()
            await asyncio.sleep(3)
            redis.start()

            await wait_until_queued(cluster, token, chat_id, 20)
        finally:
            await clients.close()
            cluster.stop()
    finally:
        redis.stop()


async def test_node_restarted_same_id(cluster_factory: ClusterFactory) -> None:
    """A node killed and restarted at once with its node id frees its people.

    Steps: an agent connected only to node 1 serves a visitor on node 0.
    Node 1 is killed with SIGKILL and started again with the same
    CHAT_NODE_ID before its 10 s heartbeat TTL runs out. The agent does not
    come back. The agent grace period is 3 s.

    Expected: the restarted node removes the sockets its previous process
    left in Redis, so the visitor receives `chat_requeued` once within 9 s,
    sooner than the 10 s TTL and the 3 s grace period added up.
    """
    cluster = await cluster_factory(2, CHAT_AGENT_GRACE_S="3")
    clients = Clients(cluster.nodes[0])
    try:
        _, visitor, chat_id = await chat_across_nodes(
            cluster, clients, reconnection=False
        )

        cluster.kill(1)
        await asyncio.to_thread(cluster.restart, 1)

        requeued = await visitor.next("chat_requeued", 9)
        assert requeued["chat_id"] == chat_id
        await asyncio.sleep(4)
        assert count_events(visitor, "chat_requeued") == 1
    finally:
        await clients.close()


def session_agent_id(agent: ChatClient) -> str:
    sessions = [data for name, data in agent.received if name == "session"]
    return str(sessions[0]["agent_id"])


async def test_transfer_to_agent_on_two_nodes(cluster_factory: ClusterFactory) -> None:
    """A transfer to an agent with sockets on two other nodes arrives once each.

    Steps: agent A on node 0 serves a visitor on node 2. Agent B, ready with
    `max_chats` 1, has sockets on node 1 and node 2. A transfers the chat
    to B, then the visitor sends a message.

    Expected: the visitor gets one `chat_transferred`, each of B's sockets
    one `chat_started` and the message once, and A gets one `chat_removed`.
    """
    cluster = await cluster_factory(3)
    clients = Clients(cluster.nodes[0])
    try:
        alice = await clients.at(cluster.nodes[0].url).agent(
            "alice@example.com", ready=True
        )
        visitor = await clients.at(cluster.nodes[2].url).visitor()
        chat_id = await join_and_take(visitor, alice)
        bob_tabs = [
            await clients.at(cluster.nodes[n].url).agent("bob@example.com")
            for n in (1, 2)
        ]
        bob_id = session_agent_id(bob_tabs[0])
        assert (await bob_tabs[0].call("agent_ready", {"max_chats": 1}))["ok"]

        moved = await alice.call(
            "transfer_chat", {"chat_id": chat_id, "agent_id": bob_id}
        )
        assert moved["ok"], moved
        for tab in bob_tabs:
            assert (await tab.next("chat_started", 5))["chat"]["id"] == chat_id
        payload = {"chat_id": chat_id, "text": "to bob", "client_id": "v1"}
        assert (await visitor.call("message", payload))["ok"]
        for tab in bob_tabs:
            assert (await tab.next("message", 5))["text"] == "to bob"
        await asyncio.sleep(1.5)

        assert count_events(visitor, "chat_transferred") == 1
        assert count_events(alice, "chat_removed") == 1
        for tab in bob_tabs:
            assert count_events(tab, "chat_started") == 1
            assert count_events(tab, "message") == 1
        assert count_events(alice, "message") == 0
    finally:
        await clients.close()


async def test_idle_timeout_once_in_cluster(cluster_factory: ClusterFactory) -> None:
    """A visitor idle timeout checked by three nodes ends the chat once.

    Steps: an agent on node 1 serves a visitor on node 0. The visitor sends
    nothing. CHAT_VISITOR_IDLE_TIMEOUT_S is 2 and every node checks
    timeouts each 0.2 s.

    Expected: the agent and the visitor each get one `chat_ended` with
    reason `inactive`.
    """
    cluster = await cluster_factory(
        3, CHAT_VISITOR_IDLE_TIMEOUT_S="2", CHAT_TIMER_INTERVAL_S="0.2"
    )
    clients = Clients(cluster.nodes[0])
    try:
        agent, visitor, _ = await chat_across_nodes(cluster, clients)

        for client in (agent, visitor):
            ended = await client.next("chat_ended", 10)
            assert ended["reason"] == "inactive"
        await asyncio.sleep(1.5)
        assert count_events(agent, "chat_ended") == 1
        assert count_events(visitor, "chat_ended") == 1
    finally:
        await clients.close()


async def test_transfers_race_for_last_slot(cluster_factory: ClusterFactory) -> None:
    """Two transfers and a queued chat race for an agent's last free slot.

    Steps: agents A on node 0 and C on node 1 each serve a visitor. Agent B
    on node 2 has `max_chats` 1 and is away. A third visitor queues. Then, at
    once, B goes ready, A transfers to B and C transfers to B. Five rounds.

    Expected: B ends each round with exactly one chat, and every transfer
    that B could not take is rejected with `agent_full` or `agent_away`.
    """
    cluster = await cluster_factory(3)
    clients = Clients(cluster.nodes[0])
    try:
        alice = await clients.at(cluster.nodes[0].url).agent("alice@example.com")
        carol = await clients.at(cluster.nodes[1].url).agent("carol@example.com")
        bob = await clients.at(cluster.nodes[2].url).agent("bob@example.com")
        bob_id = session_agent_id(bob)
        visitors = clients.at(cluster.nodes[2].url)
        winners: list[bool] = []
        for round_number in range(5):
            chats = []
            for owner in (alice, carol):
                assert (await owner.call("agent_ready", {"max_chats": 1}))["ok"]
                visitor = await visitors.visitor()
                chat_id = await join_and_take(visitor, owner)
                assert (await owner.call("agent_away"))["ok"]
                chats.append(chat_id)
            third = await visitors.visitor()
            third_chat = (await third.call("join_queue", {}))["chat"]["id"]

            replies = await asyncio.gather(
                bob.call("agent_ready", {"max_chats": 1}),
                alice.call("transfer_chat", {"chat_id": chats[0], "agent_id": bob_id}),
                carol.call("transfer_chat", {"chat_id": chats[1], "agent_id": bob_id}),
            )
            assert replies[0]["ok"], replies[0]
            for reply in replies[1:]:
                if not reply["ok"]:
                    assert reply["error"]["reason"] in ("agent_full", "agent_away"), (
                        round_number,
                        reply,
                    )
            await asyncio.sleep(1)
            open_chats = [data["chat"]["id"] for data in bob.drain("chat_started")]
            assert len(open_chats) == 1, (round_number, open_chats, replies)

            # Away first, so that the freed slot takes no queued chat.
            assert (await bob.call("agent_away"))["ok"]
            assert (await bob.call("end_chat", {"chat_id": open_chats[0]}))["ok"]
            for owner in (alice, carol):
                for data in owner.drain("chat_started"):
                    await owner.call("end_chat", {"chat_id": data["chat"]["id"]})
            for chat_id in chats:
                if chat_id not in open_chats:
                    for owner in (alice, carol):
                        await owner.call("end_chat", {"chat_id": chat_id})
            if third_chat not in open_chats:
                await third.call("end_chat", {"chat_id": third_chat})
            await third.disconnect()
            winners.append(open_chats[0] == third_chat)
        # Record which side won, to show the race was run both ways.
        print(f"rounds the queued chat won: {winners}")
    finally:
        await clients.close()


async def test_paused_node_agent_misses_moved_chat(
    cluster_factory: ClusterFactory,
) -> None:
    """An agent on a paused node gets no messages of a chat that moved on.

    Steps: agent A on node 1 serves a visitor on node 0, and node 1 stops
    with SIGSTOP (TTL 2 s, agent grace 1 s). A's grace period ends while
    node 1 is stopped, so the chat goes back to the queue and agent B on
    node 0 takes it. The visitor sends a message, and only then does node 1
    resume, with the chat's changes and the message waiting for it in Redis.

    Expected: node 1 removes A from the chat's room before it delivers the
    message, so B receives it and A, whose socket stayed open, does not. A
    receives `chat_removed` instead.
    """
    cluster = await cluster_factory(2, CHAT_NODE_TTL_S="2", CHAT_AGENT_GRACE_S="1")
    clients = Clients(cluster.nodes[0])
    try:
        alice, visitor, chat_id = await chat_across_nodes(cluster, clients)
        bob = await clients.at(cluster.nodes[0].url).agent(
            "bob@example.com", ready=True
        )

        process = cluster.nodes[1].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            started = await bob.next("chat_started", 15)
            assert started["chat"]["id"] == chat_id
            payload = {"chat_id": chat_id, "text": "for bob only", "client_id": "v1"}
            assert (await visitor.call("message", payload))["ok"]
            assert (await bob.next("message", 5))["text"] == "for bob only"
        finally:
            process.send_signal(signal.SIGCONT)

        removed = await alice.next("chat_removed", 5)
        assert removed == {"chat_id": chat_id, "reason": "agent_left", "to": None}
        await asyncio.sleep(1)
        leaked = [m["text"] for m in alice.drain("message")]
        assert leaked == [], "agent A received a message of a chat it no longer has"
        assert alice.sio.connected
    finally:
        await clients.close()


async def tracked_entries(server: ServerProcess) -> dict[str, float]:
    """Return a node's counts of per-chat and per-person entries, by kind."""
    return {
        name.split('"')[1]: value
        for name, value in (await scrape_metrics(server)).items()
        if name.startswith("chat_tracked_entries")
    }


async def test_reply_entries_cleared_everywhere(
    cluster_factory: ClusterFactory,
) -> None:
    """A chat's first-reply entry goes when another node ends the chat.

    Steps: visitors on node 1 join, so node 1 matches each chat to agent A on
    node 0 and records when. A replies and ends each chat through node 0.
    Five chats.

    Expected: neither node keeps an `awaiting_reply` entry for any of them.
    """
    cluster = await cluster_factory(2)
    clients = Clients(cluster.nodes[0])
    try:
        alice = await clients.at(cluster.nodes[0].url).agent(
            "alice@example.com", ready=True
        )
        for number in range(5):
            visitor = await clients.at(cluster.nodes[1].url).visitor()
            chat_id = await join_and_take(visitor, alice)
            reply = {"chat_id": chat_id, "text": "hi", "client_id": f"a{number}"}
            assert (await alice.call("message", reply))["ok"]
            assert (await alice.call("end_chat", {"chat_id": chat_id}))["ok"]
            await visitor.next("chat_ended", 5)
            await visitor.disconnect()
        await asyncio.sleep(1)

        for node in cluster.nodes:
            assert (await tracked_entries(node))["awaiting_reply"] == 0
    finally:
        await clients.close()
