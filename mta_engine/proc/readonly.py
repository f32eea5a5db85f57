"""Opening the spool read-only from a child process that may start before any writer has made it."""

from __future__ import annotations

import asyncio
import time

from ..config import Config
from ..errors import MtaError
from ..spool.store import Spool


async def open_spool_readonly(cfg: Config, wait_s: float = 30.0) -> Spool:
    """The spool opened read-only, retrying every 0.1 s for up to ``wait_s``: the supervisor
    starts every child at once, and a read-only open fails until the manager or ingest created
    the spool and its databases. Raises the last ``MtaError`` when it never appears."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Spool(cfg.spool.path, map_size_mb=cfg.spool.map_size_mb, readonly=True)
        except MtaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
