"""Supervisor (`mta-engine serve`): starts ingest, the manager and N workers; restarts; drains.

Contract: the composition root of the engine's processes. Decides nothing about mail. A child
that exits unexpectedly is restarted with backoff (0.25 s doubling to 10 s; reset after a child
has run for 30 s). SIGTERM/SIGINT (or `mta-engine ctl shutdown`) drain in order: ingest stops
accepting and finishes its commits, then the manager drains the workers (they finish or return
in-flight jobs) and exits, then the remaining workers exit. Nothing accepted is lost. Children get
SIGTERM if the supervisor itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import structlog

from ..config import Config

log = structlog.get_logger("supervisor")

PR_SET_PDEATHSIG = 1
RESTART_MIN_S, RESTART_MAX_S, STABLE_S = 0.25, 10.0, 30.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Child:
    role: str
    args: list[str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff_s: float = RESTART_MIN_S
    restarts: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, cfg: Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.stopping = False
        base = [sys.executable, "-m", "mta_engine.cli", "_child"]
        cfg_args = ["--config", config_path] if config_path else []
        self.children = [Child("manager", base + ["manager"] + cfg_args),
                         Child("ingest", base + ["ingest"] + cfg_args)]
        for shard in range(cfg.worker_count):
            self.children.append(Child(f"worker-{shard}", base + ["worker", "--shard", str(shard)] + cfg_args))
        if cfg.webhooks.endpoint:
            self.children.append(Child("webhooks", base + ["webhooks"] + cfg_args))
        if cfg.log.separate_accounting:
            self.children.append(Child("accounting", base + ["accounting"] + cfg_args))

    async def spawn(self, child: Child) -> None:
        env = dict(os.environ, MTA_SUPERVISOR_PID=str(os.getpid()))
        child.proc = await asyncio.create_subprocess_exec(*child.args, env=env, preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()
        child.exited.clear()
        log.info("child_started", child=child.role, pid=child.proc.pid)

    async def watch(self, child: Child) -> None:
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            child.exited.set()
            if self.stopping:
                log.info("child_exited", child=child.role, code=code)
                return
            ran = time.monotonic() - child.started_at
            if ran > STABLE_S:
                child.backoff_s = RESTART_MIN_S
            log.warning("child_died", child=child.role, code=code, ran_s=round(ran, 1),
                        restart_in_s=child.backoff_s)
            await asyncio.sleep(child.backoff_s)
            child.backoff_s = min(child.backoff_s * 2, RESTART_MAX_S)
            if self.stopping:
                return
            child.restarts += 1
            await self.spawn(child)

    async def _stop(self, children: list[Child], timeout_s: float) -> None:
        for c in children:
            if c.proc is not None and c.proc.returncode is None:
                c.proc.send_signal(signal.SIGTERM)
        waits = [c.exited.wait() for c in children if c.proc is not None and c.proc.returncode is None]
        if waits:
            done, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=timeout_s)
            for p in pending:
                p.cancel()
        for c in children:
            if c.proc is not None and c.proc.returncode is None:
                log.warning("child_killed", child=c.role, pid=c.proc.pid, after_s=timeout_s)
                c.proc.kill()
                await c.proc.wait()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        for child in self.children:
            await self.spawn(child)
        watchers = [loop.create_task(self.watch(c)) for c in self.children]
        log.info("engine_started", pid=os.getpid(), http=self.cfg.http.listen, control=self.cfg.control.socket,
                 spool=self.cfg.spool.path, workers=self.cfg.worker_count, config=self.cfg.source)
        await stop.wait()
        self.stopping = True
        log.info("engine_draining")
        by_role = {c.role: c for c in self.children}
        await self._stop([by_role["ingest"]], 60)
        await self._stop([by_role["manager"]], max(60.0, self.cfg.delivery.final_timeout_s + 30))
        await self._stop([c for c in self.children if c.role.startswith("worker")], 30)
        # last: they write and send the final events the manager committed
        await self._stop([c for c in self.children if c.role in ("webhooks", "accounting")], 30)
        for w in watchers:
            w.cancel()
        log.info("engine_stopped")
        return 0


def main(cfg: Config, config_path: str | None) -> int:
    from ..obs.log import configure

    configure(cfg, role="supervisor")
    for path in (cfg.spool.path, os.path.dirname(cfg.control.socket) or "."):
        os.makedirs(path, exist_ok=True)
    import uvloop

    return uvloop.run(Supervisor(cfg, config_path).run())
