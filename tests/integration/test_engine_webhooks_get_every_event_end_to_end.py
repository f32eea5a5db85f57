"""Webhooks through the whole engine: every accounting event reaches a receiver that is down for a while.

The engine runs as a subprocess (supervisor, ingest, manager, workers and the webhooks process) against
the Mail world: recipients named ``ok*`` are delivered, ``bounce*`` get 550 5.1.1 and bounce, ``defer*``
get 451 and expire after a short max age. The webhook receiver (aiohttp on loopback, in a thread of
the test) is down when the run starts; the webhooks process is SIGKILLed once and restarted by the
supervisor. At the end the receiver must hold every event of the accounting log, by ``event_seq``,
each once after de-duplication, with the same type and recipient, and nothing the log does not have.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.support.engine import Engine, child_pid
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.integration


class ThreadReceiver:
    """An aiohttp webhook receiver in its own thread and loop; ``start``/``stop`` may be called repeatedly."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: list[dict[str, Any]] = []
        self.posts = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        with self._lock:
            self.events.extend(body["events"])
            self.posts += 1
        return web.json_response({"ok": True})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def seqs(self) -> set[int]:
        with self._lock:
            return {int(e["event_seq"]) for e in self.events}


def inject_batch(eng: Engine, domains: list[str], start: int, n: int) -> None:
    kinds = ("ok", "ok", "bounce", "defer")
    rcpts = [f"{kinds[i % 4]}{i}@{domains[i % len(domains)]}" for i in range(start, start + n)]
    ans = eng.inject({"envelope_sender": "news@sender.test", "dsn": False, "tenant": "acme",
                      "content": "From: news@sender.test\nSubject: hi\n\nhello\n", "recipients": rcpts})
    assert ans["success_count"] == n, ans


def test_engine_webhooks_get_every_event_despite_outage_and_kill(mail_with_rules, tmp_path: Path) -> None:
    mail = mail_with_rules
    port = free_port()
    receiver = ThreadReceiver(port)  # not started: the endpoint is down when the engine starts
    extra = {
        "webhooks": {"endpoint": [{"name": "all", "url": f"http://127.0.0.1:{port}/hook", "batch_max": 25,
                                   "timeout_s": 2.0}],
                     "min_backoff_s": 0.05, "max_backoff_s": 0.5, "poll_s": 0.05},
        "queue": {"retry_intervals_s": [0.5], "max_age_s": 3.0},
    }
    total = 120
    try:
        with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                    extra=extra) as eng:
            assert eng.proc is not None and eng.proc.pid is not None
            inject_batch(eng, mail.domains, 0, total // 2)
            # the first half's outcomes are logged while the endpoint is down
            wait_for(lambda: len(eng.final_events()) >= total // 4 or None, 60, what="outcomes during the outage")
            old = wait_for(lambda: child_pid(eng.proc.pid, "webhooks"), 30, what="the webhooks child")  # type: ignore[union-attr]
            os.kill(old, signal.SIGKILL)
            receiver.start()
            inject_batch(eng, mail.domains, total // 2, total // 2)
            new = wait_for(lambda: (p := child_pid(eng.proc.pid, "webhooks")) and p != old and p or None,  # type: ignore[union-attr]
                           60, what="the supervisor restarting the webhooks child")
            assert new != old
            eng.wait_final(total, timeout_s=120)
            so_far = {int(e["event_seq"]) for e in eng.events()}
            wait_for(lambda: receiver.seqs() >= so_far or None, 60, what="every logged event at the webhook receiver")
        # stopped: the log is complete, and the webhooks process (stopped last) sent what it had
        logged = {int(e["event_seq"]): e for e in eng.events()}
    finally:
        receiver.close()

    kinds = {e["type"] for e in logged.values()}
    assert {"Reception", "Delivery", "Bounce", "TransientFailure", "Expiration"} <= kinds, kinds
    got: dict[int, dict[str, Any]] = {}
    for ev in receiver.events:
        seq = int(ev["event_seq"])
        if seq in got:  # at least once: a re-sent batch must carry the very same event
            assert got[seq] == ev
        got[seq] = ev
    assert set(got) == set(logged), "every event the engine logged, and only those"
    for seq, ev in logged.items():
        assert got[seq]["type"] == ev["type"] and got[seq].get("recipient") == ev.get("recipient"), seq
    finals = [e for e in got.values() if e["type"] in ("Delivery", "Bounce", "Expiration")]
    assert len(finals) == total
    assert len({e["recipient"] for e in finals}) == total
