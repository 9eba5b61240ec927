"""REST routes: login, chats, agents and admin, canned responses, health."""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import get_args

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import schemas
from .auth import verify_password_async
from .errors import (
    ChatError,
    Forbidden,
    InvalidPayload,
    NotFound,
    RateLimited,
    Unauthorized,
)
from .metrics import Metrics
from .models import Agent, AgentChanges, ChatStatus
from .origins import OriginPolicy
from .ratelimit import client_address
from .service import ChatService

logger = logging.getLogger("sio_server.http")

SERVICE_KEY = web.AppKey("service", ChatService)
METRICS_KEY = web.AppKey("metrics", Metrics)
ORIGINS_KEY = web.AppKey("origins", OriginPolicy)

_CHAT_STATUSES = set(get_args(ChatStatus))
ENGINEIO_PATH = "/socket.io/"


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _opens_websocket(request: web.Request) -> bool:
    """Tell whether `request` opens a new Engine.IO WebSocket.

    Such a request is served for as long as its socket is open, and every
    coroutine awaiting it keeps its frame until then: a few hundred bytes
    for each idle socket. The middlewares therefore hand it on without
    awaiting it. python-engineio replies to a bad request of this kind with
    an error of its own, and `ChatWebSocket` to one that fails the
    WebSocket handshake. Every other request to Engine.IO, such as one that
    upgrades a polling session and may find it closed, goes through the
    middlewares as usual.
    """
    if request.method != "GET" or request.path != ENGINEIO_PATH:
        return False
    # The headers as python-engineio reads them, repeats joined by commas.
    upgrade = ",".join(request.headers.getall("Upgrade", ())).lower()
    connection = ",".join(request.headers.getall("Connection", ())).lower()
    tokens = [token.strip() for token in connection.split(",")]
    if upgrade != "websocket" or "upgrade" not in tokens:
        return False
    # Parsed as python-engineio parses it, so that both see the same fields.
    query = urllib.parse.parse_qs(request.query_string)
    return query.get("transport", ["polling"])[0] == "websocket" and "sid" not in query


@web.middleware
def error_middleware(
    request: web.Request, handler: Handler
) -> Awaitable[web.StreamResponse]:
    """Turn every failure of an API route into the contract's JSON error body."""
    if _opens_websocket(request):
        return handler(request)
    return _reply_to_errors(request, handler)


