"""DANE TLSA lookups against a real validating resolver (unbound, zone signed at test time):
AD decides, bogus data defers, a non-validating resolver never turns DANE on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from mta_engine.delivery.dane import TlsaRecord
from mta_engine.errors import DnsError
from mta_engine.routing.dane import DaneLookup
from mta_engine.routing.resolver import Resolver
from tests.support.dnsmasq import DnsServer
from tests.support.unbound import ValidatingResolver

pytestmark = pytest.mark.integration

EE = TlsaRecord(3, 1, 1, bytes(range(32)))
TA = TlsaRecord(2, 0, 2, bytes(range(64)))
PKIX = TlsaRecord(1, 1, 1, bytes(range(32)))


def _line(owner: str, r: TlsaRecord) -> str:
    return f"{owner} TLSA {r.usage} {r.selector} {r.mtype} {r.data.hex()}"


RECORDS = [
    "mx.dane.test. A 127.0.0.81",
    _line("_25._tcp.mx.dane.test.", EE),
    _line("_25._tcp.mx.dane.test.", TA),
    _line("_25._tcp.mx.dane.test.", PKIX),
    "plain.dane.test. A 127.0.0.82",  # signed, no TLSA: secure NODATA
    "pkix.dane.test. A 127.0.0.83",
    _line("_25._tcp.pkix.dane.test.", PKIX),
    "bogus.dane.test. A 127.0.0.84",
    _line("_25._tcp.bogus.dane.test.", EE),
    "alias.dane.test. CNAME target.dane.test.",
    "target.dane.test. A 127.0.0.85",
    _line("_25._tcp.target.dane.test.", EE),
]
TAMPER = [_line("_25._tcp.bogus.dane.test.", TlsaRecord(3, 1, 1, bytes(32)))]


@pytest.fixture(scope="module")
def unbound() -> Iterator[ValidatingResolver]:
    server = ValidatingResolver(RECORDS, tamper=TAMPER, listen="127.0.0.80").start()
    try:
        yield server
    finally:
        server.stop()


def _lookup(server_host: str, server_port: int, *hosts: str) -> list[object]:
    async def run() -> list[object]:
        lookup = DaneLookup(Resolver([server_host], port=server_port, timeout_s=3.0))
        out: list[object] = []
        for host in hosts:
            try:
                out.append(await lookup.lookup(host))
            except DnsError as exc:
                out.append(exc)
        return out

    return asyncio.run(run())


def test_unbound_sets_ad_on_signed_answers(unbound: ValidatingResolver) -> None:
    """The harness is real: TLSA answers carry AD, a tampered record is SERVFAIL."""
    good = unbound.query("_25._tcp.mx.dane.test.", "TLSA")
    assert good.rcode() == dns.rcode.NOERROR and good.flags & dns.flags.AD and good.answer
    assert unbound.query("_25._tcp.bogus.dane.test.", "TLSA").rcode() == dns.rcode.SERVFAIL


def test_resolve_tlsa_reports_records_and_authentication(unbound: ValidatingResolver) -> None:
    """Resolver.resolve_tlsa: the records as numbers and bytes, and AD as ``authenticated``."""
    async def run() -> object:
        return await Resolver([unbound.host], port=unbound.port).resolve_tlsa("_25._tcp.mx.dane.test")

    answer = asyncio.run(run())
    assert answer.authenticated is True  # type: ignore[attr-defined]
    assert set(answer.records) == {(r.usage, r.selector, r.mtype, r.data) for r in (EE, TA, PKIX)}  # type: ignore[attr-defined]


def test_secure_tlsa_gives_usable_records_only(unbound: ValidatingResolver) -> None:
    """A secure RRset: DANE with its usable records (the PKIX-EE one is dropped)."""
    (target,) = _lookup(unbound.host, unbound.port, "mx.dane.test")
    assert target is not None and set(target.records) == {EE, TA}  # type: ignore[attr-defined]
    assert target.names == ("mx.dane.test",)  # type: ignore[attr-defined]


def test_secure_denial_means_no_dane(unbound: ValidatingResolver) -> None:
    """Securely no TLSA (NODATA) and an unknown host's TLSA (NXDOMAIN): no DANE, no error."""
    assert _lookup(unbound.host, unbound.port, "plain.dane.test") == [None]


