"""``DrainingListener``: what our aiosmtpd listeners (submission, inbound reports) share.

Contract: owns the listening ``asyncio.Server`` and a weak set of live sessions, and counts the
commits in flight (``in_flight()``), so that ``close()`` stops accepting, waits up to a deadline
for every answered-after-commit reply to go out, then drops the sessions. A subclass supplies
``session()`` (the protocol factory) and its aiosmtpd hooks. No spool access here.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import structlog

log = structlog.get_logger("ingest")


class DrainingListener:
    """Base class: the server, its sessions, and the drain on close. ``kind`` names it in logs."""

    kind = "listener"

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.sessions: weakref.WeakSet[Any] = weakref.WeakSet()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port), once listening."""
        if self.server is None or not self.server.sockets:
            return None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    def session(self) -> Any:  # pragma: no cover - every listener overrides it
        raise NotImplementedError

    async def listen(self, listen: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind ``"host:port"`` (``"[v6]:port"`` too) and start accepting sessions."""
        host, _, port = listen.rpartition(":")
        loop = loop or asyncio.get_running_loop()
        self.server = await loop.create_server(self.session, host.strip("[]"), int(port), reuse_address=True)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Around a commit whose reply the client is waiting for: ``close`` waits for it."""
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, let commits in flight answer their clients, then drop every session."""
        if self.server is not None:
            self.server.close()
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning(f"{self.kind}_drain_timed_out", inflight=self._inflight)
        for s in list(self.sessions):
            if s.transport is not None:
                s.transport.close()
        if self.server is not None:
            await self.server.wait_closed()
