"""Resolver against a real dnsmasq on loopback: MX order, implicit/null MX, errors, caching."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator
import socket
from typing import Any

import dns.message
import dns.query
import pytest

from mta_engine.errors import DnsError
from mta_engine.routing.mx import MxHost, MxPlan, order_mx
from mta_engine.routing.resolver import Resolver
from tests.support.dnsmasq import DnsServer
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.integration

TTL_S = 30
_sentinels = itertools.count()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _zone() -> DnsServer:
    return DnsServer(
        mx={
            "ordered.test": [
                (30, "mx3.ordered.test"),
                (10, "mx1.ordered.test"),
                (20, "mx2.ordered.test"),
            ],
            "farm.test": [(10, f"mx{i}.farm.test") for i in range(4)],
            "xn--bcher-kva.test": [(10, "mx.xn--bcher-kva.test")],
            "dangling.test": [(10, "missing.dangling.test")],
        },
        a={
            "mx1.ordered.test": "127.0.0.11",
            "mx2.ordered.test": "127.0.0.12",
            "mx3.ordered.test": "127.0.0.13",
            "aonly.test": "127.0.0.20",
            "dual.test": ["::1", "127.0.0.21", "127.0.0.22"],
            "mx.xn--bcher-kva.test": "127.0.0.30",
        },
        null_mx=["nullmx.test"],
        servfail=["fail.test"],
        ttl_s=TTL_S,
        raw=[
            # six TXT records of 255 letters: more than fits a UDP answer (dnsmasq sets TC), so TCP
            *(("_mta-sts.big.test", 16, bytes([255]) + bytes([ord("a") + i]) * 255) for i in range(6)),
            # an exchange whose first label holds a space: text needs an escape (\032)
            ("escaped.test", 15, b"\x00\x0a" + b"\x07mx\x20host\x07escaped\x04test\x00"),
        ],
    )


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with _zone() as server:
        yield server


def _resolver(server: DnsServer, **kwargs: Any) -> Resolver:
    return Resolver(nameservers=[server.host], port=server.port, timeout_s=2.0, **kwargs)


def _mx_queries(server: DnsServer, name: str) -> int:
    """MX queries dnsmasq logged for ``name``, after flushing its log with a sentinel query."""
    sentinel = f"sentinel-{next(_sentinels)}.test"
    dns.query.udp(dns.message.make_query(sentinel, "A"), server.host, port=server.port, timeout=2)
    wait_for(lambda: server.queries(sentinel), 5.0, what=f"{sentinel} in the dnsmasq log")
    return sum(1 for qtype, _ in server.queries(name) if qtype == "MX")


def test_mx_hosts_come_in_preference_order(dns_server: DnsServer) -> None:
    """A plan lists every MX by ascending preference and names the site by its hosts."""
    plan = asyncio.run(_resolver(dns_server).resolve_mx("ordered.test"))
    assert plan.hosts == (
        MxHost(10, "mx1.ordered.test"),
        MxHost(20, "mx2.ordered.test"),
        MxHost(30, "mx3.ordered.test"),
    )
    assert not plan.implicit
    assert plan.site == "mx1.ordered.test,mx2.ordered.test,mx3.ordered.test"
    assert plan.ttl_s == TTL_S
    assert order_mx(plan.hosts, random.Random(7)) == list(plan.hosts)


def test_equal_preference_mx_are_shuffled_per_attempt(dns_server: DnsServer) -> None:
    """Four MX at one preference come out in several orders across attempts (RFC 5321 §5.1)."""
    plan = asyncio.run(_resolver(dns_server).resolve_mx("farm.test"))
    assert len(plan.hosts) == 4
    orders = {tuple(h.name for h in order_mx(plan.hosts, random.Random(s))) for s in range(40)}
    assert len(orders) > 5


def test_no_mx_falls_back_to_implicit_mx_from_a(dns_server: DnsServer) -> None:
    """A domain with only an A record routes to itself at preference 0 (implicit MX)."""
    resolver = _resolver(dns_server)

    async def scenario() -> tuple[MxPlan, list[str]]:
        plan = await resolver.resolve_mx("aonly.test")
        return plan, await resolver.resolve_addresses("aonly.test")

    plan, addrs = asyncio.run(scenario())
    assert plan.implicit
    assert plan.hosts == (MxHost(0, "aonly.test"),)
    assert plan.site == "aonly.test"
    assert addrs == ["127.0.0.20"]


def test_nxdomain_is_permanent(dns_server: DnsServer) -> None:
    """A domain that does not exist fails permanently with 5.1.2."""
    with pytest.raises(DnsError) as info:
        asyncio.run(_resolver(dns_server).resolve_mx("no-such-domain.test"))
    assert info.value.permanent
    assert info.value.enhanced == "5.1.2"


def test_null_mx_is_permanent_without_a_fallback(dns_server: DnsServer) -> None:
    """``MX 0 .`` fails at once with 5.1.10 and never falls back to A/AAAA (RFC 7505)."""
    with pytest.raises(DnsError) as info:
        asyncio.run(_resolver(dns_server).resolve_mx("nullmx.test"))
    assert info.value.permanent
    assert info.value.enhanced == "5.1.10"
    assert not any(q[0] in ("A", "AAAA") for q in dns_server.queries("nullmx.test"))


def test_server_failure_is_transient(dns_server: DnsServer) -> None:
    """A server that refuses or fails the query yields a transient 4.4.3."""
    with pytest.raises(DnsError) as info:
        asyncio.run(_resolver(dns_server).resolve_mx("x.fail.test"))
    assert not info.value.permanent
    assert info.value.enhanced == "4.4.3"
    assert info.value.__cause__ is not None


def test_timeout_is_transient() -> None:
    """No server listening on the loopback port gives a transient error within the timeout."""
    resolver = Resolver(nameservers=["127.0.0.1"], port=free_port(), timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(DnsError) as info:
        asyncio.run(resolver.resolve_mx("anything.test"))
    assert time.monotonic() - started < 5.0
    assert not info.value.permanent
    assert info.value.enhanced == "4.4.3"


def test_no_nameservers_is_transient() -> None:
    """A resolver without nameservers fails transiently instead of crashing."""
    with pytest.raises(DnsError) as info:
        asyncio.run(Resolver(nameservers=[]).resolve_mx("anything.test"))
    assert not info.value.permanent


def test_addresses_list_ipv4_before_ipv6(dns_server: DnsServer) -> None:
    """All A records come before AAAA records."""
    addrs = asyncio.run(_resolver(dns_server).resolve_addresses("dual.test"))
    assert addrs[:2] and sorted(addrs[:2]) == ["127.0.0.21", "127.0.0.22"]
    assert addrs[2:] == ["::1"]


def test_mx_host_without_addresses_is_transient(dns_server: DnsServer) -> None:
    """An MX target that does not resolve is a transient 4.4.3 at this level (M09)."""
    resolver = _resolver(dns_server)
    plan = asyncio.run(resolver.resolve_mx("dangling.test"))
    with pytest.raises(DnsError) as info:
        asyncio.run(resolver.resolve_addresses(plan.hosts[0].name))
    assert not info.value.permanent
    assert info.value.enhanced == "4.4.3"


def test_ip_literal_mx_target_is_accepted_without_lookup() -> None:
    """An MX target that is an IP literal resolves to itself with no DNS traffic."""
    resolver = Resolver(nameservers=[])
    assert asyncio.run(resolver.resolve_addresses("127.0.0.9")) == ["127.0.0.9"]
    assert asyncio.run(resolver.resolve_addresses("[IPv6:::1]")) == ["::1"]


def test_idna_domain_is_looked_up_as_a_label(dns_server: DnsServer) -> None:
    """A U-label domain is queried and cached under its A-label."""
    resolver = _resolver(dns_server)
    plan = asyncio.run(resolver.resolve_mx("Bücher.test"))
    assert plan.domain == "xn--bcher-kva.test"
    assert resolver.cached_plan("xn--bcher-kva.test.") == plan


def test_cached_answer_survives_server_stop() -> None:
    """A second lookup within the TTL is served from the cache, even with the server gone."""
    with _zone() as server:
        resolver = Resolver(nameservers=[server.host], port=server.port, timeout_s=0.5)
        first = asyncio.run(resolver.resolve_mx("ordered.test"))
        server.stop()
        assert asyncio.run(resolver.resolve_mx("ordered.test")) == first
        assert resolver.cached_plan("ordered.test") == first


def test_cache_expires_after_ttl_on_the_injected_clock() -> None:
    """The plan is cached for exactly its TTL on the resolver's clock; then it asks again."""
    clock = FakeClock()
    with _zone() as server:
        resolver = Resolver(
            nameservers=[server.host], port=server.port, timeout_s=0.5, clock=clock
        )
        asyncio.run(resolver.resolve_mx("ordered.test"))
        clock.now += TTL_S - 1
        assert resolver.cached_plan("ordered.test") is not None
        clock.now += 2
        assert resolver.cached_plan("ordered.test") is None
        server.stop()
        with pytest.raises(DnsError) as info:
            asyncio.run(resolver.resolve_mx("ordered.test"))
        assert not info.value.permanent


