"""Manager <-> worker IPC: a unix stream socket carrying a stream of msgpack maps.

Contract: framing only. msgpack values are self-delimiting, so frames are simply concatenated
and a streaming ``msgpack.Unpacker`` splits them; every frame is a map with a ``t`` (type) key.
Frames are batches (many jobs, many outcomes) so that one syscall carries many recipients.

    worker -> manager: {"t": "hello", "shard": int, "pid": int}
                       {"t": "outcomes", "items": [outcome, ...]}
                         an outcome is one job's report: {"id", "results", "mx", "ip", "tls", "kind"
                         or "partial"}; "results" entries are [indexes, code, enhanced, text,
                         phase, unknown], one per reply (delivery/outcome.py ``grouped``)
                       {"t": "drained"}
                       {"t": "wake"}  (from ingest: new work was committed)
    manager -> worker: {"t": "jobs", "items": [job, ...]}
                       {"t": "drain"}
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import msgpack

MAX_FRAME_BYTES = 256 << 20


class FrameProtocol(asyncio.Protocol):
    """An asyncio protocol that decodes a msgpack stream and calls ``on_frame`` per map."""

    def __init__(self, on_frame: Callable[["FrameProtocol", dict[str, Any]], None],
                 on_lost: Callable[["FrameProtocol", Exception | None], None]) -> None:
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_FRAME_BYTES)
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._packer = msgpack.Packer(use_bin_type=True)
        self.transport: asyncio.Transport | None = None
        self.peer: dict[str, Any] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self._unpacker.feed(data)
        for frame in self._unpacker:
            self._on_frame(self, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(self, exc)

    def send(self, frame: dict[str, Any]) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(self._packer.pack(frame))
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
