"""The engine with DANE (RFC 7672) against a validating unbound and TLS receivers on loopback:
a matching TLSA record delivers authenticated, a mismatch, a missing STARTTLS or bogus DNS
data defers with nothing sent, and a host without TLSA gets opportunistic TLS as before."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mta_engine.delivery.dane import TlsaRecord
from tests.support.dane_certs import Issued, make_ca, make_leaf, tlsa, tlsa_text, write_chain
from tests.support.certs import make_certs
from tests.support.engine import Engine
from tests.support.https_server import CannedResponse, HttpsServer
from tests.support.procs import free_port
from tests.support.unbound import ValidatingResolver

pytestmark = pytest.mark.integration

DNS_IP = "127.0.0.90"
# domain -> (MX host, receiver address)
HOSTS = {
    "ee.test": ("mx.ee.test", "127.0.0.91"),  # DANE-EE 3 1 1 of its key: delivered
    "ta.test": ("mx.ta.test", "127.0.0.92"),  # DANE-TA 2 1 1 of the CA it sends: delivered
    "wrong.test": ("mx.wrong.test", "127.0.0.93"),  # TLSA for another key: deferred
    "plain.test": ("mx.plain.test", "127.0.0.94"),  # TLSA, but no STARTTLS offered: deferred
    "bogus.test": ("mx.bogus.test", "127.0.0.95"),  # TLSA changed after signing: deferred
    "none.test": ("mx.none.test", "127.0.0.96"),  # no TLSA: opportunistic TLS, delivered
    "stsdane.test": ("mx.stsdane.test", "127.0.0.97"),  # MTA-STS enforce not listing its MX, DANE-EE
}
WEB_IP = "127.0.0.98"  # https://mta-sts.stsdane.test/.well-known/mta-sts.txt
STS_POLICY = b"version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 86400\n"


@dataclass
class Inbox:
    """What one receiver accepted."""

    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 queued"

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for _, rcpts in self.envelopes for r in rcpts]


@dataclass
class World:
    engine: Engine
    inboxes: dict[str, Inbox]
    records: dict[str, TlsaRecord]
    web: HttpsServer


def _context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dane")
    port = free_port(HOSTS["ee.test"][1])
    ca = make_ca("DANE-TA test CA")
    certs: dict[str, tuple[Issued, list[Issued]]] = {
        "ee.test": (make_leaf(["unrelated.name.test"]), []),  # DANE-EE ignores names
        "ta.test": (make_leaf([HOSTS["ta.test"][0]], ca), [ca]),
        "wrong.test": (make_leaf([HOSTS["wrong.test"][0]]), []),
        "bogus.test": (make_leaf([HOSTS["bogus.test"][0]]), []),
        "none.test": (make_leaf([HOSTS["none.test"][0]]), []),
        "stsdane.test": (make_leaf(["not.the.mx.name.test"]), []),  # DANE-EE: names do not matter
    }
    records = {
        "ee.test": tlsa(certs["ee.test"][0], 3, 1, 1),
        "ta.test": tlsa(ca, 2, 1, 1),
        "wrong.test": tlsa(make_leaf(["another.key.test"]), 3, 1, 1),
        "plain.test": tlsa(make_leaf(["never.sent.test"]), 3, 1, 1),
        "bogus.test": tlsa(certs["bogus.test"][0], 3, 1, 1),
        "stsdane.test": tlsa(certs["stsdane.test"][0], 3, 1, 1),
    }
    zone = []
    for domain, (mx, ip) in HOSTS.items():
        zone += [f"{domain}. MX 10 {mx}.", f"{mx}. A {ip}"]
        if domain in records:
            zone.append(tlsa_text(f"_{port}._tcp.{mx}.", records[domain]))
    zone += ['_mta-sts.stsdane.test. TXT "v=STSv1; id=2026"', f"mta-sts.stsdane.test. A {WEB_IP}"]
    tamper = [tlsa_text(f"_{port}._tcp.{HOSTS['bogus.test'][0]}.", TlsaRecord(3, 1, 1, bytes(32)))]
    dns = ValidatingResolver(zone, tamper=tamper, listen=DNS_IP).start()
    web_certs = make_certs(tmp / "web", ["mta-sts.stsdane.test"])
    web = HttpsServer(WEB_IP, web_certs.cert_file, web_certs.key_file).start()
    web.set("mta-sts.stsdane.test", "/.well-known/mta-sts.txt", CannedResponse(STS_POLICY))
    inboxes = {d: Inbox() for d in HOSTS}
    controllers = []
    try:
        for domain, (_, ip) in HOSTS.items():
            kwargs: dict[str, Any] = {}
            if domain in certs:
                leaf, chain = certs[domain]
                kwargs["tls_context"] = _context(*write_chain(tmp / domain, leaf, chain))
            controller = Controller(inboxes[domain], hostname=ip, port=port, **kwargs)
            controller.start()
            controllers.append(controller)
        # default [dane] settings: DANE is on; MTA-STS finds a policy only for stsdane.test
        engine = Engine(tmp / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1,
                        extra={"mta_sts": {"ca_file": web_certs.ca_file, "port": web.port, "fetch_timeout_s": 5.0}})
        with engine:
            yield World(engine, inboxes, records, web)
    finally:
        for controller in controllers:
            controller.stop()
        web.stop()
        dns.stop()


def _send(world: World, rcpt: str) -> None:
    world.engine.inject({"envelope_sender": "a@sender.test", "content": f"From: a@sender.test\n\nto {rcpt}\n",
                         "recipients": [rcpt]})


def _final(world: World, rcpt: str) -> dict[str, Any]:
    from tests.support.procs import wait_for

    def found() -> dict[str, Any] | None:
        return next((e for e in world.engine.final_events() if e["recipient"] == rcpt), None)

    return wait_for(found, 60, interval_s=0.1, what=f"final outcome of {rcpt}")  # type: ignore[return-value]


def _deferred(world: World, rcpt: str) -> dict[str, Any]:
    from tests.support.procs import wait_for

    def found() -> dict[str, Any] | None:
        return next((e for e in world.engine.events("TransientFailure") if e["recipient"] == rcpt), None)

    return wait_for(found, 60, interval_s=0.1, what=f"a deferral of {rcpt}")  # type: ignore[return-value]


def test_dane_ee_match_delivers_authenticated(world: World) -> None:
    """TLSA 3 1 1 of the server key: delivered over TLS, logged as DANE with that record."""
    _send(world, "x@ee.test")
    event = _final(world, "x@ee.test")
    assert event["type"] == "Delivery", event
    assert event["tls_dane"] is True and event["tls_verified"] is True
    assert event["tls_dane_record"] == str(world.records["ee.test"])
    assert world.inboxes["ee.test"].recipients() == ["x@ee.test"]


def test_dane_ta_match_delivers_authenticated(world: World) -> None:
    """TLSA 2 1 1 of the CA the server sends, leaf named after the MX host: delivered, DANE."""
    _send(world, "x@ta.test")
    event = _final(world, "x@ta.test")
    assert event["type"] == "Delivery", event
    assert event["tls_dane"] is True and event["tls_dane_record"].startswith("2 1 1 ")
    assert world.inboxes["ta.test"].recipients() == ["x@ta.test"]


def test_dane_mismatch_defers_and_sends_nothing(world: World) -> None:
    """TLSA for another key: the session ends after the handshake, 451 4.7.5, no mail arrives."""
    _send(world, "x@wrong.test")
    event = _deferred(world, "x@wrong.test")
    assert event["code"] == 451 and event["enhanced"] == "4.7.5", event
    assert "DANE" in event["response"]
    assert world.inboxes["wrong.test"].envelopes == []


def test_dane_host_without_starttls_defers(world: World) -> None:
    """TLSA published but STARTTLS not offered: no plaintext delivery (RFC 7672 §2.2)."""
    _send(world, "x@plain.test")
    event = _deferred(world, "x@plain.test")
    assert event["code"] == 451 and event["enhanced"] == "4.7.5", event
    assert "STARTTLS" in event["response"]
    assert world.inboxes["plain.test"].envelopes == []


def test_bogus_tlsa_defers_without_connecting(world: World) -> None:
    """A TLSA record that fails validation (SERVFAIL): deferred 4.7.5, the host is not used."""
    _send(world, "x@bogus.test")
    event = _deferred(world, "x@bogus.test")
    assert event["code"] == 451 and event["enhanced"] == "4.7.5", event
    assert "TLSA" in event["response"]
    assert world.inboxes["bogus.test"].envelopes == []


def test_no_tlsa_delivers_with_opportunistic_tls(world: World) -> None:
    """No TLSA records (securely absent): delivered as before, TLS unverified, no DANE."""
    _send(world, "x@none.test")
    event = _final(world, "x@none.test")
    assert event["type"] == "Delivery", event
    assert event["tls_version"] and event["tls_verified"] is False and "tls_dane" not in event
    assert world.inboxes["none.test"].recipients() == ["x@none.test"]


def test_dane_takes_precedence_over_an_mta_sts_policy_that_omits_the_mx(world: World) -> None:
    """MTA-STS enforce lists another MX only; the real MX has usable TLSA records: DANE applies
    to it (RFC 8461 §2), so it is used, authenticated by DANE, instead of being skipped."""
    _send(world, "x@stsdane.test")
    event = _final(world, "x@stsdane.test")
    assert event["type"] == "Delivery", event
    assert event["tls_dane"] is True and event["tls_dane_record"] == str(world.records["stsdane.test"])
    assert "tls_mta_sts" not in event, event  # DANE, not the policy, decided this host
    assert world.web.count("mta-sts.stsdane.test") == 1  # the policy was fetched, and enforced elsewhere
    assert world.inboxes["stsdane.test"].recipients() == ["x@stsdane.test"]
