"""The stock Node.js Socket.IO client drives a whole chat over each transport.

`tests/node/chat_flow.mjs` uses socket.io-client from `node_modules`; `make test`
installs it with `npm ci`.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.support import ROOT, ServerProcess

NODE_SCRIPT = ROOT / "tests" / "node" / "chat_flow.mjs"
SOCKET_IO_CLIENT = ROOT / "node_modules" / "socket.io-client" / "package.json"
# The script stops itself after 30 s, and the margin covers a slow Node start-up.
SCRIPT_TIMEOUT_S = 60


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_node_client_chat_flow(server: ServerProcess, transport: str) -> None:
    node = shutil.which("node")
    assert node is not None, "node not found on PATH: install Node.js, then `make test`"
    assert SOCKET_IO_CLIENT.is_file(), (
        f"{SOCKET_IO_CLIENT} not found: run `npm ci` in {ROOT} or `make test`"
    )
    await server.create_agent("ann@example.com", "Ann")
    token = await server.login("ann@example.com")
    env = {
        **os.environ,
        "CHAT_URL": server.url,
        "AGENT_TOKEN": token,
        "TRANSPORT": transport,
    }

    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_SCRIPT),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        raw_output, _ = await asyncio.wait_for(process.communicate(), SCRIPT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{NODE_SCRIPT.name} did not exit within {SCRIPT_TIMEOUT_S} s")
    output = raw_output.decode("utf-8", errors="replace")

    assert process.returncode == 0, output
    last_line = output.strip().splitlines()[-1]
    assert last_line.endswith(" passed, 0 failed"), output
