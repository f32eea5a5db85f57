"""Ingest process main: the HTTP inject API in front of the group committer."""

from __future__ import annotations

import asyncio
import os
import signal

import structlog
from aiohttp import web

from ..config import Config
from ..ingest.commit import GroupCommitter
from ..ingest.http import make_app
from ..spool.store import Spool

log = structlog.get_logger("ingest")


async def ingest_main(cfg: Config) -> int:
    loop = asyncio.get_running_loop()
    spool = Spool(cfg.spool.path, map_size_mb=cfg.spool.map_size_mb)
    committer = GroupCommitter(spool, batch_max=cfg.http.commit_batch_max)
    app = make_app(committer, max_request_mb=cfg.http.max_request_mb)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=30)
    await runner.setup()
    host, _, port = cfg.http.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    log.info("ingest_started", pid=os.getpid(), http=cfg.http.listen)
    await stop.wait()
    log.info("ingest_stopping", commits=committer.commits, submissions=committer.submissions)
    await runner.cleanup()  # stops accepting, lets in-flight requests finish their commit
    committer.close()
    spool.close()
    return 0


def main(cfg: Config) -> int:
    from ..obs.log import configure

    configure(cfg, role="ingest")
    import uvloop

    return uvloop.run(ingest_main(cfg))
