"""Ingest process main: the HTTP inject API, the SMTP submission listener and the inbound (bounce and
feedback-loop) listener, in front of the group committer."""

from __future__ import annotations

import asyncio
import os
import signal

import structlog
from aiohttp import web

from ..config import Config
from ..ingest.commit import GroupCommitter
from ..ingest.bsmtp import make_bsmtp_route
from ..ingest.http import make_app
from ..ingest.smtp_submit import start_submission
from ..spool.origin import OriginIndex
from ..spool.store import Spool
from .ipc import FrameProtocol

log = structlog.get_logger("ingest")


class ManagerNotice:
    """Tells the manager that new work was committed, so it need not wait for its next poll.

    Best effort: when the manager is not reachable the notice is dropped (the manager polls anyway).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.proto: FrameProtocol | None = None
        self._connecting = False

    def __call__(self) -> None:
        if self.proto is not None and self.proto.send({"t": "wake"}):
            return
        if not self._connecting:
            self._connecting = True
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, proto = await asyncio.get_running_loop().create_unix_connection(
                lambda: FrameProtocol(lambda p, f: None, self._lost), self.path)
            self.proto = proto  # type: ignore[assignment]
            proto.send({"t": "wake"})  # type: ignore[attr-defined]
        except OSError:
            pass
        finally:
            self._connecting = False

    def _lost(self, proto: FrameProtocol, exc: Exception | None) -> None:
        self.proto = None


async def ingest_main(cfg: Config) -> int:
    loop = asyncio.get_running_loop()
    spool = Spool(cfg.spool.path, map_size_mb=cfg.spool.map_size_mb, sync=cfg.spool.sync)
    # The origin index costs a put per message: kept only when a listener will read it.
    origin = OriginIndex(spool, retention_s=cfg.inbound.origin_retention_days * 86400) if cfg.inbound.listen else None
    committer = GroupCommitter(spool, batch_max=cfg.http.commit_batch_max, on_commit=ManagerNotice(cfg.ipc_path),
                               origin=origin)
    app = make_app(committer, max_request_mb=cfg.http.max_request_mb)
    path, handler = make_bsmtp_route(committer)
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=30)
    await runner.setup()
    submission = (await start_submission(committer, cfg.submission, loop, hostname=cfg.ehlo_name)
                  if cfg.submission.listen else None)
    inbound = None
    if cfg.inbound.listen:
        from ..dsn.classify import Classifier
        from ..ingest.inbound import start_inbound

        classifier = Classifier.from_files(*cfg.bounce.rules, include_default=cfg.bounce.default_rules)
        inbound = await start_inbound(committer, cfg.inbound, origin=origin, classifier=classifier,
                                      hostname=cfg.ehlo_name)
    # The HTTP listener goes last: once /health answers, every listener of this process accepts.
    host, _, port = cfg.http.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    log.info("ingest_started", pid=os.getpid(), http=cfg.http.listen, submission=cfg.submission.listen or None,
             inbound=cfg.inbound.listen or None)
    await stop.wait()
    log.info("ingest_stopping", commits=committer.commits, submissions=committer.submissions)
    if submission is not None:
        await submission.close()
    if inbound is not None:
        await inbound.close()
    await runner.cleanup()  # stops accepting, lets in-flight requests finish their commit
    committer.close()
    spool.close()
    return 0


def main(cfg: Config) -> int:
    from ..obs.log import configure

    configure(cfg, role="ingest")
    import uvloop

    return uvloop.run(ingest_main(cfg))
