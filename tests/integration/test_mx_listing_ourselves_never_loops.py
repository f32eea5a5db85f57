"""STANDARDS M05 (RFC 5321 §5.1) against a real dnsmasq: when our own name (the EHLO name) is an MX
of the destination, only MX hosts with a lower preference are tried; when we are its best MX the
recipient bounces with 5.4.6 instead of the mail looping back to us."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port, wait_for
from tests.support.sinks import RecordingReceiver

pytestmark = pytest.mark.integration


def test_mx_listing_ourselves_never_loops(tmp_path: Path) -> None:
    port = free_port("127.0.0.44")
    mx = {"backup.test": [(10, "primary.backup.test"), (20, "mta.test"), (20, "peer.backup.test")],
          "loop.test": [(10, "mta.test"), (20, "other.loop.test")]}
    # mta.test is this engine (Engine's ehlo_name). The primary of backup.test is down; mta.test and
    # peer.backup.test (preference 20, like us) point at the receiver, so mail sent there would
    # arrive and show the loop
    a = {"primary.backup.test": "127.0.0.46", "mta.test": "127.0.0.44", "peer.backup.test": "127.0.0.44",
         "other.loop.test": "127.0.0.44"}
    dns = DnsServer(mx=mx, a=a, listen="127.0.0.45").start()
    rcv = RecordingReceiver("127.0.0.44", port, tmp_path / "rcv").start()
    try:
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1) as eng:
            eng.inject({"envelope_sender": "a@sender.test", "dsn": False, "content": "From: a@sender.test\n\nhi\n",
                        "recipients": ["x@backup.test", "y@loop.test"]})
            (y,) = eng.wait_final(1)
            (x, *_) = wait_for(lambda: eng.events("TransientFailure") or None, 60, what="x deferred")
        # only the preference-10 host may be tried for backup.test, and it is down: deferred, not
        # sent to the preference-20 peer
        assert x["recipient"] == "x@backup.test" and x["phase"] == "connect" and "primary.backup.test" in x["response"]
        assert (y["type"], y["code"], y["enhanced"]) == ("Bounce", 554, "5.4.6"), y
        assert "loops back to myself" in y["response"]
        assert rcv.messages() == []
    finally:
        rcv.stop()
        dns.stop()
