"""The control socket server, hosted by the manager. Unix socket, mode 0600 (owner only).

Contract: answers one request per connection; never blocks the manager's loop on a client;
a malformed request gets ``{"ok": false, "error": ...}``, never a crash.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable

import structlog

from . import protocol

log = structlog.get_logger("control")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve(path: str, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    if os.path.exists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(lambda r, w: _client(r, w, handlers), path=path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handlers: dict[str, Handler]) -> None:
    try:
        head = await asyncio.wait_for(reader.readexactly(4), 10)
        req = protocol.decode(await asyncio.wait_for(reader.readexactly(protocol.decode_length(head)), 10))
        cmd = req.get("cmd")
        handler = handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            resp = {"ok": False, "error": f"unknown command {cmd!r}; known: {', '.join(sorted(handlers))}"}
        else:
            resp = {"ok": True, **(await handler(req))}
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
        resp = {"ok": False, "error": str(exc) if isinstance(exc, ValueError) else f"bad request: {exc}"}
    except Exception as exc:  # a handler bug must not kill the manager
        log.exception("control_request_failed")
        resp = {"ok": False, "error": f"internal error: {exc!r}"}
    try:
        writer.write(protocol.encode(resp))
        await writer.drain()
    finally:
        writer.close()
