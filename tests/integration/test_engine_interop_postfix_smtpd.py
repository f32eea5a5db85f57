"""The engine against a real Postfix smtpd: STARTTLS, CHUNKING, a 50-recipient limit, a size limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.certs import make_certs
from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.postfix import PostfixInstance
from tests.support.procs import free_port, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance needs root"),
    pytest.mark.skipif(not Path("/usr/sbin/postfix").exists(), reason="postfix not installed"),
]


def test_engine_delivers_to_postfix_smtpd_with_tls_bdat_and_limits(tmp_path: Path) -> None:
    """120 recipients of one shared body arrive once each over TLS despite smtpd_recipient_limit=50;
    a message over message_size_limit bounces 552 5.3.4 without a transaction."""
    port = free_port("127.0.0.1")
    certs = make_certs(tmp_path / "certs", ["mx.pf.test"])
    pf = PostfixInstance("receiver", "127.0.0.1", port, smtpd_recipient_limit=50, message_size_limit=200_000,
                         tls=(certs.cert_file, certs.key_file), hostname="mx.pf.test")
    pf.start()
    dns = DnsServer(mx={"pf.test": [(10, "mx.pf.test")]}, a={"mx.pf.test": "127.0.0.1"},
                    listen="127.0.0.61").start()
    try:
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1) as eng:
            rcpts = [f"u{i}@pf.test" for i in range(120)]
            eng.inject({"envelope_sender": "a@sender.test", "dsn": False,
                        "content": "From: a@sender.test\nSubject: interop\n\n.leading dot\nbody\n",
                        "recipients": rcpts})
            big = "From: a@sender.test\nSubject: big\n\n" + ("x" * 900 + "\n") * 300
            eng.inject({"envelope_sender": "a@sender.test", "dsn": False, "content": big,
                        "recipients": ["big@pf.test"]})
            finals = {e["recipient"]: e for e in eng.wait_final(121, timeout_s=90)}
            assert all(finals[r]["type"] == "Delivery" for r in rcpts)
            assert {finals[r]["tls_version"][:5] for r in rcpts} == {"TLSv1"}
            assert finals["big@pf.test"]["type"] == "Bounce"
            assert (finals["big@pf.test"]["code"], finals["big@pf.test"]["enhanced"]) == (552, "5.3.4")
        wait_for(lambda: sum(len(m["rcpts"]) for m in pf.messages()) >= 120, 30, what="120 recipients at smtpd")
        msgs = pf.messages()
        assert sorted(r for m in msgs for r in m["rcpts"]) == sorted(rcpts)  # each exactly once
        assert max(len(m["rcpts"]) for m in msgs) <= 50
        assert all(m["data"].endswith(b"\r\n.leading dot\r\nbody\r\n") for m in msgs)
        assert all(b"ESMTPS" in m["received_header"] for m in msgs)  # Postfix's mark of a TLS session
    finally:
        dns.stop()
        pf.cleanup()
