"""The running engine takes mail over SMTP submission and from a BSMTP file, and delivers it."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Mail
from tests.support.engine import Engine

pytestmark = pytest.mark.integration


def test_submitted_and_bsmtp_messages_are_delivered(mail: Mail, tmp_path: Path) -> None:
    """smtplib to the submission port and `mta-engine inject --bsmtp FILE`: each recipient arrives once."""
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                workers=1) as eng:
        with smtplib.SMTP("127.0.0.1", eng.submission_port, timeout=30) as s:
            code, caps = s.ehlo("client.test")
            assert code == 250 and b"SIZE" in caps and b"PIPELINING" in caps
            refused = s.sendmail("a@sender.test", ["sub1@d000.test", "sub2@d001.test"],
                                 b"From: a@sender.test\r\nSubject: via smtp\r\n\r\nhello\r\n")
            assert refused == {}
        bsmtp = tmp_path / "batch.bsmtp"
        bsmtp.write_text("MAIL FROM:<a@sender.test>\nRCPT TO:<b1@d000.test>\nRCPT TO:<b2@d001.test>\nDATA\n"
                         "From: a@sender.test\nSubject: batch\n\n..dot line\n.\n")
        res = subprocess.run([sys.executable, "-m", "mta_engine.cli", "inject", "--config", str(eng.config_path),
                              "--bsmtp", str(bsmtp)], capture_output=True, text=True, timeout=60, cwd=eng.dir)
        assert res.returncode == 0, res.stderr
        finals = {e["recipient"]: e["type"] for e in eng.wait_final(4)}
        assert finals == {r: "Delivery" for r in ("sub1@d000.test", "sub2@d001.test", "b1@d000.test",
                                                  "b2@d001.test")}
    got = sorted(mail.delivered_rcpts())
    assert got == sorted(["sub1@d000.test", "sub2@d001.test", "b1@d000.test", "b2@d001.test"])
    bodies = [m["data"] for r in mail.receivers for m in r.messages()]
    assert any(b"\r\n.dot line\r\n" in b for b in bodies)  # BSMTP dot-unstuffed, then stuffed again on the wire
