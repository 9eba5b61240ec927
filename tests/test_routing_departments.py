"""Departments over real sockets: validation, per-department queues and serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support import (
    DEPARTMENTS,
    ChatClient,
    Clients,
    http_json,
    ready_agent,
    serve_in_order,
    session_of,
)

EXPECTED_DEPARTMENTS = [
    {"id": "billing", "name": "Billing and invoices"},
    {"id": "sales", "name": "Sales"},
]


def by_id(departments: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(departments, key=lambda department: department["id"])


async def join(visitor: ChatClient, department: str | None) -> dict[str, Any]:
    payload = {} if department is None else {"department": department}
    joined = await visitor.call("join_queue", payload)
    assert joined["ok"], joined
    return dict(joined)


async def test_sessions_list_departments(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    visitor = await clients.visitor()
    assert by_id(session_of(visitor)["departments"]) == EXPECTED_DEPARTMENTS
    assert session_of(visitor)["agents_online"] == 0

    agent = await clients.agent()
    agent_session = session_of(agent)
    assert by_id(agent_session["departments"]) == EXPECTED_DEPARTMENTS
    assert agent_session["serving"] is None

    status, body = await http_json(clients.server, "GET", "/api/departments")
    assert status == 200
    assert by_id(body["departments"]) == EXPECTED_DEPARTMENTS
    assert body["agents_online"] == 0

    assert (await agent.call("agent_ready", {}))["ok"]
    status, body = await http_json(clients.server, "GET", "/api/departments")
    assert status == 200
    assert body["agents_online"] == 1
    late_visitor = await clients.visitor()
    assert session_of(late_visitor)["agents_online"] == 1


async def test_sessions_without_departments(clients: Clients) -> None:
    visitor = await clients.visitor()
    assert session_of(visitor)["departments"] == []
    status, body = await http_json(clients.server, "GET", "/api/departments")
    assert status == 200
    assert body["departments"] == []


async def test_join_unknown_department(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    visitor = await clients.visitor()
    for department in ["support", "Sales", "", 5, ["sales"]]:
        joined = await visitor.call("join_queue", {"department": department})
        assert joined["ok"] is False, (department, joined)
        assert joined["error"]["code"] == "invalid_payload", (department, joined)
    # No chat was opened by the rejected joins.
    again = await clients.visitor(token=visitor.auth["token"])
    assert session_of(again)["chat"] is None


async def test_join_department_without_config(clients: Clients) -> None:
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {"department": "sales"})
    assert joined["ok"] is False
    assert joined["error"]["code"] == "invalid_payload"


async def test_ready_unknown_department(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    agent = await clients.agent()
    for departments in [["support"], ["sales", "nope"], "sales", [5], [""]]:
        reply = await agent.call("agent_ready", {"departments": departments})
        assert reply["ok"] is False, (departments, reply)
        assert reply["error"]["code"] == "invalid_payload", (departments, reply)
    # The agent is still away, so a waiting chat is not assigned.
    visitor = await clients.visitor()
    await visitor.call("join_queue", {"department": "sales"})
    await agent.no_more("chat_started", within=0.5)


async def test_ready_reply_has_serving(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    agent = await clients.agent()
    reply = await agent.call("agent_ready", {"departments": ["sales"]})
    assert reply["ok"], reply
    assert reply["serving"] == ["sales"]

    reply = await agent.call("agent_ready", {"departments": []})
    assert reply["ok"], reply
    assert reply["serving"] is None

    reply = await agent.call("agent_ready", {})
    assert reply["ok"], reply
    assert reply["serving"] is None


async def test_sales_agent_never_gets_billing(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    seller = await ready_agent(
        clients, "alice@example.com", max_chats=5, departments=["sales"]
    )
    billing_visitors = [await clients.visitor() for _ in range(3)]
    for visitor in billing_visitors:
        joined = await join(visitor, "billing")
        assert joined["chat"]["department"] == "billing"
    sales_visitor = await clients.visitor()
    sales_chat = (await join(sales_visitor, "sales"))["chat"]["id"]

    started = await seller.next("chat_started")
    assert started["chat"]["id"] == sales_chat
    assert started["chat"]["department"] == "sales"
    await seller.no_more("chat_started", within=1.0)
    for visitor in billing_visitors:
        assert visitor.drain("chat_started") == []

    # Raising the seller's capacity to 10 starts no billing chat either.
    reply = await seller.call(
        "agent_ready", {"max_chats": 10, "departments": ["sales"]}
    )
    assert reply["ok"], reply
    await seller.no_more("chat_started", within=0.8)

    biller = await ready_agent(
        clients, "bob@example.com", max_chats=3, departments=["billing"]
    )
    for _ in billing_visitors:
        assert (await biller.next("chat_started"))["chat"]["department"] == "billing"
    await seller.no_more("chat_started", within=0.3)


@pytest.mark.parametrize("serving", [None, ["sales", "billing"]])
async def test_longest_waiting_first_across_departments(
    clients_on: Callable[..., Clients], serving: list[str] | None
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    order = ["billing", "sales", "billing", "sales", "sales", "billing"]
    chat_ids = []
    for department in order:
        visitor = await clients.visitor()
        chat_ids.append((await join(visitor, department))["chat"]["id"])

    agent = await ready_agent(
        clients, "alice@example.com", max_chats=1, departments=serving
    )
    assert await serve_in_order(agent, len(chat_ids)) == chat_ids


async def test_positions_per_department(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    plan = [
        ("sales", 1),
        ("billing", 1),
        ("sales", 2),
        (None, 1),
        ("billing", 2),
        ("sales", 3),
        (None, 2),
    ]
    visitors = []
    chat_ids = []
    for department, position in plan:
        visitor = await clients.visitor()
        joined = await join(visitor, department)
        assert joined["position"] == position, (department, joined)
        assert joined["chat"]["department"] == department
        visitors.append(visitor)
        chat_ids.append(joined["chat"]["id"])

    for visitor, (_, position) in zip(visitors, plan, strict=True):
        update = await visitor.next("queue_update")
        assert update["position"] == position

    # When the first sales visitor leaves, only the sales queue moves up.
    ended = await visitors[0].call("end_chat", {"chat_id": chat_ids[0]})
    assert ended["ok"], ended
    assert (await visitors[2].next("queue_update"))["position"] == 1
    assert (await visitors[5].next("queue_update"))["position"] == 2
    await visitors[4].no_more("queue_update", within=0.5)
    for index in (1, 3, 6):
        assert visitors[index].drain("queue_update") == []

    # A rejoin reply shows the same per-department places.
    again = await visitors[4].call("join_queue", {"department": "billing"})
    assert again["chat"]["id"] == chat_ids[4]
    assert again["position"] == 2


async def test_agent_serving_one_department(
    clients_on: Callable[..., Clients],
) -> None:
    """A sales agent takes the second sales chat before an older billing chat."""
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    first = await clients.visitor()
    billing_chat = (await join(first, "billing"))["chat"]["id"]
    second = await clients.visitor()
    sales_chat = (await join(second, "sales"))["chat"]["id"]

    seller = await ready_agent(clients, "alice@example.com", departments=["sales"])
    assert (await seller.next("chat_started"))["chat"]["id"] == sales_chat
    all_round = await ready_agent(clients, "bob@example.com")
    assert (await all_round.next("chat_started"))["chat"]["id"] == billing_chat


async def test_serving_kept_across_reconnect(
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS)
    seller = await ready_agent(clients, "alice@example.com", departments=["sales"])
    await seller.disconnect()
    back = await clients.agent("alice@example.com")
    assert session_of(back)["status"] == "ready"
    assert session_of(back)["serving"] == ["sales"]

    billing = await clients.visitor()
    await join(billing, "billing")
    sales = await clients.visitor()
    sales_chat = (await join(sales, "sales"))["chat"]["id"]
    assert (await back.next("chat_started"))["chat"]["id"] == sales_chat
    assert billing.drain("chat_started") == []


async def test_requeue_keeps_department(clients_on: Callable[..., Clients]) -> None:
    clients = clients_on(CHAT_DEPARTMENTS=DEPARTMENTS, CHAT_AGENT_GRACE_S="1")
    alice = await ready_agent(clients, "alice@example.com")
    visitor = await clients.visitor()
    chat_id = (await join(visitor, "sales"))["chat"]["id"]
    await alice.next("chat_started")
    biller = await ready_agent(clients, "bob@example.com", departments=["billing"])

    await alice.disconnect()
    assert await visitor.next("chat_requeued", timeout=5) == {
        "chat_id": chat_id,
        "reason": "agent_left",
        "department": "sales",
    }
    await biller.no_more("chat_started", within=0.8)
    seller = await ready_agent(clients, "carol@example.com", departments=["sales"])
    started = await seller.next("chat_started")
    assert started["chat"]["id"] == chat_id
    assert started["chat"]["department"] == "sales"
