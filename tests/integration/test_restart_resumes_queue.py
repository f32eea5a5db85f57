"""Startup with an existing spool resumes the queue; shutdown drains and loses nothing."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from mta_engine.control.protocol import request
from tests.support.engine import Engine
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


def test_restart_with_existing_spool_resumes_delivery(mail, tmp_path: Path) -> None:
    """Recipients deferred while receivers were down are delivered after an engine restart."""
    for s in mail.sinks:
        s.stop()
    for r in mail.receivers:
        r.stop()
    eng = Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                 extra={"queue": {"retry_intervals_s": [0.5]}})
    rcpts = [f"r{i}@{mail.domains[i % 8]}" for i in range(80)]
    with eng:
        eng.inject({"envelope_sender": "b@sender.test", "content": "From: b@sender.test\n\nx\n", "recipients": rcpts})
        wait_for(lambda: len(eng.events("TransientFailure")) >= 80, 60, what="every recipient deferred once")
        assert eng.final_events() == []
    assert eng.proc is not None and eng.proc.returncode == 0
    for s in mail.sinks:
        s.start()
    for r in mail.receivers:
        r.start()
    with eng:  # same directory, same spool
        finals = eng.wait_final(80)
        assert {e["recipient"] for e in finals if e["type"] == "Delivery"} == set(rcpts)
    assert collections.Counter(mail.delivered_rcpts()) == collections.Counter(rcpts)


def test_ctl_shutdown_drains_then_restart_finishes(mail, tmp_path: Path) -> None:
    """`ctl shutdown` stops the engine cleanly mid-run; after a restart every recipient is delivered once."""
    n = 3000
    eng = Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port)
    rcpts = [{"email": f"s{i}@{mail.domains[i % 200]}", "substitutions": {"n": str(i)}} for i in range(n)]
    with eng:
        eng.inject({"envelope_sender": "b@sender.test", "content": "From: b@sender.test\nSubject: {{ n }}\n\nx\n",
                    "recipients": rcpts})
        resp = request(eng.control_path, {"cmd": "shutdown"})
        assert resp["ok"]
        assert eng.proc is not None
        wait_for(lambda: not eng.proc.running, 120, what="engine exit after ctl shutdown")  # type: ignore[union-attr]
        assert eng.proc.returncode == 0
    with eng:
        finals = eng.wait_final(n, timeout_s=240)
        assert collections.Counter(e["type"] for e in finals) == {"Delivery": n}
        assert len({e["queue_id"] for e in finals}) == n
    got = collections.Counter(mail.delivered_rcpts())
    assert set(got) == {r["email"] for r in rcpts}
    assert max(got.values()) == 1  # a drain finishes or returns in-flight work: no duplicates