def test_negative_answers_are_cached_for_negative_ttl(dns_server: DnsServer) -> None:
    """NXDOMAIN is cached for ``negative_ttl_s`` and then asked again."""
    clock = FakeClock()
    resolver = _resolver(dns_server, clock=clock, negative_ttl_s=10.0)

    def lookup() -> None:
        with pytest.raises(DnsError):
            asyncio.run(resolver.resolve_mx("negative.test"))

    lookup()
    lookup()
    assert _mx_queries(dns_server, "negative.test") == 1
    clock.now += 11
    lookup()
    assert _mx_queries(dns_server, "negative.test") == 2


def test_transient_failures_are_cached_briefly(dns_server: DnsServer) -> None:
    """A SERVFAIL-like answer is remembered for ``transient_ttl_s`` only."""
    clock = FakeClock()
    resolver = _resolver(dns_server, clock=clock, transient_ttl_s=5.0)

    def lookup() -> None:
        with pytest.raises(DnsError):
            asyncio.run(resolver.resolve_mx("brief.fail.test"))

    lookup()
    lookup()
    assert _mx_queries(dns_server, "brief.fail.test") == 1
    clock.now += 6
    lookup()
    assert _mx_queries(dns_server, "brief.fail.test") == 2


def test_concurrent_lookups_share_one_query(dns_server: DnsServer) -> None:
    """Twenty concurrent lookups of one domain send a single MX query."""
    resolver = _resolver(dns_server)

    async def scenario() -> set[object]:
        plans = await asyncio.gather(*(resolver.resolve_mx("farm.test") for _ in range(20)))
        return {id(p) for p in plans}

    before = _mx_queries(dns_server, "farm.test")
    assert len(asyncio.run(scenario())) == 1
    assert _mx_queries(dns_server, "farm.test") == before + 1


