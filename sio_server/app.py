"""Build the aiohttp application with the Socket.IO server and its services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from socket import gethostname

import socketio
from aiohttp import web

from .auth import TokenSigner
from .config import Settings, ensure_secret_key
from .events import register_events
from .http import (
    METRICS_KEY,
    ORIGINS_KEY,
    SERVICE_KEY,
    add_routes,
    error_middleware,
    origin_middleware,
)
from .metrics import LoopLagMonitor, Metrics
from .origins import OriginPolicy
from .pages import add_page_routes
from .service import ChatService
from .socket_server import ChatSocketServer
from .store import create_store

logger = logging.getLogger("sio_server.app")


def create_sio(settings: Settings, origins: OriginPolicy) -> socketio.AsyncServer:
    manager = None
    if settings.redis_url:
        from .cluster import ChatRedisManager

        manager = ChatRedisManager(
            settings.redis_url, channel=f"{settings.cluster_name}:socketio"
        )
    return ChatSocketServer(
        client_manager=manager,
        async_mode="aiohttp",
        cors_allowed_origins="*" if origins.allow_any else origins.allows_environ,
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        # Well above a 4,000-character message (at most 16 KB of UTF-8), so an
        # oversize text gets a payload_too_large reply, not a dropped connection.
        max_http_buffer_size=settings.max_payload_bytes,
        websocket_compression=settings.ws_compression,
        logger=False,
        engineio_logger=False,
    )


def create_app(settings: Settings) -> web.Application:
    """Return the application; the store opens when the app starts."""
    settings = ensure_secret_key(settings)
    origins = OriginPolicy(
        settings.cors_origins, allow_any="*" in settings.cors_origins
    )
    if origins.allow_any:
        logger.warning(
            "CHAT_CORS_ORIGINS=*: any web site can open chats and call the API in"
            " its visitors' browsers"
        )
    sio = create_sio(settings, origins)
    store = create_store(settings.effective_database_url)
    signer = TokenSigner(
        settings.secret_key, settings.agent_token_ttl_s, settings.visitor_token_ttl_s
    )
    metrics = Metrics()
    service = ChatService(sio, store, signer, settings, metrics)

    app = web.Application(middlewares=[origin_middleware, error_middleware])
    app[SERVICE_KEY] = service
    app[ORIGINS_KEY] = origins
    app[METRICS_KEY] = metrics
    sio.attach(app)
    sio.after_connect = service.flush_after_connect
    register_events(sio, service)
    if settings.admin_ui:
        # Production mode reports counts only: development mode would stream
        # every event, message text included, to the UI.
        sio.instrument(
            auth=service.admin_ui_login,
            mode="production",
            read_only=settings.admin_ui_read_only,
            server_id=f"{gethostname()}:{settings.port}",
        )
        logger.info(
            "Socket.IO Admin UI at /admin-ui/ for admin accounts (%s)",
            "read-only" if settings.admin_ui_read_only else "read and write",
        )
    add_routes(app)
    add_page_routes(app, admin_ui=settings.admin_ui)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Before any start-up work, which assumes this is the only server
        # on a store that allows one.
        store.claim_for_server()
        await store.open()
        await service.start()
        loop_lag = LoopLagMonitor(metrics.loop_lag)
        loop_lag.start()
        yield
        loop_lag.stop()
        # Handlers still running when the connections dropped finish before
        # the store closes.
        await service.drain(timeout_s=settings.shutdown_timeout_s)
        await service.stop()
        await store.close()

    async def close_connections(app: web.Application) -> None:
        service.closing = True
        dropped = await service.drop_connections()
        logger.info("shutting down: dropped %d connections", dropped)
        await sio.shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_connections)
    return app
