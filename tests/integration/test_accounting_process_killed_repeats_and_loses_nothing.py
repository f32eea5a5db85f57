"""The accounting log is written by its own process (proc/accounting.py). SIGKILL it while outcomes
pour in: the supervisor restarts it, it finds its place in the file, and the log ends up with every
event exactly once, in order, and the outbox trimmed behind it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.engine import Engine, child_pid
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


def test_accounting_process_killed_repeats_and_loses_nothing(mail_with_rules, tmp_path: Path) -> None:
    mail = mail_with_rules
    total = 400
    rcpts = [f"{'bounce' if i % 5 == 0 else 'ok'}{i}@{mail.domains[i % 2]}" for i in range(total)]
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port) as eng:
        assert eng.proc is not None and eng.proc.pid is not None
        first = wait_for(lambda: child_pid(eng.proc.pid, "accounting"), 30, what="the accounting child")  # type: ignore[union-attr]
        for k in range(0, total, 100):
            ans = eng.inject({"envelope_sender": "a@sender.test", "dsn": False, "content": "From: a@sender.test\n\nx\n",
                              "recipients": rcpts[k:k + 100]})
            assert ans["success_count"] == 100, ans
            if k == 100:
                wait_for(lambda: len(eng.final_events()) >= 50 or None, 60, what="some outcomes logged")
                os.kill(first, signal.SIGKILL)
        wait_for(lambda: (p := child_pid(eng.proc.pid, "accounting")) and p != first and p or None,  # type: ignore[union-attr]
                 60, what="the accounting child restarted")
        finals = eng.wait_final(total)
        assert len(finals) == total
        assert eng.status()["queue"]["recipients"] == 0
    events = eng.events()  # the engine has stopped: the accounting process wrote everything
    seqs = [e["event_seq"] for e in events]
    assert seqs == sorted(set(seqs)), "each event once, in order"
    assert seqs == list(range(1, len(seqs) + 1)), "no event missing"
    assert sorted(e["recipient"] for e in events if e["type"] in ("Delivery", "Bounce")) == sorted(rcpts)
