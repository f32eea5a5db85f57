"""Engine with [lmtp]: per-recipient replies after DATA deliver, bounce and defer each recipient alone.

The LMTP server is aiosmtpd's (tests/support/lmtp_server.py), over TCP for lmtp.test and over a
unix socket for sock.test; no DNS record exists for either. The sender's domain is routed to the
same LMTP server, so the DSN for the bounced recipient arrives there too.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.lmtp_server import LmtpHandler, LmtpServer
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.integration


def test_engine_applies_lmtp_replies_per_recipient(tmp_path: Path) -> None:
    """ok → Delivery, 550 after DATA → Bounce (+ DSN), 452 after DATA → TransientFailure, unix socket → Delivery."""
    handler = LmtpHandler(data={"sieve": "550 5.7.1 refused by sieve", "full": "452 4.2.2 mailbox full"})
    tcp = LmtpServer.tcp(handler)
    unix = LmtpServer.unix(LmtpHandler(), tmp_path / "lmtp.sock")
    dns = DnsServer(mx={}, a={}, listen="127.0.0.74").start()
    try:
        tcp.start()
        unix.start()
        routes = {"lmtp.test": tcp.endpoint, "sender.test": tcp.endpoint, "sock.test": unix.endpoint}
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=free_port(), workers=1,
                    extra={"lmtp": {"routes": routes}, "queue": {"retry_intervals_s": [30.0]}}) as eng:
            eng.inject({"envelope_sender": "a@sender.test", "content": "From: a@sender.test\nSubject: hi\n\nhi\n",
                        "recipients": ["ok@lmtp.test", "sieve@lmtp.test", "full@lmtp.test", "x@sock.test"]})
            expected = {"ok@lmtp.test", "sieve@lmtp.test", "x@sock.test"}
            wait_for(lambda: expected <= {e["recipient"] for e in eng.final_events()}, 60,
                     what="final outcomes for the delivered and the bounced recipients")
            wait_for(lambda: eng.events("TransientFailure"), 30, what="the 452 recipient's deferral")
            finals = {e["recipient"]: e for e in eng.final_events() if e["recipient"] != "a@sender.test"}
            assert {r: e["type"] for r, e in finals.items()} == {
                "ok@lmtp.test": "Delivery", "sieve@lmtp.test": "Bounce", "x@sock.test": "Delivery"}
            assert finals["sieve@lmtp.test"]["code"] == 550 and finals["sieve@lmtp.test"]["phase"] == "data"
            assert finals["ok@lmtp.test"]["site"] == f"lmtp:{tcp.endpoint}"
            assert finals["x@sock.test"]["site"] == f"lmtp:{unix.endpoint}"
            (deferred,) = eng.events("TransientFailure")
            assert deferred["recipient"] == "full@lmtp.test" and deferred["code"] == 452
            assert deferred["phase"] == "data" and not deferred.get("unknown")

            def dsn() -> list:
                return [d for d in handler.delivered if d.mail_from in ("", "<>") and d.rcpt == "a@sender.test"]

            (report,) = wait_for(dsn, 30, what="the DSN for the bounced recipient at the LMTP server")
        msg = email.message_from_bytes(report.content, policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report"
        assert "sieve@lmtp.test" in report.content.decode() and "full@lmtp.test" not in report.content.decode()
        assert sorted(d.rcpt for d in handler.delivered if d.mail_from == "a@sender.test") == ["ok@lmtp.test"]
        assert [d.rcpt for d in unix.handler.delivered] == ["x@sock.test"]
        assert set(handler.hellos) == {"LHLO mta.test"}
    finally:
        unix.stop()
        tcp.stop()
        dns.stop()


def test_engine_defers_when_the_lmtp_server_is_down_and_delivers_once_it_is_up(tmp_path: Path) -> None:
    """Nothing listens on the LMTP socket: 451 4.4.1, kept queued; the server comes up: delivered once."""
    handler = LmtpHandler()
    sock = tmp_path / "down.sock"
    dns = DnsServer(mx={}, a={}, listen="127.0.0.74").start()
    server = LmtpServer.unix(handler, sock)
    try:
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=free_port(), workers=1,
                    extra={"lmtp": {"routes": {"store.test": f"unix:{sock}"}},
                           "queue": {"retry_intervals_s": [0.5]}}) as eng:
            eng.inject({"envelope_sender": "a@sender.test", "dsn": False, "content": "From: a@sender.test\n\nhi\n",
                        "recipients": ["u@store.test"]})
            (deferral, *_) = wait_for(lambda: eng.events("TransientFailure") or None, 60, what="a deferral")
            assert (deferral["code"], deferral["enhanced"], deferral["phase"]) == (451, "4.4.1", "connect"), deferral
            assert eng.final_events() == []
            server.start()
            (final,) = eng.wait_final(1)
            assert final["type"] == "Delivery" and final["recipient"] == "u@store.test", final
        assert [d.rcpt for d in handler.delivered] == ["u@store.test"]
    finally:
        server.stop()
        dns.stop()