def test_repr_shows_cache_sizes(dns_server: DnsServer) -> None:
    """repr names the nameservers and counts cached entries."""
    resolver = _resolver(dns_server)
    asyncio.run(resolver.resolve_mx("ordered.test"))
    text = repr(resolver)
    assert f"port={dns_server.port}" in text
    assert "mx_cached=1" in text


# ------------------------------------------------------------------ the UDP fast path and its fallback


def test_plain_answers_take_the_fast_path(dns_server: DnsServer) -> None:
    """MX, A and TXT answers of the usual shape are read without dnspython's resolver."""
    resolver = _resolver(dns_server)

    async def run() -> None:
        await resolver.resolve_mx("ordered.test")
        await resolver.resolve_addresses("mx1.ordered.test")
        await resolver.resolve_txt("_mta-sts.ordered.test")

    asyncio.run(run())
    assert (resolver.fast_answers, resolver.full_queries) == (4, 0)  # MX, A, AAAA, TXT


def test_truncated_answer_is_asked_again_over_tcp(dns_server: DnsServer) -> None:
    """A TXT answer too big for UDP comes back truncated; dnspython gets the whole of it over TCP."""
    resolver = _resolver(dns_server)
    texts = asyncio.run(resolver.resolve_txt("_mta-sts.big.test"))
    assert sorted(texts) == [chr(ord("a") + i) * 255 for i in range(6)]
    assert (resolver.fast_answers, resolver.full_queries) == (0, 1)


def test_name_the_fast_path_cannot_write_is_read_by_dnspython(dns_server: DnsServer) -> None:
    """An exchange that needs an escape in text form is left to dnspython, which writes it as before."""
    resolver = _resolver(dns_server)
    plan = asyncio.run(resolver.resolve_mx("escaped.test"))
    assert plan.hosts == (MxHost(10, "mx\\032host.escaped.test"),)
    assert (resolver.fast_answers, resolver.full_queries) == (0, 1)


def test_silent_first_nameserver_sends_queries_to_dnspython(dns_server: DnsServer) -> None:
    """The first nameserver swallows queries: after one try's timeout dnspython asks the second, and
    the fast path stays off for a while (no try's timeout paid per query)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.98", dns_server.port))  # bound, never read: every query is lost
    try:
        resolver = Resolver(nameservers=["127.0.0.98", dns_server.host], port=dns_server.port, timeout_s=2.0)

        async def run() -> tuple[MxPlan, MxPlan]:
            return await resolver.resolve_mx("ordered.test"), await resolver.resolve_mx("farm.test")

        ordered, farm = asyncio.run(run())
    finally:
        silent.close()
    assert ordered.hosts[0] == MxHost(10, "mx1.ordered.test") and len(farm.hosts) == 4
    assert (resolver.fast_answers, resolver.full_queries) == (0, 2)


def _ipv6_loopback_port() -> int | None:
    """A free UDP+TCP port on ::1, or None when this host has no IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp:
            tcp.bind(("::1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                udp.bind(("::1", port))
        return port
    except OSError:
        return None


def test_fast_path_over_an_ipv6_nameserver() -> None:
    """A resolver on ::1 is asked over IPv6 by the fast path, and answers the same."""
    port = _ipv6_loopback_port()
    if port is None:
        pytest.skip("no IPv6 loopback on this host")
    with DnsServer(mx={"six.test": [(10, "mx.six.test")]}, a={"mx.six.test": "127.0.0.61"}, listen="::1",
                   port=port) as server:
        resolver = Resolver(nameservers=["::1"], port=server.port, timeout_s=2.0, ipv6=False)

        async def run() -> tuple[MxPlan, list[str]]:
            return await resolver.resolve_mx("six.test"), await resolver.resolve_addresses("mx.six.test")

        plan, addrs = asyncio.run(run())
    assert plan.hosts == (MxHost(10, "mx.six.test"),) and addrs == ["127.0.0.61"]
    assert (resolver.fast_answers, resolver.full_queries) == (2, 0)
