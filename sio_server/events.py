"""Socket.IO handlers: parse the payload, call the chat service, return the reply."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from . import schemas
from .errors import ChatError, Forbidden, InvalidAuth, InvalidPayload
from .presence import Connection
from .ratelimit import client_address
from .service import ChatService

logger = logging.getLogger("sio_server.events")

Handler = Callable[[Connection, Any], Awaitable[dict[str, Any]]]
# Events an admin's watching socket may send.
OBSERVER_EVENTS = frozenset({"watch_chat", "unwatch_chat"})


def error_reply(error: ChatError) -> dict[str, Any]:
    """Build an `ok: false` reply."""
    return {"ok": False, "error": error.to_wire()}


def register_events(sio: socketio.AsyncServer, service: ChatService) -> None:
    """Attach every event of the chat protocol to `sio`."""
    events: dict[str, tuple[type[schemas.Payload], Handler]] = {
        "join_queue": (schemas.JoinQueue, service.join_queue),
        "agent_ready": (schemas.AgentReady, service.agent_ready),
        "agent_away": (schemas.AgentAway, service.agent_away),
        "message": (schemas.SendMessage, service.send_message),
        "typing": (schemas.Typing, service.typing),
        "read": (schemas.Read, service.read),
        "history": (schemas.History, service.history),
        "end_chat": (schemas.EndChat, service.end_chat),
        "leave_message": (schemas.LeaveMessage, service.leave_message),
        "rate_chat": (schemas.RateChat, service.rate_chat),
        "transfer_chat": (schemas.TransferChat, service.transfer_chat),
        "note": (schemas.AddNote, service.add_note),
        "list_notes": (schemas.ListNotes, service.list_notes),
        "watch_chat": (schemas.WatchChat, service.watch_chat),
        "unwatch_chat": (schemas.WatchChat, service.unwatch_chat),
    }
    for name, (model, handler) in events.items():
        sio.on(name, _make_handler(service, name, model, handler))

    async def connect(sid: str, environ: Any, auth: Any = None) -> bool:
        address = client_address(
            environ["aiohttp.request"], service.settings.trust_forwarded_for
        )
        await _connect(service, sid, auth, address)
        # The client may have closed the connection while the handler awaited
        # the store. python-socketio then never calls the disconnect handler,
        # so the socket is forgotten here instead.
        eio_socket = sio.eio.sockets.get(sio.manager.eio_sid_from_sid(sid, "/"))
        if eio_socket is None or eio_socket.closed or eio_socket.closing:
            logger.info("sid=%s closed while connecting", sid)
            await service.disconnect(sid, "closed during connect")
            return False
        return True

    async def disconnect(sid: str, reason: str = "unknown") -> None:
        try:
            await service.disconnect(sid, str(reason))
        except Exception:
            logger.exception("disconnect of sid=%s failed", sid)

    async def unknown_event(event: Any, sid: str, *args: Any) -> dict[str, Any]:
        name = str(event)[:64]
        try:
            service.limiter.check(service.event_limit, sid)
        except ChatError as exc:
            return error_reply(exc)
        logger.warning("sid=%s sent unknown event %r", sid, name)
        service.metrics.errors.labels("invalid_payload").inc()
        return error_reply(InvalidPayload(f"unknown event {name!r}"))

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    sio.on("*", unknown_event)


async def _connect(service: ChatService, sid: str, auth: Any, address: str) -> None:
    try:
        service.admit(address)
        if not isinstance(auth, dict):
            raise InvalidAuth(
                'auth must be an object such as {"role": "visitor", "token": null}'
            )
        role = auth.get("role")
        try:
            if role == "visitor":
                visitor = schemas.parse_object(schemas.VisitorAuth, auth)
                await service.connect_visitor(sid, visitor)
            elif role == "agent":
                agent = schemas.parse_object(schemas.AgentAuth, auth)
                await service.connect_agent(sid, agent)
            else:
                raise InvalidAuth(
                    f'auth.role must be "visitor" or "agent", got {role!r}'
                )
        except InvalidPayload as exc:
            raise InvalidAuth(f"auth {exc.message}") from exc
    except ChatError as exc:
        await service.disconnect(sid, "rejected")
        logger.warning("sid=%s connection rejected: %s %s", sid, exc.code, exc.message)
        raise socketio.exceptions.ConnectionRefusedError(
            exc.message, exc.to_wire()
        ) from exc
    except Exception as exc:
        await service.disconnect(sid, "rejected")
        logger.exception("sid=%s connect failed", sid)
        error = ChatError("the server failed to admit the connection: retry shortly")
        raise socketio.exceptions.ConnectionRefusedError(
            error.message, error.to_wire()
        ) from exc


def _make_handler(
    service: ChatService,
    event: str,
    model: type[schemas.Payload],
    handler: Handler,
) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def handle(sid: str, *args: Any) -> dict[str, Any]:
        # Nothing here may await before the service takes the chat lock,
        # because the order of arrival decides the order of messages.
        connection = service.presence.get(sid)
        try:
            if connection is None:
                raise Forbidden("this socket has no identity: reconnect")
            if connection.role == "observer" and event not in OBSERVER_EVENTS:
                raise Forbidden(f"{event} needs an agent socket: this one only watches")
            service.limiter.check(service.event_limit, sid)
            payload = schemas.parse_payload(model, args)
            with service.in_flight():
                return await handler(connection, payload)
        except ChatError as exc:
            logger.warning("sid=%s event=%s rejected: %s", sid, event, exc.code)
            service.metrics.errors.labels(exc.code).inc()
            return error_reply(exc)
        except Exception:
            logger.exception("sid=%s event=%s failed", sid, event)
            service.metrics.errors.labels("internal_error").inc()
            return error_reply(ChatError("the server failed to handle the event"))

    handle.__name__ = f"on_{event}"
    return handle
