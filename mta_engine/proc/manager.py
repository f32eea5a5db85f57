"""Manager process main: spool (read-write), scheduler loop, IPC server, control socket."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Callable

import structlog

from ..config import Config
from ..control.server import Handler, serve as serve_control
from ..obs.accounting import AccountingLog
from ..routing.resolver import Resolver
from ..sched.manager import Manager
from ..spool import suppress
from ..spool.store import Spool
from .ipc import FrameProtocol

log = structlog.get_logger("manager")


async def manager_main(cfg: Config) -> int:
    loop = asyncio.get_running_loop()
    spool = Spool(cfg.spool.path, map_size_mb=cfg.spool.map_size_mb, sync=cfg.spool.sync)
    resolver = Resolver(cfg.dns.nameservers or None, port=cfg.dns.port, timeout_s=cfg.dns.timeout_s)
    # A file log is written by the accounting process (proc/accounting.py, started by the
    # supervisor); only stderr ("-") is written here.
    acct = None if cfg.log.separate_accounting else AccountingLog(
        cfg.log.accounting, max_bytes=cfg.log.accounting_max_bytes, max_age_s=cfg.log.accounting_max_age_s,
        keep=cfg.log.accounting_keep)
    rate_store = None
    if cfg.redis.url:  # fleet-wide limits ([redis], [[sched.site]] shared = true)
        from ..sched.shared_limits import RedisRateStore

        rate_store = RedisRateStore(cfg.redis.url, key_prefix=cfg.redis.key_prefix, timeout_s=cfg.redis.timeout_s)
    mgr = Manager(cfg, spool, resolver, acct, rate_store=rate_store)
    mgr.recover()
    supervisor_pid = int(os.environ.get("MTA_SUPERVISOR_PID", "0"))

    async def status(req: dict[str, Any]) -> dict[str, Any]:
        return {"status": mgr.status()}

    def selector(req: dict[str, Any]) -> tuple[str, str]:
        picked = [(k, req[k]) for k in mgr.SELECTORS if isinstance(req.get(k), str)]
        if len(picked) != 1:
            raise ValueError("name exactly one of site, domain, campaign, tenant")
        return picked[0]

    async def suspend(req: dict[str, Any]) -> dict[str, Any]:
        return {"message": mgr.suspend(*selector(req))}

    async def resume(req: dict[str, Any]) -> dict[str, Any]:
        return {"message": mgr.resume(*selector(req))}

    async def shutdown(req: dict[str, Any]) -> dict[str, Any]:
        if supervisor_pid:
            os.kill(supervisor_pid, signal.SIGTERM)
        else:
            mgr.drain()
        return {"message": "shutdown started: draining in-flight deliveries"}

    ipc_path = cfg.ipc_path
    if os.path.exists(ipc_path):
        os.unlink(ipc_path)
    old = os.umask(0o177)
    try:
        ipc = await loop.create_unix_server(lambda: FrameProtocol(mgr.on_frame, mgr.on_lost), ipc_path)
    finally:
        os.umask(old)
    def on_spool_thread(handle: Callable[[Spool, dict[str, Any]], dict[str, Any]]) -> Handler:
        """A spool handler run on the manager's spool-writer thread, between ticks (never on the loop)."""
        async def handler(req: dict[str, Any]) -> dict[str, Any]:
            return await loop.run_in_executor(mgr.spool_executor, handle, spool, req)
        return handler

    control = await serve_control(cfg.control.socket, {
        "status": status, "shutdown": shutdown, "suspend": suspend, "resume": resume,
        "suppress_add": on_spool_thread(suppress.handle_suppress_add),
        "suppress_remove": on_spool_thread(suppress.handle_suppress_remove),
        "suppress_list": on_spool_thread(suppress.handle_suppress_list),
        "suppress_import": on_spool_thread(suppress.handle_suppress_import),
        "suppress_export": on_spool_thread(suppress.handle_suppress_export)})
    loop.add_signal_handler(signal.SIGTERM, mgr.drain)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    log.info("manager_started", pid=os.getpid(), spool=cfg.spool.path, control=cfg.control.socket,
             workers=cfg.worker_count)
    await mgr.run()
    totals = mgr.status()["since_start"]
    ipc.close()
    control.close()
    acct.close()
    spool.close()
    for path in (ipc_path, cfg.control.socket):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    log.info("manager_stopped", **totals)
    return 0


def main(cfg: Config) -> int:
    from ..obs.log import configure

    configure(cfg, role="manager")
    import uvloop

    return uvloop.run(manager_main(cfg))
