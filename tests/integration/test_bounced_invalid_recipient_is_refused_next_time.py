"""A 550 5.1.1 suppresses the address; the next submission to it is refused per recipient; ctl manages the list."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mta_engine.control.protocol import request
from tests.support.engine import Engine
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


def test_bounce_suppresses_then_refused(mail_with_rules, tmp_path: Path) -> None:
    """B04 end to end: a bounce lists the address for its tenant only, ctl removes it, then it is accepted again."""
    mail = mail_with_rules
    d0, d1 = mail.domains[0], mail.domains[1]
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port) as eng:
        ans = eng.inject({"envelope_sender": "b@sender.test", "dsn": False, "tenant": "acme",
                          "content": "From: b@sender.test\n\nx\n", "recipients": [f"ok@{d0}", f"bounce1@{d1}"]})
        assert ans["success_count"] == 2
        eng.wait_final(2)
        wait_for(lambda: eng.events("Suppressed") or None, 30, what="Suppressed event")
        (sup,) = eng.events("Suppressed")
        assert sup["recipient"] == f"bounce1@{d1}" and sup["tenant"] == "acme"
        assert sup["reason"].startswith("invalid_recipient: 550 5.1.1")
        ans = eng.inject({"envelope_sender": "b@sender.test", "dsn": False, "tenant": "acme",
                          "content": "From: b@sender.test\n\nx\n", "recipients": [f"ok2@{d0}", f"BOUNCE1@{d1}"]})
        assert ans["success_count"] == 1 and ans["failed_recipients"] == [f"BOUNCE1@{d1}"], ans
        assert "suppression list" in ans["errors"][0], ans
        ans = eng.inject({"envelope_sender": "b@sender.test", "dsn": False, "tenant": "acme",
                          "content": "From: b@sender.test\n\nx\n", "recipients": [f"bounce1@{d1}"]})
        assert ans["success_count"] == 0 and ans["queue_ids"] == [], ans
        # other tenant: not suppressed
        ans = eng.inject({"envelope_sender": "b@sender.test", "dsn": False, "tenant": "globex",
                          "content": "From: b@sender.test\n\nx\n", "recipients": [f"bounce1@{d1}"]})
        assert ans["success_count"] == 1
        lst = request(eng.control_path, {"cmd": "suppress_list", "tenant": "acme"})
        assert lst["ok"] and [e["address"] for e in lst["entries"]] == [f"bounce1@{d1}"]
        res = subprocess.run([sys.executable, "-m", "mta_engine.cli", "ctl", "--config", str(eng.config_path),
                              "suppress", "remove", f"bounce1@{d1}", "--tenant", "acme"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "removed" in res.stdout, res
        ans = eng.inject({"envelope_sender": "b@sender.test", "dsn": False, "tenant": "acme",
                          "content": "From: b@sender.test\n\nx\n", "recipients": [f"bounce1@{d1}"]})
        assert ans["success_count"] == 1
        wait_for(lambda: eng.events("Unsuppressed") or None, 30, what="Unsuppressed event")
