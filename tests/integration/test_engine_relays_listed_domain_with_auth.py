"""Engine with [relay]: a listed domain goes to the smarthost (STARTTLS + AUTH), with no MX lookup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_relay_auth_over_tls import HOST, Relay, _server_context, _start
from tests.support.certs import make_certs
from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


@contextmanager
def relayed(tmp_path: Path, password: str, **extra: dict[str, Any]) -> Iterator[tuple[Engine, Relay]]:
    """An engine relaying relayed.test to an aiosmtpd smarthost (STARTTLS, verified, AUTH as
    ``user``/``password``); no DNS record exists for relayed.test."""
    certs = make_certs(tmp_path / "certs", [HOST])
    relay = Relay()
    controller = _start(relay, tls_context=_server_context(certs), require_starttls=True, auth_required=True)
    dns = DnsServer(mx={}, a={}, listen="127.0.0.52").start()
    try:
        sections = {"relay": {"host": HOST, "port": controller.port, "tls": "starttls", "verify": True,
                              "ca_file": certs.ca_file, "username": "user", "password": password,
                              "domains": ["relayed.test"]}, **extra}
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=controller.port,
                    workers=1, extra=sections) as eng:
            eng.inject({"envelope_sender": "a@sender.test", "content": "From: a@sender.test\n\nhi\n",
                        "recipients": ["x@relayed.test"]})
            yield eng, relay
    finally:
        controller.stop()
        dns.stop()


def test_engine_relays_listed_domain_with_auth(tmp_path: Path) -> None:
    """x@relayed.test has no DNS records at all; it is delivered through the relay after AUTH."""
    with relayed(tmp_path, "pass") as (eng, relay):
        (final,) = eng.wait_final(1)
        assert final["type"] == "Delivery", final
        log = eng.log_text()
        assert "AHVzZXIAcGFzcw" not in log and "'pass'" not in log  # credentials never logged
    assert relay.logins == [("PLAIN", "user", True)]
    assert [rcpts for _, rcpts, _ in relay.envelopes] == [["x@relayed.test"]]


def test_engine_defers_with_4_7_0_when_the_relay_refuses_auth(tmp_path: Path) -> None:
    """A 535 from the smarthost defers the recipient (451 4.7.0), never bounces it; the password stays out of the log."""
    with relayed(tmp_path, "wrong-secret", queue={"retry_intervals_s": [30.0]}) as (eng, relay):
        (deferral,) = wait_for(lambda: eng.events("TransientFailure") or None, 60, what="the deferral")
        assert deferral["recipient"] == "x@relayed.test"
        assert deferral["code"] == 451 and deferral["enhanced"] == "4.7.0", deferral
        assert "535" in deferral["response"], deferral
        assert eng.final_events() == []
        log = eng.log_text() + eng.accounting_path.read_text()
        assert "wrong-secret" not in log and "d3Jvbmctc2VjcmV0" not in log  # nor its base64
    assert relay.logins == [("PLAIN", "user", False)] and relay.envelopes == []
