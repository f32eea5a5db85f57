"""The engine end to end against servers with and without 8BITMIME, CHUNKING and STARTTLS."""

from __future__ import annotations

import email
import email.policy
import json
import sys
from pathlib import Path

import pytest

from tests.support.certs import make_certs
from tests.support.dnsmasq import DnsServer
from tests.support.engine import REPO, Engine
from tests.support.procs import ManagedProcess, free_port, wait_for, wait_port

pytestmark = pytest.mark.integration

TEXT = "Grüße aus Köln — schön, dass Sie da sind.\n"


def fault_server(tmp: Path, name: str, ip: str, port: int, script: dict) -> tuple[ManagedProcess, Path]:
    record = tmp / f"{name}.jsonl"
    proc = ManagedProcess([sys.executable, "-m", "tests.support.faultserver", "--host", ip, "--port", str(port),
                           "--script", json.dumps(script), "--record", str(record)], tmp / f"{name}.log",
                          name=name, cwd=str(REPO))
    proc.start()
    wait_port(ip, port, 15, proc=proc)
    return proc, record


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_8bit_is_converted_for_7bit_servers_and_bdat_and_tls_used_when_offered(tmp_path: Path) -> None:
    """8-bit text goes as is (BODY=8BITMIME, BDAT, STARTTLS) where offered, as quoted-printable where not."""
    port = free_port("127.0.0.51")
    certs = make_certs(tmp_path / "certs", ["mx.modern.test"])
    modern, modern_rec = fault_server(tmp_path, "modern", "127.0.0.51", port, {
        "extensions": ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 1000000"], "chunking": True,
        "certfile": certs.cert_file, "keyfile": certs.key_file})
    old, old_rec = fault_server(tmp_path, "old", "127.0.0.52", port, {"extensions": ["PIPELINING"]})
    dns = DnsServer(mx={"modern.test": [(10, "mx.modern.test")], "old.test": [(10, "mx.old.test")]},
                    a={"mx.modern.test": "127.0.0.51", "mx.old.test": "127.0.0.52"}, listen="127.0.0.53").start()
    try:
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1) as eng:
            eng.inject({"envelope_sender": "a@sender.test", "dsn": False,
                        "content": {"subject": "Grüße", "from": {"email": "a@sender.test"}, "text_body": TEXT},
                        "recipients": ["x@modern.test", "y@old.test"]})
            finals = {e["recipient"]: e for e in eng.wait_final(2)}
            assert {e["type"] for e in finals.values()} == {"Delivery"}
            assert finals["x@modern.test"]["tls_version"].startswith("TLSv1.")
            assert finals["x@modern.test"]["tls_cipher"] and finals["x@modern.test"]["tls_verified"] is False
            assert "tls_version" not in finals["y@old.test"]
        wait_for(lambda: records(modern_rec) and records(old_rec), 10, what="both servers recorded a message")
        (m,) = records(modern_rec)
        assert m["via"] == "BDAT"  # MAIL parameters (BODY=8BITMIME, SIZE=) are checked in the session tests
        body = m["body"].encode("utf-8", "surrogateescape")
        assert b"Content-Transfer-Encoding: 8bit" in body and TEXT.strip().encode() in body
        (o,) = records(old_rec)
        assert o["via"] == "DATA"
        raw = o["body"].encode("utf-8", "surrogateescape")
        assert raw.isascii()  # never raw 8-bit to a 7-bit server (RFC 6152)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
        assert msg.get_content().strip() == TEXT.strip() and msg["Subject"] == "Grüße"
    finally:
        dns.stop()
        modern.stop()
        old.stop()
