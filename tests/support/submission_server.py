"""A real submission listener for tests: loopback, ephemeral port, real GroupCommitter over a real
Spool in a temporary directory, all running on an asyncio loop in a background thread.

Contract: test code only. The test thread talks to it with smtplib (or urllib for the BSMTP route)
and reads the spool directly; nothing here sleeps: each step waits on a future of the loop thread.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from mta_engine.ingest.bsmtp import make_bsmtp_route
from mta_engine.ingest.commit import GroupCommitter
from mta_engine.ingest.smtp_submit import SubmissionConfig, SubmissionListener, start_submission
from mta_engine.spool import records
from mta_engine.spool.store import Spool


@dataclass
class Queued:
    """One message as the spool holds it."""

    message: records.Message
    body: dict[str, Any]
    recipients: list[records.Recipient]


class SubmissionServer:
    def __init__(self, tmp: Path, cfg: SubmissionConfig | None = None, *, environ: dict[str, str] | None = None,
                 committer: Callable[[Spool], Any] | None = None, bsmtp_http: bool = False) -> None:
        self.spool = Spool(tmp / "spool", map_size_mb=64)
        self.cfg = cfg or SubmissionConfig(listen="127.0.0.1:0")
        self.environ = environ or {}
        self._make_committer = committer or (lambda spool: GroupCommitter(spool))
        self.bsmtp_http = bsmtp_http
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="submission-loop", daemon=True)
        self.listener: SubmissionListener | None = None
        self.http_port = 0
        self._runner: web.AppRunner | None = None

    def run(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> "SubmissionServer":
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        self.committer = self._make_committer(self.spool)
        self.listener = await start_submission(self.committer, self.cfg, hostname="submit.test", environ=self.environ)
        if self.bsmtp_http:
            app = web.Application()
            path, handler = make_bsmtp_route(self.committer)
            app.router.add_post(path, handler)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def port(self) -> int:
        assert self.listener is not None and self.listener.address is not None
        return self.listener.address[1]

    def stop(self) -> None:
        async def _stop() -> None:
            assert self.listener is not None
            await self.listener.close()
            if self._runner is not None:
                await self._runner.cleanup()

        self.run(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        if hasattr(self.committer, "close"):
            self.committer.close()
        self.spool.close()

    def __enter__(self) -> "SubmissionServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def queued(self, queue_id: str) -> Queued | None:
        msg_id, _ = records.parse_queue_id(queue_id)
        key = records.u64(msg_id)
        with self.spool.read() as txn:
            raw = txn.get(key, db=self.spool.dbs["msg"])
            if raw is None:
                return None
            msg = records.Message.decode(raw)
            body = records.decode_body(txn.get(key, db=self.spool.dbs["body"]))
            rcpts = [records.Recipient.decode(txn.get(records.rcpt_key(msg_id, i), db=self.spool.dbs["rcpt"]))
                     for i in range(msg.n_rcpt)]
        return Queued(msg, body, rcpts)

    def message_count(self) -> int:
        return self.spool.stat()["msg"]


def queue_id_of(reply: bytes) -> str:
    """The queue id in "250 2.0.0 Ok: queued as <id>"."""
    text = reply.decode()
    assert "queued as " in text, text
    return text.rsplit("queued as ", 1)[1].strip()
