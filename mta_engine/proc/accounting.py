"""Accounting process: writes the accounting log from the spool outbox, so the manager does not.

Contract: reads the outbox (read-only spool, like a worker) in ``event_seq`` order and appends one
JSON line per event to ``[log] accounting`` through ``obs.accounting.AccountingLog``, which skips
what the file already holds: exactly once across crashes and restarts. Writes nothing to the spool;
the manager learns how far the file got from the file itself (``obs.rotation.last_written_seq``)
and trims the outbox behind it. Polls every ``POLL_S`` while idle. On SIGTERM it writes what the
outbox still holds (the supervisor stops it after the manager) and exits. Started by the
supervisor whenever the log is a file; with ``accounting = "-"`` the manager writes to stderr itself.

Why a process: formatting the lines (orjson, ~4-7 us an event) was 20% of the manager's loop on
W2, and the manager is the serial stage (bench/results/OPTIMIZATIONS.md).
"""

from __future__ import annotations

import asyncio
import os
import signal

import structlog

from ..config import Config
from ..obs.accounting import AccountingLog
from ..spool.records import event_count
from ..spool.store import Spool
from .readonly import open_spool_readonly

log = structlog.get_logger("accounting")

POLL_S = 0.01
"""Idle poll of the outbox: a read transaction and one cursor seek, about 10 us."""
BATCH_EVENTS = 20_000
"""Events per write at most: bounds memory when catching up on a long backlog."""


def catch_up(spool: Spool, acct: AccountingLog) -> int:
    """Write every committed event the log does not hold yet; returns how many were read (a
    grouped event counts once per recipient). Groups are read as stored: ``AccountingLog`` writes
    their lines without expanding them into dicts."""
    total = 0
    while True:
        with spool.read() as txn:
            events = spool.events_after(txn, acct.written_seq, limit=BATCH_EVENTS, expand=False)
        if not events:
            return total
        acct.write(events)
        total += sum(map(event_count, events))


async def accounting_main(cfg: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides; ^C reaches it
    spool = await open_spool_readonly(cfg)
    lc = cfg.log
    acct = AccountingLog(lc.accounting, max_bytes=lc.accounting_max_bytes, max_age_s=lc.accounting_max_age_s,
                         keep=lc.accounting_keep)
    log.info("accounting_started", pid=os.getpid(), path=lc.accounting, written_seq=acct.written_seq)
    try:
        while not stop.is_set():
            if not catch_up(spool, acct):
                try:
                    await asyncio.wait_for(stop.wait(), POLL_S)
                except asyncio.TimeoutError:
                    pass
        catch_up(spool, acct)  # the manager has stopped: the outbox holds its last events
    finally:
        acct.close()
        spool.close()
    log.info("accounting_stopped", written_seq=acct.written_seq)
    return 0


def main(cfg: Config) -> int:
    from ..obs.log import configure

    configure(cfg, role="accounting")
    import uvloop

    return uvloop.run(accounting_main(cfg))