async def _reply_to_errors(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    try:
        response = await handler(request)
        if not isinstance(response, web.StreamResponse):
            # python-engineio falls back to polling when a WebSocket request
            # lacks `Connection: Upgrade`, and returns packets, not a reply.
            logger.warning(
                "%s %s rejected: a WebSocket request without Connection: Upgrade",
                request.method,
                request.path,
            )
            return json_error(
                400,
                "invalid_payload",
                "invalid WebSocket request: send Connection: Upgrade"
                " with Upgrade: websocket",
            )
        return response
    except ChatError as exc:
        logger.warning(
            "%s %s rejected: %s %s", request.method, request.path, exc.code, exc.message
        )
        response = web.json_response({"error": exc.to_wire()}, status=exc.http_status)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "invalid_payload"
        return json_error(exc.status, code, exc.reason)
    except Exception as exc:
        if request.path.startswith(ENGINEIO_PATH):
            # python-engineio raises for requests on a session that closed
            # while they were in flight (KeyError "Session is disconnected"),
            # and for frames it cannot parse: the client's fault or a race
            # with its own close, not a server fault.
            logger.warning(
                "%s %s rejected by Engine.IO: %s: %s",
                request.method,
                request.path,
                type(exc).__name__,
                str(exc)[:200],
            )
            return json_error(400, "invalid_payload", "invalid Engine.IO request")
        logger.exception("%s %s failed", request.method, request.path)
        return json_error(
            500, "internal_error", "the server failed to handle the request"
        )


# Routes that browsers may call only from the server's own or a listed origin.
_CHECKED_PREFIXES = ("/api/", "/agent/", "/admin/")
_CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


@web.middleware
def origin_middleware(
    request: web.Request, handler: Handler
) -> Awaitable[web.StreamResponse]:
    """Reject API and dashboard requests from foreign origins; add CORS headers.

    Engine.IO checks origins of Socket.IO requests itself, with the same policy.
    This runs outside `error_middleware`, so error replies get the headers too.
    Other routes are handed on without a coroutine of this middleware
    awaiting them (see `_opens_websocket`).
    """
    if not request.path.startswith(_CHECKED_PREFIXES):
        return handler(request)
    return _check_origin(request, handler)


async def _check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    policy = request.app[ORIGINS_KEY]
    if not policy.allows_request(origin, request.headers, request.scheme):
        # The policy logs each rejected origin once.
        return json_error(
            403,
            "forbidden",
            f"origin {origin} is not allowed: add it to CHAT_CORS_ORIGINS",
        )
    if request.method == "OPTIONS" and origin is not None:
        response: web.StreamResponse = web.Response(status=204, headers=_CORS_HEADERS)
    else:
        response = await handler(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the token as 'Authorization: Bearer <token>'")
    return token.strip()


async def _agent(request: web.Request) -> Agent:
    """Return the agent whose token the request carries."""
    return await request.app[SERVICE_KEY].authenticate_agent(_bearer(request))


async def _admin(request: web.Request) -> Agent:
    agent = await _agent(request)
    if not agent.is_admin:
        raise Forbidden("this route is for admins only")
    return agent


def _int_query(
    request: web.Request, name: str, default: int, low: int, high: int
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidPayload(
            f"query parameter {name}={raw!r} is not a whole number"
        ) from exc
    if not low <= value <= high:
        raise InvalidPayload(f"query parameter {name} must be between {low} and {high}")
    return value


async def login(request: web.Request) -> web.Response:
    """Exchange an agent's email and password for an access token."""
    service = request.app[SERVICE_KEY]
    credentials = schemas.parse_object(schemas.Login, await _json_body(request))
    # Both limits count every attempt, so guessing a password is slow from
    # one address and for one account however many addresses are used.
    address = client_address(request, service.settings.trust_forwarded_for)
    service.limiter.check(service.login_ip_limit, address)
    service.limiter.check(service.login_account_limit, credentials.email.lower())
    agent = await service.store.get_agent_by_email(credentials.email)
    password_hash = agent.password_hash if agent else None
    if (
        not await verify_password_async(password_hash, credentials.password)
        or not agent
    ):
        logger.warning("login failed for an account")
        raise Unauthorized("email or password is wrong")
    if agent.disabled:
        logger.warning("login rejected for disabled agent=%s", agent.id)
        raise Unauthorized("this agent account is disabled: ask an admin")
    logger.info("login agent=%s", agent.id)
    token = service.issue_agent_token(agent)
    return web.json_response({"token": token, "agent": agent.to_wire()})


async def list_chats(request: web.Request) -> web.Response:
    """List chats newest first, filtered by `status` and `agent_id`."""
    await _agent(request)
    status = request.query.get("status")
    if status is not None and status not in _CHAT_STATUSES:
        raise InvalidPayload(
            f"status={status!r} is invalid: use one of "
            + ", ".join(sorted(_CHAT_STATUSES))
        )
    limit = _int_query(request, "limit", 50, 1, 500)
    chats = await request.app[SERVICE_KEY].store.list_chats(
        status=status,  # type: ignore[arg-type]
        agent_id=request.query.get("agent_id"),
        limit=limit,
        before=request.query.get("before"),
    )
    return web.json_response({"chats": [chat.to_wire() for chat in chats]})


async def chat_messages(request: web.Request) -> web.Response:
    """Return a chat's transcript to any agent or to the chat's own visitor."""
    service = request.app[SERVICE_KEY]
    chat_id = request.match_info["chat_id"]
    token = _bearer(request)
    chat = await service.store.get_chat(chat_id)
    try:
        await _agent(request)
    except Unauthorized:
        claims = service.signer.verify(token, "visitor")
        if chat is not None and chat.visitor_id != claims.subject:
            raise Forbidden(f"chat {chat_id!r} is not yours") from None
    if chat is None:
        raise NotFound(f"chat {chat_id!r} not found")
    after_seq = _int_query(request, "after_seq", 0, 0, 2**62)
    limit = _int_query(request, "limit", 500, 1, 1000)
    messages, has_more = await service.store.list_messages(
        chat_id, after_seq=after_seq, limit=limit
    )
    return web.json_response(
        {
            "chat": chat.to_wire(),
            "messages": [message.to_wire() for message in messages],
            "has_more": has_more,
        }
    )


async def _json_body(request: web.Request) -> object:
    try:
        return json.loads((await request.read()).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidPayload("request body must be a JSON object in UTF-8") from exc


async def departments(request: web.Request) -> web.Response:
    """List the departments a visitor can pick, and how many agents are ready."""
    service = request.app[SERVICE_KEY]
    return web.json_response(
        {
            "departments": [item.to_wire() for item in service.settings.departments],
            "agents_online": (await service.store.available_agents())[0],
        }
    )


async def list_agents(request: web.Request) -> web.Response:
    """List agents with status and load, for choosing a transfer target."""
    await _agent(request)
    loads = await request.app[SERVICE_KEY].store.list_agent_loads()
    return web.json_response({"agents": [item.to_wire() for item in loads]})


async def reply_to_missed(request: web.Request) -> web.Response:
    """Store an agent's reply to a missed chat and send it to the visitor."""
    agent = await _agent(request)
    body = schemas.parse_object(schemas.MissedReply, await _json_body(request))
    message, mailed = await request.app[SERVICE_KEY].reply_to_missed(
        agent.id, request.match_info["chat_id"], body.text, body.client_id
    )
    return web.json_response(
        {"message": message.to_wire(), "email_sent": mailed}, status=201
    )


async def list_canned(request: web.Request) -> web.Response:
    await _agent(request)
    items = await request.app[SERVICE_KEY].store.list_canned()
    return web.json_response({"canned_responses": [item.to_wire() for item in items]})


async def create_canned(request: web.Request) -> web.Response:
    agent = await _agent(request)
    body = schemas.parse_object(schemas.CannedResponseBody, await _json_body(request))
    item = await request.app[SERVICE_KEY].store.create_canned(
        body.shortcut, body.text, agent.id
    )
    logger.info("canned response %s created by agent=%s", item.id, agent.id)
    return web.json_response({"canned_response": item.to_wire()}, status=201)


async def update_canned(request: web.Request) -> web.Response:
    agent = await _agent(request)
    body = schemas.parse_object(schemas.CannedResponseBody, await _json_body(request))
    item = await request.app[SERVICE_KEY].store.update_canned(
        request.match_info["canned_id"], body.shortcut, body.text
    )
    logger.info("canned response %s changed by agent=%s", item.id, agent.id)
    return web.json_response({"canned_response": item.to_wire()})


async def delete_canned(request: web.Request) -> web.Response:
    agent = await _agent(request)
    canned_id = request.match_info["canned_id"]
    await request.app[SERVICE_KEY].store.delete_canned(canned_id)
    logger.info("canned response %s deleted by agent=%s", canned_id, agent.id)
    return web.Response(status=204)


async def change_password(request: web.Request) -> web.Response:
    """Change the caller's own password; every older token stops working."""
    service = request.app[SERVICE_KEY]
    agent = await _agent(request)
    body = schemas.parse_object(schemas.PasswordChange, await _json_body(request))
    service.limiter.check(service.login_account_limit, agent.email.lower())
    if not await verify_password_async(agent.password_hash, body.current_password):
        logger.warning("password change failed for agent=%s", agent.id)
        raise Unauthorized("the current password is wrong")
    changed = await service.set_password(agent, agent.id, body.new_password)
    return web.json_response(
        {"token": service.issue_agent_token(changed), "agent": changed.to_wire()}
    )


async def admin_list_agents(request: web.Request) -> web.Response:
    await _admin(request)
    loads = await request.app[SERVICE_KEY].store.list_agent_loads()
    return web.json_response(
        {
            "agents": [
                {**item.agent.to_wire(), "online": item.connected, "load": item.load}
                for item in loads
            ]
        }
    )


async def admin_create_agent(request: web.Request) -> web.Response:
    admin = await _admin(request)
    body = schemas.parse_object(schemas.AgentCreate, await _json_body(request))
    agent = await request.app[SERVICE_KEY].create_agent(
        admin, body.email, body.name, body.password, body.is_admin
    )
    return web.json_response({"agent": agent.to_wire()}, status=201)


async def admin_update_agent(request: web.Request) -> web.Response:
    admin = await _admin(request)
    body = schemas.parse_object(schemas.AgentUpdate, await _json_body(request))
    departments = None
    if body.departments:
        departments = tuple(dict.fromkeys(body.departments))
    changes = AgentChanges(
        name=body.name,
        is_admin=body.is_admin,
        disabled=body.disabled,
        max_chats=body.max_chats,
        departments=departments,
        set_departments="departments" in body.model_fields_set,
    )
    agent = await request.app[SERVICE_KEY].update_agent(
        admin, request.match_info["agent_id"], changes
    )
    return web.json_response({"agent": agent.to_wire()})


async def admin_reset_password(request: web.Request) -> web.Response:
    admin = await _admin(request)
    body = schemas.parse_object(schemas.PasswordReset, await _json_body(request))
    agent = await request.app[SERVICE_KEY].set_password(
        admin, request.match_info["agent_id"], body.password
    )
    return web.json_response({"agent": agent.to_wire()})


async def admin_overview(request: web.Request) -> web.Response:
    """Return the supervisor's view: queue, agents with load, active chats."""
    await _admin(request)
    return web.json_response(await request.app[SERVICE_KEY].overview())


async def admin_audit(request: web.Request) -> web.Response:
    """List administrative changes newest first; page with `before_id`."""
    await _admin(request)
    limit = _int_query(request, "limit", 100, 1, 500)
    before_id = None
    if "before_id" in request.query:
        before_id = _int_query(request, "before_id", 0, 0, 2**62)
    entries = await request.app[SERVICE_KEY].store.list_audit(limit, before_id)
    return web.json_response({"entries": [entry.to_wire() for entry in entries]})


async def healthz(request: web.Request) -> web.Response:
    """Report liveness and whether a trivial store query succeeds."""
    try:
        await request.app[SERVICE_KEY].store.ping()
    except Exception as exc:
        logger.error("health check failed: store unreachable: %s", exc)
        return web.json_response(
            {"status": "error", "store": "unreachable"}, status=503
        )
    return web.json_response({"status": "ok", "store": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Tell a load balancer whether to send new connections here.

    Ready means a store query succeeds and the server is not shutting down.
    A process that is alive but not ready fails this check and passes
    `/healthz`. In a cluster the body also reports whether Redis replies. A
    node stays ready without it, because it still serves its own sockets and
    every node is in the same position.
    """
    service = request.app[SERVICE_KEY]
    if service.closing:
        return web.json_response({"status": "closing"}, status=503)
    try:
        await service.store.ping()
    except Exception as exc:
        logger.error("readiness check failed: store unreachable: %s", exc)
        return web.json_response(
            {"status": "error", "store": "unreachable"}, status=503
        )
    body = {"status": "ready", "store": "ok"}
    redis = await service.people.shared_state()
    if redis is not None:
        body["redis"] = redis
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Expose counters and gauges in the Prometheus text format."""
    registry = await request.app[METRICS_KEY].collect(request.app[SERVICE_KEY])
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/auth/login", login)
    app.router.add_get("/api/chats", list_chats)
    app.router.add_get("/api/chats/{chat_id}/messages", chat_messages)
    app.router.add_post("/api/chats/{chat_id}/reply", reply_to_missed)
    app.router.add_get("/api/departments", departments)
    app.router.add_get("/api/agents", list_agents)
    app.router.add_get("/api/canned-responses", list_canned)
    app.router.add_post("/api/canned-responses", create_canned)
    app.router.add_put("/api/canned-responses/{canned_id}", update_canned)
    app.router.add_delete("/api/canned-responses/{canned_id}", delete_canned)
    app.router.add_post("/api/auth/password", change_password)
    app.router.add_get("/api/admin/agents", admin_list_agents)
    app.router.add_post("/api/admin/agents", admin_create_agent)
    app.router.add_patch("/api/admin/agents/{agent_id}", admin_update_agent)
    app.router.add_post("/api/admin/agents/{agent_id}/password", admin_reset_password)
    app.router.add_get("/api/admin/audit", admin_audit)
    app.router.add_get("/api/admin/overview", admin_overview)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
