"""The manager killed with SIGKILL while a shared-body campaign is out loses nothing: the next
manager finds every recipient not yet applied still due (fresh ones by the address in their due
entry, the rest from their records) and sends it; the accounting log has one final line each."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from tests.support.engine import Engine
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


def _manager_pid(eng: Engine) -> int | None:
    try:
        return eng.pids()["manager"]
    except Exception:  # noqa: BLE001 - the control socket is down while the manager restarts
        return None


def test_manager_sigkill_mid_campaign_loses_no_recipient(mail, tmp_path: Path) -> None:
    n = 6000
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port) as eng:
        rcpts = [f"m{i}@{mail.domains[i % 200]}" for i in range(n)]
        eng.inject({"envelope_sender": "b@sender.test", "content": "From: b@sender.test\nSubject: same\n\nx\n",
                    "recipients": rcpts})
        wait_for(lambda: eng.status()["since_start"]["delivered"] >= 300, 60, interval_s=0.01,
                 what="some deliveries before the kill")
        victim = eng.pids()["manager"]
        os.kill(victim, signal.SIGKILL)
        assert len(eng.final_events()) < n  # the kill landed mid-campaign
        wait_for(lambda: (p := _manager_pid(eng)) is not None and p != victim, 60, interval_s=0.1,
                 what="a new manager answering on the control socket")
        finals = eng.wait_final(n, timeout_s=240)
        assert collections.Counter(e["type"] for e in finals) == {"Delivery": n}
        assert len({e["queue_id"] for e in finals}) == n
        assert set(mail.delivered_rcpts()) == set(rcpts)  # none lost (duplicates are allowed, RFC 5321 §6.1)
        status = eng.status()
        assert status["queue"]["recipients"] == 0
        assert status["since_start"]["delivered"] > 0  # the new manager delivered what was left
