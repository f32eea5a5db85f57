"""A worker killed with SIGKILL mid-run loses nothing: its leased recipients are delivered later."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from tests.support.engine import Engine
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


def test_worker_sigkill_mid_run_loses_no_recipient(mail, tmp_path: Path) -> None:
    """SIGKILL a worker while it delivers: every recipient still arrives; one final line each."""
    n = 6000
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port) as eng:
        rcpts = [{"email": f"k{i}@{mail.domains[i % 200]}", "substitutions": {"n": str(i)}} for i in range(n)]
        eng.inject({"envelope_sender": "b@sender.test", "content": "From: b@sender.test\nSubject: {{ n }}\n\nx\n",
                    "recipients": rcpts})
        wait_for(lambda: eng.status()["since_start"]["delivered"] >= 300, 60, interval_s=0.01,
                 what="some deliveries before the kill")
        victim = eng.pids()["worker-0"]
        os.kill(victim, signal.SIGKILL)
        # the supervisor restarts it; the manager re-queues what it had leased
        wait_for(lambda: (p := eng.pids().get("worker-0")) is not None and p != victim, 30,
                 what="worker-0 restarted")
        finals = eng.wait_final(n, timeout_s=240)
        assert collections.Counter(e["type"] for e in finals) == {"Delivery": n}
        assert len({e["queue_id"] for e in finals}) == n
        got = collections.Counter(mail.delivered_rcpts())
        assert set(got) == {r["email"] for r in rcpts}  # none lost (duplicates are allowed, RFC 5321 §6.1)
        assert eng.status()["queue"]["recipients"] == 0
