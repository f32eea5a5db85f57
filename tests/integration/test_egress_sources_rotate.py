"""Egress pool: new connections bind to the configured source addresses in turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port
from tests.support.sinks import RecordingReceiver

pytestmark = pytest.mark.integration


def test_connections_use_each_source_address_in_turn(tmp_path: Path) -> None:
    """Four sites, two sources: sessions come from both 127.0.0.81 and 127.0.0.82, none from elsewhere."""
    port = free_port("127.0.0.85")
    domains = [f"s{i}.test" for i in range(4)]
    dns = DnsServer(mx={d: [(10, f"mx.{d}")] for d in domains}, a={f"mx.{d}": "127.0.0.85" for d in domains},
                    listen="127.0.0.86").start()
    rcv = RecordingReceiver("127.0.0.85", port, tmp_path / "rcv").start()
    try:
        sources = [{"ip": "127.0.0.81", "ehlo_name": "mta1.test"}, {"ip": "127.0.0.82", "ehlo_name": "mta2.test"}]
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1,
                    extra={"delivery": {"sources": sources}}) as eng:
            eng.inject({"envelope_sender": "a@sender.test", "dsn": False, "content": "From: a@sender.test\n\nx\n",
                        "recipients": [f"r@{d}" for d in domains]})
            finals = eng.wait_final(4)
            assert {e["type"] for e in finals} == {"Delivery"}
        peers = {m["peer"][0] if isinstance(m["peer"], list) else str(m["peer"]).split(":")[0]
                 for m in rcv.messages()}
        assert peers == {"127.0.0.81", "127.0.0.82"}
    finally:
        rcv.stop()
        dns.stop()
