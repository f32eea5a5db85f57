"""``_SmtpProtocol``: the ``asyncio.Protocol`` under ``SmtpSession`` (split out to keep it short).

Contract: feeds received bytes to the ``ClientConnection`` and wakes the one coroutine waiting
for data or for the write buffer to drain. It never parses, decides or logs; write-side
timeouts become ``DataTimeout`` and a lost connection ``NetworkError`` (from ``drain``).
"""

from __future__ import annotations

import asyncio

from mta_engine.errors import DataTimeout, NetworkError
from mta_engine.smtp.connection import ClientConnection

__all__ = ["_SmtpProtocol"]

class _SmtpProtocol(asyncio.Protocol):
    """Feeds received bytes to the ``ClientConnection`` and wakes the one waiting coroutine."""

    def __init__(self, conn: ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.lost_exc: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._conn.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._conn.receive_data(b"")
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        self._conn.receive_data(b"")
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self) -> None:
        """Return after the next ``data_received``/EOF (immediately if the connection is gone)."""
        if self.lost:
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self, block_s: float) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        while self._paused and not self.lost:
            self._drain_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(block_s):
                    await self._drain_waiter
            except TimeoutError as exc:
                raise DataTimeout(f"data block not written within {block_s}s") from exc
            finally:
                self._drain_waiter = None
        if self.lost:
            raise NetworkError("connection lost while writing data") from self.lost_exc
