"""Webhook process main: POSTs accounting events from the spool outbox to the configured URLs.

Contract: a child of the supervisor, separate from the manager so that a slow or dead endpoint
never slows scheduling. It reads the outbox (never writes it) and writes only its own cursors in
the ``meta`` DB (``obs.webhooks``). Each endpoint runs as its own task with its own cursor and
backoff: one endpoint failing delays only itself. Delivery is at least once: the cursor moves only
after a 2xx, and is persisted at most ``CURSOR_FLUSH_S`` later (and at shutdown), so a crash
re-sends at most that much. Cursors are rewritten every ``heartbeat_s`` even when idle, which is
how the manager knows the process is alive and keeps holding the outbox for it. Outbound traffic
goes only to the configured URLs; the process listens on nothing. LMDB work runs on one thread.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import aiohttp
import structlog

from ..config import Config
from ..obs.webhooks import (Courier, WebhookConfig, cursor_put, cursor_register, encode_payload,
                            signature)
from ..spool.store import Spool

log = structlog.get_logger("webhooks")

PAGE_EVENTS = 10000
"""Outbox events read per page: at least one whole outbox record (one manager tick) at a time."""
CURSOR_FLUSH_S = 1.0
"""Advanced cursors are written at most this often: the most a crash can re-send."""


def outbox_page(spool: Spool, after: int, limit: int) -> list[dict[str, Any]]:
    """Outbox events with ``event_seq`` > after, in order: whole outbox records until at least
    ``limit`` events (memory stays bounded however far an endpoint lags). Undecodable records are
    skipped (their sequence numbers show up as ``missing``)."""
    with spool.read() as txn:
        return spool.events_after(txn, after, limit=limit)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in delta-seconds form (RFC 9110 §10.2.3); an HTTP-date is ignored."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


class WebhookService:
    """The delivery loops of every endpoint over one spool. ``run(stop)`` returns after ``stop``
    is set and the cursors are saved."""

    def __init__(self, cfg: WebhookConfig, spool: Spool, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.spool = spool
        self.clock = clock
        self.rng = rng or random.Random()
        self.endpoints = cfg.endpoints()
        self.couriers: dict[str, Courier] = {}
        self._saved: dict[str, int] = {}
        self._saved_at = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhooks-spool")

    def __repr__(self) -> str:
        return f"<WebhookService endpoints={len(self.endpoints)} couriers={list(self.couriers.values())!r}>"

    async def _spool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _register(self) -> dict[str, int]:
        with self.spool.write() as txn:
            return cursor_register(txn, self.spool, self.endpoints, self.clock())

    def _save(self, cursors: dict[str, int], now: float) -> None:
        with self.spool.write() as txn:
            for name, seq in cursors.items():
                cursor_put(txn, self.spool, name, seq, now)

    async def save_cursors(self, *, force: bool = False) -> None:
        """Write cursors that moved; all of them when a heartbeat is due or ``force``."""
        now = self.clock()
        current = {name: c.cursor for name, c in self.couriers.items()}
        if not force and current == self._saved and now - self._saved_at < self.cfg.heartbeat_s:
            return
        await self._spool(self._save, current, now)
        self._saved, self._saved_at = current, now

    async def run(self, stop: asyncio.Event) -> None:
        start = await self._spool(self._register)
        for ep in self.endpoints:
            self.couriers[ep.name] = Courier(ep, start[ep.name], retention_s=self.cfg.retention_s,
                                             min_backoff_s=self.cfg.min_backoff_s, max_backoff_s=self.cfg.max_backoff_s)
        self._saved, self._saved_at = dict(start), self.clock()
        log.info("webhooks_started", endpoints=[repr(e) for e in self.endpoints], cursors=start)
        async with aiohttp.ClientSession(headers={"User-Agent": "mta-engine-webhooks"}) as session:
            tasks = [asyncio.create_task(self._deliver_loop(c, session, stop), name=f"webhook-{c.endpoint.name}")
                     for c in self.couriers.values()]
            try:
                while not stop.is_set():
                    await _wait(stop, min(CURSOR_FLUSH_S, self.cfg.heartbeat_s))
                    await self.save_cursors()
            finally:
                for t in tasks:
                    t.cancel()  # an unacknowledged POST is simply sent again after restart
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.save_cursors(force=True)
                self._executor.shutdown(wait=True)
        log.info("webhooks_stopped", couriers=[repr(c) for c in self.couriers.values()])

    async def _deliver_loop(self, c: Courier, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        buf: list[dict[str, Any]] = []
        while not stop.is_set():
            now = self.clock()
            expired_before, missing_before = c.expired, c.missing
            c.expire(now)
            if c.pending is None:
                if not buf:
                    buf = await self._spool(outbox_page, self.spool, c.cursor, PAGE_EVENTS)
                    if not buf:
                        await _wait(stop, self.cfg.poll_s)
                        continue
                used = c.offer(buf, now)
                del buf[:used]
            if c.expired > expired_before:
                log.warning("webhook_events_expired", webhook=c.endpoint.name, count=c.expired - expired_before,
                            cursor=c.cursor, retention_s=self.cfg.retention_s)
            if c.missing > missing_before:
                log.warning("webhook_events_missing", webhook=c.endpoint.name, count=c.missing - missing_before,
                            cursor=c.cursor)
            if c.pending is None:
                continue
            if not c.due(now):
                await _wait(stop, c.retry_at - now)
                continue
            await self._post(c, session)

    async def _post(self, c: Courier, session: aiohttp.ClientSession) -> None:
        assert c.pending is not None
        ep, batch = c.endpoint, c.pending
        body = encode_payload(ep, batch)
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": f"{ep.name}:{batch.first_seq}-{batch.last_seq}"}
        if ep.secret:
            headers["X-Mta-Signature"] = signature(ep.secret, body)
        status: int | None = None
        retry_after: float | None = None
        error: str | None = None
        try:
            async with session.post(ep.url, data=body, headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=ep.timeout_s)) as resp:
                status = resp.status
                retry_after = _retry_after_s(resp.headers.get("Retry-After"))
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            recovered = c.failures
            c.on_delivered()
            if recovered:
                log.info("webhook_recovered", webhook=ep.name, after_failures=recovered, cursor=c.cursor)
            log.debug("webhook_delivered", webhook=ep.name, first_seq=batch.first_seq, last_seq=batch.last_seq,
                      count=len(batch.events))
            return
        delay = c.on_failed(self.clock(), self.rng, retry_after)
        log.warning("webhook_failed", webhook=ep.name, status=status, error=error, failures=c.failures,
                    retry_in_s=round(delay, 2), first_seq=batch.first_seq, last_seq=batch.last_seq)


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    """Sleep up to ``timeout_s`` or until ``stop`` is set."""
    if timeout_s <= 0:
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except asyncio.TimeoutError:
        pass


async def webhooks_main(cfg: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    wcfg: WebhookConfig = cfg.webhooks  # type: ignore[attr-defined]
    if not wcfg.endpoint:
        log.info("webhooks_idle", pid=os.getpid(), reason="no [[webhooks.endpoint]] configured")
        await stop.wait()
        return 0
    spool = Spool(cfg.spool.path, map_size_mb=cfg.spool.map_size_mb, sync=cfg.spool.sync)
    try:
        await WebhookService(wcfg, spool).run(stop)
    finally:
        spool.close()
    return 0


def main(cfg: Config) -> int:
    from ..obs.log import configure

    configure(cfg, role="webhooks")
    import uvloop

    return uvloop.run(webhooks_main(cfg))


__all__ = ["WebhookService", "outbox_page", "main"]
