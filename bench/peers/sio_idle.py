"""Peers for the idle workload: python-socketio's layers with no chat service.

`--server stock` runs python-socketio's own `AsyncServer` with its defaults.
`--server chat` runs the chat server's `ChatSocketServer`, with its changes to
python-engineio and python-socketio, but none of the chat service. Both reply to
every connect with a `session` event and keep nothing else. Side by side with
the raw aiohttp relay and the chat server, they show what each layer costs per
connection.

Usage: python bench/peers/sio_idle.py --server stock|chat [--port N] [--host ADDRESS]
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

import socketio
import uvloop
from aiohttp import web

# The chat server's package, from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sio_server.__main__ import GC_YOUNG_THRESHOLD, LISTEN_BACKLOG
from sio_server.socket_server import ChatSocketServer

# The `session` fields that the load generator reads: a visitor keeps its token.
SESSION = {"role": "visitor", "visitor_id": "v", "token": "t", "chat": None}


def create_server(kind: str) -> socketio.AsyncServer:
    if kind == "stock":
        sio = socketio.AsyncServer(async_mode="aiohttp")

        async def send_session(sid: str) -> None:
            await sio.emit("session", SESSION, to=sid)

        # Sent from a task, which runs after python-socketio's CONNECT reply.
        async def stock_connect(sid: str, environ: Any, auth: Any = None) -> bool:
            sio.start_background_task(send_session, sid)
            return True

        sio.on("connect", stock_connect)
        return sio

    chat = ChatSocketServer(async_mode="aiohttp")

    async def chat_connect(sid: str, environ: Any, auth: Any = None) -> bool:
        return True

    async def after_connect(sid: str) -> None:
        await chat.emit("session", SESSION, to=sid, ignore_queue=True)

    chat.on("connect", chat_connect)
    chat.after_connect = after_connect
    return chat


async def tune_collector(app: web.Application) -> None:
    # The chat server's settings, applied at the same point.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("stock", "chat"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    app = web.Application()
    create_server(args.server).attach(app)
    app.on_startup.append(tune_collector)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        backlog=LISTEN_BACKLOG,
        loop=uvloop.new_event_loop(),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