def test_only_unusable_records_require_tls_without_authentication(unbound: ValidatingResolver) -> None:
    """Only PKIX-EE published: a target without records (TLS required, unauthenticated)."""
    (target,) = _lookup(unbound.host, unbound.port, "pkix.dane.test")
    assert target is not None and target.records == ()  # type: ignore[attr-defined]


def test_bogus_tlsa_is_a_transient_failure(unbound: ValidatingResolver) -> None:
    """A record changed after signing: SERVFAIL, so the host must not be used (RFC 7672 §2.1)."""
    (err,) = _lookup(unbound.host, unbound.port, "bogus.dane.test")
    assert isinstance(err, DnsError) and not err.permanent and err.enhanced == "4.7.5"


def test_secure_cname_uses_the_target_as_tlsa_base(unbound: ValidatingResolver) -> None:
    """MX host alias.dane.test -> target.dane.test: the TLSA base is the target, both names count."""
    (target,) = _lookup(unbound.host, unbound.port, "alias.dane.test")
    assert target is not None and target.records == (EE,)  # type: ignore[attr-defined]
    assert target.names == ("target.dane.test", "alias.dane.test")  # type: ignore[attr-defined]


def test_verdicts_are_cached_for_their_ttl(unbound: ValidatingResolver) -> None:
    """A second lookup within the TTL asks no one: it still answers with the resolver stopped."""
    own = ValidatingResolver(RECORDS, listen="127.0.0.86").start()

    async def run() -> tuple[object, object]:
        lookup = DaneLookup(Resolver([own.host], port=own.port, timeout_s=1.0))
        first = await lookup.lookup("mx.dane.test")
        own.stop()
        return first, await lookup.lookup("mx.dane.test")

    try:
        first, second = asyncio.run(run())
    finally:
        own.stop()
    assert first is not None and first == second


def test_non_validating_resolver_never_turns_dane_on() -> None:
    """dnsmasq without DNSSEC never sets AD: no DANE, and no TLSA query is made at all."""
    server = DnsServer(mx={}, a={"mx.dane.test": "127.0.0.81"}, listen="127.0.0.87").start()
    try:
        assert _lookup(server.host, server.port, "mx.dane.test") == [None]
        log = server.log_path.read_text()
    finally:
        server.stop()
    assert "query[A] mx.dane.test" in log and "_25._tcp" not in log


def test_the_address_lookup_answers_dane_too() -> None:
    """The connect path looks up an MX host's addresses, then its DANE verdict: one A query serves
    both (asked with AD), counted in dnsmasq's own query log."""
    server = DnsServer(mx={}, a={"mx.dane.test": "127.0.0.81"}, listen="127.0.0.88").start()

    async def run() -> tuple[list[str], object]:
        resolver = Resolver([server.host], port=server.port, timeout_s=3.0)
        lookup = DaneLookup(resolver)
        return await resolver.resolve_addresses("mx.dane.test"), await lookup.lookup("mx.dane.test")

    try:
        addresses, target = asyncio.run(run())
        log = server.log_path.read_text()
    finally:
        server.stop()
    assert addresses == ["127.0.0.81"] and target is None
    assert log.count("query[A] mx.dane.test") == 1


def test_a_shared_address_answer_keeps_its_ad_bit_and_alias(unbound: ValidatingResolver) -> None:
    """Through a validating resolver the shared answer still turns DANE on, with the CNAME target
    as TLSA base; only the TLSA query is added to the address lookup's A query."""
    asked: list[str] = []

    async def run() -> tuple[list[str], object]:
        resolver = Resolver([unbound.host], port=unbound.port, timeout_s=3.0, ipv6=False)
        real = resolver.resolve_authenticated

        async def counted(name: str, rdtype: object) -> object:
            asked.append(f"{name} {dns.rdatatype.to_text(rdtype)}")  # type: ignore[arg-type]
            return await real(name, rdtype)  # type: ignore[arg-type]

        resolver.resolve_authenticated = counted  # type: ignore[method-assign]
        lookup = DaneLookup(resolver)
        return await resolver.resolve_addresses("alias.dane.test"), await lookup.lookup("alias.dane.test")

    addresses, target = asyncio.run(run())
    assert addresses == ["127.0.0.85"]
    assert target is not None and target.records == (EE,)  # type: ignore[attr-defined]
    assert target.names == ("target.dane.test", "alias.dane.test")  # type: ignore[attr-defined]
    assert asked == ["alias.dane.test A", "_25._tcp.target.dane.test TLSA"]
