"""MTA-STS policy discovery against a real dnsmasq (TXT, A) and a real HTTPS server (RFC 8461 §3)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mta_engine.routing.mta_sts import MAX_POLICY_BYTES, MtaStsCache, StsPolicy
from mta_engine.routing.resolver import Resolver
from tests.support.certs import make_certs
from tests.support.dns_txt import TxtDnsServer
from tests.support.https_server import CannedResponse, HttpsServer

pytestmark = pytest.mark.integration

DNS_IP, WEB_IP, BAD_WEB_IP = "127.0.0.160", "127.0.0.161", "127.0.0.162"
PATH = "/.well-known/mta-sts.txt"
DOMAINS = ["good.test", "redirect.test", "html.test", "huge.test", "chunked.test", "badcert.test", "gzip.test",
           "shared.test"]
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.good.test\r\nmx: *.backup.test\r\nmax_age: 86400\r\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    dns: TxtDnsServer
    web: HttpsServer
    ca_file: str  # trusts both test CAs: the bad server's chain is valid, only its name is wrong

    def cache(self) -> MtaStsCache:
        resolver = Resolver([self.dns.host], port=self.dns.port, timeout_s=2.0, ipv6=False)
        return MtaStsCache(resolver, ca_file=self.ca_file, port=self.web.port, fetch_timeout_s=5.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mta-sts")
    certs = make_certs(tmp / "web", [f"mta-sts.{d}" for d in DOMAINS if d != "badcert.test"])
    wrong = make_certs(tmp / "wrong", ["wrong.test"])
    bundle = tmp / "cas.pem"
    bundle.write_text(Path(certs.ca_file).read_text() + Path(wrong.ca_file).read_text())
    txt = {f"_mta-sts.{d}": [f"v=STSv1; id={d.split('.')[0]}1;"] for d in DOMAINS}
    a = {f"mta-sts.{d}": WEB_IP for d in DOMAINS}
    a["mta-sts.badcert.test"] = BAD_WEB_IP
    dns = TxtDnsServer(mx={}, a=a, txt=txt, listen=DNS_IP).start()
    web = HttpsServer(WEB_IP, certs.cert_file, certs.key_file).start()
    bad = HttpsServer(BAD_WEB_IP, wrong.cert_file, wrong.key_file, port=web.port).start()
    bad.set("mta-sts.badcert.test", PATH, CannedResponse(POLICY))
    web.set("mta-sts.good.test", PATH, CannedResponse(POLICY))
    web.set("mta-sts.shared.test", PATH, CannedResponse(POLICY))
    web.set("mta-sts.redirect.test", PATH, CannedResponse(b"", status=302,
                                                          headers={"Location": f"https://mta-sts.good.test{PATH}"}))
    web.set("mta-sts.html.test", PATH, CannedResponse(POLICY, content_type="text/html"))
    padding = b"".join(b"x-pad-%06d: %s\r\n" % (i, b"p" * 60) for i in range(MAX_POLICY_BYTES // 70 + 10))
    web.set("mta-sts.huge.test", PATH, CannedResponse(POLICY + padding))
    web.set("mta-sts.chunked.test", PATH, CannedResponse(POLICY + padding, chunked=True))
    web.set("mta-sts.gzip.test", PATH, CannedResponse(POLICY, headers={"Content-Encoding": "gzip"}))
    try:
        yield World(dns, web, str(bundle))
    finally:
        bad.stop()
        web.stop()
        dns.stop()


def _fetch_errors(cache: MtaStsCache, domain: str) -> list[str]:
    """Look ``domain`` up (expecting no policy) and return the logged fetch failures."""
    with capture_logs() as logs:
        assert _policies(cache, domain) == [None]
    return [e["error"] for e in logs if e["event"] == "mta_sts_policy_fetch_failed"]


def _policies(cache: MtaStsCache, *domains: str) -> list[StsPolicy | None]:
    async def run() -> list[StsPolicy | None]:
        try:
            return [await cache.policy(d) for d in domains]
        finally:
            await cache.close()

    return asyncio.run(run())


def test_policy_is_fetched_over_https_and_cached(world: World) -> None:
    """The first lookup reads TXT and fetches the policy; the next ones cost no DNS and no HTTPS."""
    cache = world.cache()
    first, second, third = _policies(cache, "good.test", "good.test", "GOOD.test.")
    assert first == StsPolicy("enforce", ("mx.good.test", "*.backup.test"), 86400)
    assert second == third == first
    assert cache.fetches == 1 and world.web.count("mta-sts.good.test", PATH) == 1
    assert world.dns.queries("_mta-sts.good.test") == [("TXT", "_mta-sts.good.test")]


def test_concurrent_lookups_share_one_fetch(world: World) -> None:
    """Many jobs for one domain at once wait for one TXT lookup and one fetch."""
    cache = world.cache()
    before = world.web.count("mta-sts.shared.test")

    async def run() -> list[StsPolicy | None]:
        try:
            return await asyncio.gather(*(cache.policy("shared.test") for _ in range(20)))
        finally:
            await cache.close()

    results = asyncio.run(run())
    assert all(r is not None and r.enforces for r in results)
    assert cache.fetches == 1 and world.web.count("mta-sts.shared.test") == before + 1


def test_domain_without_txt_record_has_no_policy_and_is_not_asked_again(world: World) -> None:
    """No `_mta-sts` record: no policy, no HTTPS request, and one TXT query for several lookups."""
    cache = world.cache()
    assert _policies(cache, "plain.test", "plain.test", "plain.test") == [None, None, None]
    assert world.dns.queries("_mta-sts.plain.test") == [("TXT", "_mta-sts.plain.test")]
    assert cache.fetches == 0 and world.web.count("mta-sts.plain.test") == 0


def test_redirect_is_not_followed(world: World) -> None:
    """A 302 to a valid policy is a failed fetch (RFC 8461 §3.3): no policy, target never asked."""
    before = world.web.count("mta-sts.good.test")
    (error,) = _fetch_errors(world.cache(), "redirect.test")
    assert "HTTP 302" in error
    assert world.web.count("mta-sts.redirect.test") == 1
    assert world.web.count("mta-sts.good.test") == before


def test_policy_not_served_as_text_plain_is_refused(world: World) -> None:
    """The media type must be text/plain (§3.3)."""
    (error,) = _fetch_errors(world.cache(), "html.test")
    assert "'text/html'" in error
    assert world.web.count("mta-sts.html.test") == 1


def test_policy_over_64_kib_is_refused(world: World) -> None:
    """A body over the 64 KiB cap is a failed fetch, even though it starts with a valid policy."""
    (error,) = _fetch_errors(world.cache(), "huge.test")
    assert f"limit {MAX_POLICY_BYTES}" in error  # refused on its Content-Length


def test_chunked_policy_over_64_kib_is_refused_while_reading(world: World) -> None:
    """Without a Content-Length the cap applies to the bytes read: reading stops past 64 KiB."""
    (error,) = _fetch_errors(world.cache(), "chunked.test")
    assert f"body over {MAX_POLICY_BYTES} bytes" in error
    assert world.web.count("mta-sts.huge.test") == 1


def test_content_coded_policy_is_refused(world: World) -> None:
    """We ask for identity coding; a gzip-labelled answer is not decoded but refused."""
    (error,) = _fetch_errors(world.cache(), "gzip.test")
    assert "content coding 'gzip'" in error


def test_certificate_not_valid_for_policy_host_is_refused(world: World) -> None:
    """A policy host whose certificate is not valid for mta-sts.<domain> gives no policy (§3.3)."""
    (error,) = _fetch_errors(world.cache(), "badcert.test")
    assert "Hostname mismatch" in error and "mta-sts.badcert.test" in error, error


def test_changed_id_refetches_and_a_failed_fetch_or_missing_record_keeps_the_policy(tmp_path: Path,
                                                                                     world: World) -> None:
    """A new TXT id fetches the new policy; a later failed fetch, then a vanished TXT record,
    keep the cached unexpired policy (RFC 8461 §5.1, §8.3)."""
    name = "mta-sts.good.test"  # served by the world's HTTPS server; this test swaps its answer
    clock = FakeClock()
    dns = TxtDnsServer(mx={}, a={name: WEB_IP}, txt={"_mta-sts.good.test": ["v=STSv1; id=v1"]},
                       listen="127.0.0.163").start()
    testing = b"version: STSv1\nmode: testing\nmx: mx.one.test\nmax_age: 86400\n"
    try:
        world.web.set(name, PATH, CannedResponse(testing))
        resolver = Resolver([dns.host], port=dns.port, timeout_s=2.0, ipv6=False, clock=clock)
        cache = MtaStsCache(resolver, ca_file=world.ca_file, port=world.web.port, clock=clock)

        def restart_dns(txt: dict[str, list[str]]) -> None:
            dns.stop()
            dns.txt = txt
            dns.start()

        async def run() -> list[StsPolicy | None]:
            seen = [await cache.policy("good.test")]  # v1: testing
            restart_dns({"_mta-sts.good.test": ["v=STSv1; id=v2"]})
            world.web.set(name, PATH, CannedResponse(POLICY))
            clock.now += 3600  # past the TXT TTL and the recheck interval
            seen.append(await cache.policy("good.test"))  # v1 still answers while v2 is fetched behind it
            await cache.settle()
            seen.append(await cache.policy("good.test"))  # v2: enforce
            restart_dns({"_mta-sts.good.test": ["v=STSv1; id=v3"]})
            world.web.set(name, PATH, CannedResponse(b"oops", status=500))
            clock.now += 3600
            await cache.policy("good.test")
            await cache.settle()
            seen.append(await cache.policy("good.test"))  # v3 cannot be fetched: v2 stays
            restart_dns({})
            clock.now += 3600
            await cache.policy("good.test")
            await cache.settle()
            seen.append(await cache.policy("good.test"))  # no record at all: v2 stays
            clock.now += 86400  # v2's max_age is over: nothing is left to apply
            seen.append(await cache.policy("good.test"))
            await cache.close()
            return seen

        seen = asyncio.run(run())
        assert [p.mode if p else None for p in seen] == ["testing", "testing", "enforce", "enforce", "enforce", None]
        assert cache.fetches == 3
    finally:
        world.web.set(name, PATH, CannedResponse(POLICY))
        dns.stop()
