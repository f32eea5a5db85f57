"""Webhooks over a real spool and a real HTTP receiver that goes down, and a webhook-process restart.

Events are appended with ``Spool.events_append`` while a stand-in manager trims the outbox to
``min(everything, webhooks.trim_floor(...))`` after every append, as the real manager will. The
receiver (aiohttp, 127.0.0.1, ephemeral port) is down for part of the run, and the webhook service
is stopped and started again in the middle. Every event must arrive (duplicates are allowed: at
least once), the filtered endpoint gets exactly its events, and the outbox is trimmed behind them.
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

TOTAL = 3000


class Receiver:
    """A webhook receiver on loopback that records every event_seq per path; can be stopped and restarted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[str, list[int]] = {}
        self.posts = 0
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        assert request.headers["Idempotency-Key"].startswith(body["webhook"] + ":")
        seqs = [ev["event_seq"] for ev in body["events"]]
        assert seqs == sorted(seqs) and (seqs[0], seqs[-1]) == (body["first_seq"], body["last_seq"])
        self.seen.setdefault(request.path, []).extend(seqs)
        self.posts += 1
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None


def event(i: int, now: float) -> dict[str, Any]:
    tenant = ("acme", "globex", None)[i % 3]
    type_ = ("Delivery", "Bounce", "TransientFailure", "Reception")[i % 4]
    return {"type": type_, "timestamp": now, "queue_id": f"{i:016x}.0", "recipient": f"r{i}@d.test", "tenant": tenant}


async def wait_until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)  # polling interval, not synchronisation


async def scenario(tmp: Path) -> None:
    port = free_port()
    spool = Spool(tmp / "spool", map_size_mb=256)
    cfg = WebhookConfig(
        endpoint=[{"name": "all", "url": f"http://127.0.0.1:{port}/all", "batch_max": 50, "timeout_s": 2.0},
                  {"name": "acme-bounces", "url": f"http://127.0.0.1:{port}/bounces", "types": ["Bounce"],
                   "tenants": ["acme"], "batch_max": 7}],
        min_backoff_s=0.02, max_backoff_s=0.2, poll_s=0.02, retention_s=3600.0)
    receiver = Receiver(port)
    await receiver.start()
    stop = asyncio.Event()
    service = WebhookService(cfg, spool, rng=random.Random(1))
    run = asyncio.create_task(service.run(stop))
    rng = random.Random(5)
    expected_bounces: list[int] = []
    appended = trimmed_to = 0
    down_at: int | None = None
    restarted = False
    while appended < TOTAL:
        n = min(rng.randint(1, 60), TOTAL - appended)
        batch = [event(appended + k, time.time()) for k in range(n)]
        with spool.write() as txn:  # the manager's _commit: trim, then append, in one transaction
            floor = trim_floor(txn, spool, cfg, time.time())
            trimmed_to = max(trimmed_to, min(floor, appended))  # "accounting written" = all appended so far
            spool.events_trim(txn, trimmed_to)
            spool.events_append(txn, batch)
        expected_bounces += [e["event_seq"] for e in batch if e["type"] == "Bounce" and e["tenant"] == "acme"]
        appended += n
        if down_at is None and appended >= TOTAL // 4:
            await receiver.stop()  # the endpoint goes down while events keep coming
            down_at = appended
        elif down_at is not None and receiver.runner is None and appended >= down_at + TOTAL // 4:
            await receiver.start()
        if not restarted and appended >= TOTAL * 2 // 3:
            restarted = True  # restart the webhook process: it must resume from its persisted cursor
            stop.set()
            await run
            with spool.read() as txn:
                saved = cursor_get(txn, spool, "all")
            assert saved is not None and saved.seq == service.couriers["all"].cursor > 0
            stop = asyncio.Event()
            service = WebhookService(cfg, spool, rng=random.Random(2))
            run = asyncio.create_task(service.run(stop))
        await asyncio.sleep(0.001)  # let the service run between commits, as between manager ticks
    assert receiver.runner is not None

    await wait_until(lambda: set(receiver.seen.get("/all", [])) >= set(range(1, TOTAL + 1)), 60,
                     "every event at /all")
    await wait_until(lambda: set(receiver.seen.get("/bounces", [])) >= set(expected_bounces), 30,
                     "every acme bounce at /bounces")
    await wait_until(lambda: service.couriers["acme-bounces"].cursor == TOTAL, 10, "filtered cursor at the end")
    stop.set()
    await run
    await receiver.stop()

    all_seen = receiver.seen["/all"]
    assert sorted(set(all_seen)) == list(range(1, TOTAL + 1))
    assert len(all_seen) - TOTAL <= 2 * 50, "only batches in flight at the outage and the restart are re-sent"
    assert set(receiver.seen["/bounces"]) == set(expected_bounces)
    with spool.write() as txn:  # once both cursors are at the end, the manager may trim everything
        assert trim_floor(txn, spool, cfg, time.time()) == TOTAL
        spool.events_trim(txn, TOTAL)
    assert spool.stat()["outbox"] == 0
    spool.close()


def test_webhook_delivers_every_event_despite_outage_and_restart(tmp_path: Path) -> None:
    """Every outbox event reaches the endpoint at least once across an outage and a restart; none is lost."""
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 120))
