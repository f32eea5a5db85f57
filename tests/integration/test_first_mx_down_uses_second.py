"""MX routing against a real dnsmasq: preference order, next MX when the first refuses connections."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port
from tests.support.sinks import RecordingReceiver

pytestmark = pytest.mark.integration


def test_first_mx_down_uses_second(tmp_path: Path) -> None:
    """The preferred MX refuses connections; the message goes to the next MX, once."""
    port = free_port("127.0.0.41")
    mx = {"two.test": [(10, "down.two.test"), (20, "up.two.test")],
          "implicit.test": []}
    a = {"down.two.test": "127.0.0.40", "up.two.test": "127.0.0.41", "implicit.test": "127.0.0.41"}
    dns = DnsServer(mx={k: v for k, v in mx.items() if v}, a=a, listen="127.0.0.42").start()
    rcv = RecordingReceiver("127.0.0.41", port, tmp_path / "rcv").start()
    try:
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1) as eng:
            eng.inject({"envelope_sender": "a@sender.test", "content": "From: a@sender.test\n\nhi\n",
                        "recipients": ["x@two.test", "y@implicit.test"]})
            finals = {e["recipient"]: e for e in eng.wait_final(2)}
            assert finals["x@two.test"]["type"] == "Delivery"
            assert finals["x@two.test"]["mx"] == "up.two.test" and finals["x@two.test"]["ip"] == "127.0.0.41"
            # no MX record: the domain's own A record is the implicit MX (RFC 5321 §5.1)
            assert finals["y@implicit.test"]["type"] == "Delivery"
            assert finals["y@implicit.test"]["mx"] == "implicit.test"
        assert sorted(r for m in rcv.messages() for r in m["rcpt_tos"]) == ["x@two.test", "y@implicit.test"]
    finally:
        rcv.stop()
        dns.stop()
