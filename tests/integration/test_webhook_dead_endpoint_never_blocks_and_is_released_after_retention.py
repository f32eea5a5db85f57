"""A dead webhook endpoint delays only itself, holds the outbox for ``retention_s``, then lets go.

Real spool in tmp_path, a real aiohttp receiver on 127.0.0.1 for the live endpoint, and a port with
nothing listening for the dead one. The live endpoint gets every event at once; the dead endpoint's
cursor holds the outbox (the manager's ``trim_floor`` stays at 0) until the events are older than
the retention, when they are dropped for it (counted and logged) and the outbox can be trimmed.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from mta_engine.obs.webhooks import WebhookConfig, cursor_get, trim_floor
from mta_engine.proc.webhooks import WebhookService
from mta_engine.spool.store import Spool
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

N = 200
RETENTION_S = 1.5


async def wait_until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)  # polling interval, not synchronisation


def floor_now(spool: Spool, cfg: WebhookConfig) -> int:
    with spool.write() as txn:
        return trim_floor(txn, spool, cfg, time.time())


async def scenario(tmp: Path) -> None:
    live_port, dead_port = free_port(), free_port()
    seen: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        seen.extend(ev["event_seq"] for ev in orjson.loads(await request.read())["events"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", live_port).start()
    spool = Spool(tmp / "spool", map_size_mb=64)
    cfg = WebhookConfig(endpoint=[{"name": "live", "url": f"http://127.0.0.1:{live_port}/hook"},
                                  {"name": "dead", "url": f"http://127.0.0.1:{dead_port}/hook", "timeout_s": 0.5}],
                        retention_s=RETENTION_S, min_backoff_s=0.05, max_backoff_s=0.2, poll_s=0.02)
    stop = asyncio.Event()
    service = WebhookService(cfg, spool, rng=random.Random(3))
    run = asyncio.create_task(service.run(stop))
    with spool.write() as txn:
        spool.events_append(txn, [{"type": "Delivery", "timestamp": time.time(), "tenant": "t", "n": i}
                                  for i in range(N)])

    await wait_until(lambda: sorted(seen) == list(range(1, N + 1)), 10, "every event at the live endpoint")
    dead = service.couriers["dead"]
    assert dead.cursor == 0 and dead.failures >= 1 and dead.pending is not None
    assert floor_now(spool, cfg) == 0, "the dead endpoint holds the outbox within the retention"
    assert spool.stat()["outbox"] == 1

    await wait_until(lambda: floor_now(spool, cfg) == N, 10 * RETENTION_S, "the dead endpoint to let go")
    assert dead.expired == N and dead.delivered == 0
    with spool.read() as txn:
        saved = cursor_get(txn, spool, "dead")
    assert saved is not None and saved.seq == N
    with spool.write() as txn:  # the manager's trim, accounting having written everything
        spool.events_trim(txn, min(N, trim_floor(txn, spool, cfg, time.time())))
    assert spool.stat()["outbox"] == 0
    assert len(seen) == N, "the live endpoint was never re-sent anything"
    stop.set()
    await run
    await runner.cleanup()
    spool.close()


def test_webhook_dead_endpoint_never_blocks_and_is_released_after_retention(tmp_path: Path) -> None:
    """A dead endpoint neither delays another endpoint nor holds the outbox past its retention."""
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 60))
