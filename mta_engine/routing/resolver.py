"""Async MX and address resolution over dnspython, with a TTL cache and in-flight dedup.

Contract: the only module that talks DNS. It turns answers into ``MxPlan`` values and address
lists, and turns every dnspython failure into ``DnsError`` exactly once (``raise ... from exc``):

- null MX (RFC 7505 §3)                 -> permanent, 5.1.10
- NXDOMAIN, or no MX and no A/AAAA      -> permanent, 5.1.2 (RFC 5321 §5.1, STANDARDS M03)
- SERVFAIL/REFUSED, timeout, no servers -> transient, 4.4.3
- an MX host without addresses          -> transient, 4.4.3 (M09 leaves the verdict to policy)

It never orders hosts for an attempt (``mx.order_mx`` does, with the caller's rng), never
opens SMTP connections and never logs (no structlog configuration here). Trust level: it
parses untrusted DNS answers but only keeps names, preferences, addresses and TTLs.

Transport: each query first goes as one UDP datagram to the first nameserver, from a fresh
socket (a random source port and a random ID, as dnspython does), and ``wire.decode`` reads the
answer when it has the usual shape: NOERROR or NXDOMAIN (or, with one nameserver, SERVFAIL and
REFUSED). Anything else, a timeout of one try, or an error goes to dnspython's resolver with the
time that is left (TCP after truncation, the other nameservers, retries). A lookup through the
fast path costs a quarter to a third of the CPU (``python -m bench.dns_bench``: 54-128 µs against
226-340 µs on the bench machine).

Caching: positive answers live for their TTL clamped to [1 s, 1 day]; negative answers for
the SOA-derived negative TTL (RFC 2308 §5) capped at ``negative_ttl_s``; transient failures
for ``transient_ttl_s``. Concurrent lookups of one name share one query.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import dns.resolver

from mta_engine.errors import DnsError
from mta_engine.routing import wire
from mta_engine.routing.mx import MxHost, MxPlan, is_null_mx, normalize_domain, site_key

__all__ = ["Resolver"]

_T = TypeVar("_T")

MAX_POSITIVE_TTL_S = 86_400.0  # cap: one day, whatever the zone says
MIN_TTL_S = 1.0  # floor: a TTL of 0 must not turn the cache into a query per message
STUB_PAUSE_S = 30.0  # after a fast-path try timed out, every query goes through dnspython this long

# RFC 3463 enhanced status codes used for DNS outcomes.
ENHANCED_NULL_MX = "5.1.10"  # RFC 7505 §4.1: recipient address has null MX
ENHANCED_BAD_DOMAIN = "5.1.2"  # bad destination system address
ENHANCED_DNS_TRANSIENT = "4.4.3"  # directory server failure


@dataclass(frozen=True, slots=True)
class _Failure:
    """A cached DnsError, re-raised as a fresh exception on every hit."""

    message: str
    permanent: bool
    enhanced: str
    cause: BaseException | None

    def to_error(self) -> DnsError:
        err = DnsError(self.message, permanent=self.permanent, enhanced=self.enhanced)
        err.__cause__ = self.cause
        return err


@dataclass(frozen=True, slots=True)
class _Entry(Generic[_T]):
    expires_at: float  # monotonic, from the injected clock
    value: _T | _Failure


class TlsaAnswer(NamedTuple):
    """TLSA records as (usage, selector, matching type, data), whether authenticated, TTL."""

    records: tuple[tuple[int, int, int, bytes], ...]
    authenticated: bool
    ttl_s: float  # the answer's TTL, or the negative TTL when there are no records


@dataclass(frozen=True, slots=True)
class AuthenticatedAnswer:
    """One DO/AD query's outcome: the records (decoded as ``wire.WireAnswer.items``), the AD bit,
    the TTL (negative TTL when empty)."""

    records: tuple[Any, ...]
    authenticated: bool
    ttl_s: float
    nxdomain: bool
    canonical: str = ""  # the owner after CNAMEs (lower case, no trailing dot), when there is an answer


@dataclass(frozen=True, slots=True)
class _Records:
    """One query's outcome: the records (as ``wire.WireAnswer.items``), their min TTL and, when
    empty, a negative TTL; the AD bit and the owner after CNAMEs."""

    items: tuple[Any, ...]
    ttl_s: float
    nxdomain: bool
    negative_ttl_s: float | None  # from the SOA in the authority section, if any
    authenticated: bool = False
    canonical: str = ""  # set when there are records


class Resolver:
    """MX and address lookups with caching; see the module docstring for the error mapping."""

    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        negative_ttl_s: float = 60.0,
        transient_ttl_s: float = 1.0,
        max_entries: int = 100_000,
        max_concurrent_queries: int = 64,
        ipv6: bool = True,
    ) -> None:
        self.ipv6 = ipv6
        """Look up AAAA for MX hosts; without an IPv6 route the answers could not be used anyway."""
        if nameservers is None:
            try:
                self._dns = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException:  # no usable /etc/resolv.conf
                self._dns = dns.asyncresolver.Resolver(configure=False)
                self._dns.nameservers = []
        else:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = list(nameservers)
        self._dns.port = port
        # A lost UDP query must be sent again within the lifetime: dnspython retries a server after
        # each per-try timeout, so the per-try timeout is a fraction of the lifetime.
        self._dns.lifetime = timeout_s
        self._dns.timeout = max(0.2, min(1.0, timeout_s / 4))
        self._slots = asyncio.Semaphore(max_concurrent_queries)  # bursts overflow a resolver's UDP buffer
        self._dns.cache = None  # we cache ourselves, on our clock
        self._clock = clock
        self._negative_ttl_s = negative_ttl_s
        self._transient_ttl_s = transient_ttl_s
        self._max_entries = max_entries
        self._mx_cache: dict[str, _Entry[MxPlan]] = {}
        self._addr_cache: dict[str, _Entry[list[str]]] = {}
        self._txt_cache: dict[str, _Entry[list[str]]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[object]] = {}
        self._dns_ad: dns.asyncresolver.Resolver | None = None  # DO+AD queries (DANE), made on first use
        self.authenticated_a = False
        """Ask A queries with DO+AD and keep each answer for one ``take_authenticated_a``: DANE needs
        the AD bit of an MX host's address records (RFC 7672 §2.2.2), and the connect path has just
        looked them up; one query serves both. Set by ``DaneLookup``."""
        self._auth_a: dict[str, tuple[float, AuthenticatedAnswer]] = {}
        self._stub = _Stub.for_nameservers(list(self._dns.nameservers), port)
        self._stub_paused_until = 0.0  # time.monotonic(): after a fast try timed out
        self.fast_answers = 0
        """Queries answered by the UDP fast path."""
        self.full_queries = 0
        """Queries that went through dnspython's resolver (odd answers, timeouts, no fast path)."""

    def __repr__(self) -> str:
        return (
            f"<Resolver nameservers={list(self._dns.nameservers)!r} port={self._dns.port} "
            f"mx_cached={len(self._mx_cache)} addr_cached={len(self._addr_cache)} "
            f"inflight={len(self._inflight)} fast={self.fast_answers} full={self.full_queries}>"
        )

    # ------------------------------------------------------------------ public API

    async def resolve_mx(self, domain: str) -> MxPlan:
        """Return the MX plan for ``domain`` or raise ``DnsError``."""
        try:
            name = normalize_domain(domain)
        except ValueError as exc:
            raise DnsError(str(exc), permanent=True, enhanced=ENHANCED_BAD_DOMAIN) from exc
        return await self._cached(self._mx_cache, "mx", name, self._lookup_mx)

    async def resolve_addresses(self, host: str) -> list[str]:
        """Return ``host``'s addresses, IPv4 first, or raise a transient ``DnsError``.

        An IP literal (an MX target that is an address, RFC 5321 §5.1 discourages it) is
        returned as is without a lookup.
        """
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        try:
            name = normalize_domain(host)
        except ValueError as exc:
            raise DnsError(str(exc), permanent=False, enhanced=ENHANCED_DNS_TRANSIENT) from exc
        return list(await self._cached(self._addr_cache, "addr", name, self._lookup_addresses))

    async def resolve_txt(self, name: str) -> list[str]:
        """Texts of ``name``'s TXT records (each record's strings joined), [] when it has none.

        NXDOMAIN and NODATA are [] (cached for the negative TTL); SERVFAIL or a timeout raises a
        transient ``DnsError``. ``name`` may hold underscore labels (``_mta-sts.example.com``).
        """
        key = name.strip().lower().rstrip(".")
        if not key or ".." in key:
            raise DnsError(f"bad TXT name {name!r}", permanent=False, enhanced=ENHANCED_DNS_TRANSIENT)
        return list(await self._cached(self._txt_cache, "txt", key, self._lookup_txt))

    def cached_plan(self, domain: str) -> MxPlan | None:
        """Return the unexpired cached plan for ``domain`` without any lookup, else None."""
        try:
            name = normalize_domain(domain)
        except ValueError:
            return None
        entry = self._mx_cache.get(name)
        if entry is None or entry.expires_at <= self._clock() or isinstance(entry.value, _Failure):
            return None
        return entry.value

    async def resolve_tlsa(self, name: str) -> TlsaAnswer:
        """TLSA records at ``name`` (``_25._tcp.<mx host>``, RFC 7672 §2.2.3) and whether the
        resolver authenticated them (AD bit, RFC 4035 §3.2.3); NXDOMAIN/NODATA = no records.
        SERVFAIL (a validating resolver's answer to bogus data), REFUSED and timeouts raise a
        transient ``DnsError``. Not cached here: ``routing/dane.py`` caches by ``ttl_s``."""
        answer = await self.resolve_authenticated(name, dns.rdatatype.TLSA)
        return TlsaAnswer(answer.records, answer.authenticated, answer.ttl_s)

    async def resolve_authenticated(self, name: str, rdtype: dns.rdatatype.RdataType) -> AuthenticatedAnswer:
        """One uncached query with DO and AD set (RFC 6840 §5.7); the answer says whether the
        resolver validated it. The AD bit is trusted as is: ``[dns] nameservers`` must be a
        validating resolver reached over a trusted path (typically on this host), as for
        Postfix's ``smtp_dns_support_level = dnssec``. Errors map as in ``_query``."""
        got = await self._query(name.rstrip("."), rdtype, dnssec=True)
        if not got.items:
            ttl_s = got.negative_ttl_s if got.negative_ttl_s is not None else self._negative_ttl_s
            return AuthenticatedAnswer((), got.authenticated, ttl_s, nxdomain=got.nxdomain)
        return AuthenticatedAnswer(got.items, got.authenticated, got.ttl_s, nxdomain=False, canonical=got.canonical)

    async def _query_a_authenticated(self, name: str) -> _Records:
        """The address lookup's A query, asked with DO+AD; the answer is kept for DANE."""
        answer = await self.resolve_authenticated(name, dns.rdatatype.A)
        keep = self._auth_a
        keep.pop(name, None)
        while len(keep) >= min(self._max_entries, 10_000):  # unclaimed (DANE off for that domain)
            keep.pop(next(iter(keep)))
        keep[name] = (self._clock() + max(answer.ttl_s, MIN_TTL_S), answer)
        if not answer.records:  # its TTL is the negative one (SOA, else ``negative_ttl_s``)
            return _Records((), 0.0, nxdomain=answer.nxdomain, negative_ttl_s=answer.ttl_s)
        return _Records(answer.records, answer.ttl_s, nxdomain=False, negative_ttl_s=None)

    async def take_authenticated_a(self, name: str) -> AuthenticatedAnswer:
        """``name``'s A records with the AD bit: the answer the address lookup just got, if it is
        still fresh (claimed once), else a query of its own."""
        kept = self._auth_a.pop(name, None)
        if kept is not None and kept[0] > self._clock():
            return kept[1]
        return await self.resolve_authenticated(name, dns.rdatatype.A)

    def _dnssec_resolver(self) -> dns.asyncresolver.Resolver:
        """A twin of the main resolver whose queries carry DO and AD; the main one stays lean."""
        if self._dns_ad is None:
            twin = dns.asyncresolver.Resolver(configure=False)
            twin.nameservers = list(self._dns.nameservers)
            twin.port, twin.lifetime, twin.timeout = self._dns.port, self._dns.lifetime, self._dns.timeout
            twin.cache = None
            twin.use_edns(0, dns.flags.DO, 1232)  # DNS flag day 2020 buffer size
            twin.flags = dns.flags.RD | dns.flags.AD
            self._dns_ad = twin
        return self._dns_ad

    # ------------------------------------------------------------------ cache + dedup

    async def _cached(
        self,
        cache: dict[str, _Entry[_T]],
        kind: str,
        name: str,
        lookup: Callable[[str], Awaitable[_Entry[_T]]],
    ) -> _T:
        entry = cache.get(name)
        if entry is None or entry.expires_at <= self._clock():
            key = (kind, name)
            task = self._inflight.get(key)
            if task is None:
                task = asyncio.ensure_future(self._fill(cache, name, lookup))
                self._inflight[key] = task  # type: ignore[assignment]
                task.add_done_callback(functools.partial(self._on_done, key))
            # shield: a cancelled caller must not cancel the query other callers share.
            entry = await asyncio.shield(task)  # type: ignore[assignment]
        if isinstance(entry.value, _Failure):
            raise entry.value.to_error()
        return entry.value

    async def _fill(
        self,
        cache: dict[str, _Entry[_T]],
        name: str,
        lookup: Callable[[str], Awaitable[_Entry[_T]]],
    ) -> _Entry[_T]:
        entry = await lookup(name)
        self._store(cache, name, entry)
        return entry

    def _store(self, cache: dict[str, _Entry[_T]], name: str, entry: _Entry[_T]) -> None:
        cache.pop(name, None)
        while cache and len(cache) >= self._max_entries:  # evict the oldest insertion (FIFO)
            cache.pop(next(iter(cache)))
        cache[name] = entry

    def _on_done(self, key: tuple[str, str], task: asyncio.Future[object]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # mark retrieved even if every waiter was cancelled

    def _positive(self, value: _T | _Failure, ttl_s: float) -> _Entry[_T]:
        return _Entry(self._clock() + min(max(ttl_s, MIN_TTL_S), MAX_POSITIVE_TTL_S), value)

    def _negative(self, failure: _Failure, records: _Records | None) -> _Entry[_T]:
        ttl_s = self._negative_ttl_s
        if records is not None and records.negative_ttl_s is not None:
            ttl_s = min(records.negative_ttl_s, self._negative_ttl_s)
        return _Entry(self._clock() + max(ttl_s, MIN_TTL_S), failure)

    def _transient(self, err: DnsError) -> _Entry[_T]:
        failure = _Failure(str(err), err.permanent, err.enhanced, err.__cause__)
        return _Entry(self._clock() + max(self._transient_ttl_s, 0.0), failure)

    # ------------------------------------------------------------------ lookups

    async def _lookup_mx(self, name: str) -> _Entry[MxPlan]:
        try:
            mx = await self._query(name, dns.rdatatype.MX)
            if mx.nxdomain:
                failure = _Failure(f"{name}: NXDOMAIN", True, ENHANCED_BAD_DOMAIN, None)
                return self._negative(failure, mx)
            if mx.items:
                hosts = tuple(sorted(MxHost(pref, text) for pref, text in mx.items))
                if is_null_mx(hosts):
                    failure = _Failure(
                        f"{name}: null MX, domain accepts no mail (RFC 7505)",
                        True,
                        ENHANCED_NULL_MX,
                        None,
                    )
                    return self._positive(failure, mx.ttl_s)  # a real answer: cache by TTL
                # RFC 7505 §3 forbids null MX beside other MX; ignore the stray root entry.
                hosts = tuple(h for h in hosts if h.name) or hosts
                plan = MxPlan(name, hosts, implicit=False, site=site_key(hosts), ttl_s=mx.ttl_s)
                return self._positive(plan, mx.ttl_s)
            # NOERROR/NODATA: implicit MX, the domain itself at preference 0 (RFC 5321 §5.1).
            addrs, addr_records = await self._addresses(name)
            if addrs is None:
                failure = _Failure(
                    f"{name}: no MX and no A/AAAA records", True, ENHANCED_BAD_DOMAIN, None
                )
                return self._negative(failure, addr_records or mx)
            hosts = (MxHost(0, name),)
            self._store(self._addr_cache, name, self._positive(addrs[0], addrs[1]))
            plan = MxPlan(name, hosts, implicit=True, site=site_key(hosts), ttl_s=addrs[1])
            return self._positive(plan, addrs[1])
        except DnsError as err:
            return self._transient(err)

    async def _lookup_addresses(self, name: str) -> _Entry[list[str]]:
        try:
            addrs, records = await self._addresses(name, ipv6=self.ipv6)
        except DnsError as err:
            return self._transient(err)
        if addrs is None:
            reason = "NXDOMAIN" if records is not None and records.nxdomain else "no A/AAAA"
            failure = _Failure(f"{name}: {reason}", False, ENHANCED_DNS_TRANSIENT, None)
            return self._negative(failure, records)
        return self._positive(addrs[0], addrs[1])

    async def _lookup_txt(self, name: str) -> _Entry[list[str]]:
        try:
            records = await self._query(name, dns.rdatatype.TXT)
        except DnsError as err:
            return self._transient(err)
        if not records.items:  # NXDOMAIN or NODATA: a plain "none", not an error
            ttl_s = self._negative_ttl_s
            if records.negative_ttl_s is not None:
                ttl_s = min(records.negative_ttl_s, ttl_s)
            return _Entry(self._clock() + max(ttl_s, MIN_TTL_S), [])
        return self._positive(list(records.items), records.ttl_s)

    async def _addresses(
        self, name: str, *, ipv6: bool = True
    ) -> tuple[tuple[list[str], float] | None, _Records | None]:
        """Query A and AAAA together; return ((addresses v4 first, ttl) | None, a negative answer).

        Raises DnsError (transient) only when neither family produced addresses and at least
        one query failed transiently.
        """
        queries = [self._query_a_authenticated(name) if self.authenticated_a else self._query(name, dns.rdatatype.A)]
        if ipv6:
            queries.append(self._query(name, dns.rdatatype.AAAA))
        results = await asyncio.gather(*queries, return_exceptions=True)
        found: list[str] = []
        ttls: list[float] = []
        negative: _Records | None = None
        error: BaseException | None = None
        for res in results:
            if isinstance(res, DnsError):
                error = res
            elif isinstance(res, BaseException):
                raise res
            elif res.items:
                found.extend(res.items)
                ttls.append(res.ttl_s)
            elif negative is None or res.nxdomain:
                negative = res
        if found:
            return (found, min(ttls)), None
        if error is not None:
            raise error
        return None, negative

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType, *, dnssec: bool = False) -> _Records:
        """One query (``dnssec``: with DO and AD, through the twin resolver); the fast path first,
        then dnspython. dnspython exceptions become DnsError here and nowhere else."""
        label = dns.rdatatype.to_text(rdtype)
        resolver = self._dnssec_resolver() if dnssec else self._dns
        if not resolver.nameservers:
            raise DnsError(f"{name} {label}: no nameservers configured", permanent=False,
                           enhanced=ENHANCED_DNS_TRANSIENT)
        async with self._slots:
            lifetime = float(resolver.lifetime)
            stub = self._stub
            if stub is not None and time.monotonic() >= self._stub_paused_until:
                started = time.monotonic()
                got = await stub.ask(name, int(rdtype), dnssec, float(resolver.timeout))
                if isinstance(got, wire.WireAnswer):
                    self.fast_answers += 1
                    return self._from_wire(name, label, got, stub)
                if got is _TIMED_OUT:
                    self._stub_paused_until = time.monotonic() + STUB_PAUSE_S
                lifetime = max(0.1, lifetime - (time.monotonic() - started))
            self.full_queries += 1
            return await self._query_full(resolver, name, rdtype, label, lifetime)

    def _from_wire(self, name: str, label: str, got: wire.WireAnswer, stub: _Stub) -> _Records:
        if got.rcode in (wire.SERVFAIL, wire.REFUSED):  # only with a single nameserver: as dnspython
            cause = _StubFailure(f"{'SERVFAIL' if got.rcode == wire.SERVFAIL else 'REFUSED'} from {stub.peer}")
            raise DnsError(f"{name} {label}: nameservers failed", permanent=False,
                           enhanced=ENHANCED_DNS_TRANSIENT) from cause
        if not got.items:
            return _Records((), 0.0, nxdomain=got.rcode == wire.NXDOMAIN, negative_ttl_s=got.negative_ttl_s,
                            authenticated=got.authenticated)
        return _Records(got.items, got.ttl_s, nxdomain=False, negative_ttl_s=None,
                        authenticated=got.authenticated, canonical=got.canonical)

    async def _query_full(self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType,
                          label: str, lifetime: float) -> _Records:
        """The query through dnspython's resolver (retries, TCP, every nameserver) within ``lifetime``."""
        try:
            answer = await resolver.resolve(name + ".", rdtype, raise_on_no_answer=False, search=False,
                                            lifetime=lifetime)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())
            neg = _soa_negative_ttl(responses[0]) if responses else None
            ad = bool(responses) and all(r.flags & dns.flags.AD for r in responses)
            return _Records((), 0.0, nxdomain=True, negative_ttl_s=neg, authenticated=ad)
        except dns.resolver.NoNameservers as exc:  # SERVFAIL/REFUSED from every server
            raise DnsError(f"{name} {label}: nameservers failed", permanent=False,
                           enhanced=ENHANCED_DNS_TRANSIENT) from exc
        except dns.exception.Timeout as exc:
            raise DnsError(f"{name} {label}: timed out", permanent=False, enhanced=ENHANCED_DNS_TRANSIENT) from exc
        except dns.exception.DNSException as exc:  # YXDOMAIN, malformed answers, ...
            raise DnsError(f"{name} {label}: {type(exc).__name__}: {exc}", permanent=False,
                           enhanced=ENHANCED_DNS_TRANSIENT) from exc
        ad = bool(answer.response.flags & dns.flags.AD)
        rrset = answer.rrset
        if rrset is None:
            return _Records((), 0.0, nxdomain=False, negative_ttl_s=_soa_negative_ttl(answer.response),
                            authenticated=ad)
        # The smallest TTL along the answer, CNAME chain included.
        ttl_s = float(min([rrset.ttl, *(r.ttl for r in answer.response.answer)]))
        items: list[Any] = []
        for rdata in rrset:
            if rdtype == dns.rdatatype.MX:
                items.append((int(rdata.preference), _name_text(rdata.exchange)))
            elif rdtype == dns.rdatatype.TXT:  # one record may be split into several strings
                items.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif rdtype == dns.rdatatype.TLSA:
                items.append((int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert)))
            else:
                items.append(str(rdata.address))
        return _Records(tuple(items), ttl_s, nxdomain=False, negative_ttl_s=None, authenticated=ad,
                        canonical=_name_text(answer.canonical_name))


class _StubFailure(Exception):
    """The cause of a DnsError decided by the fast path (the nameserver's SERVFAIL or REFUSED)."""


_TIMED_OUT: Any = object()  # ``_Stub.ask``: no answer within the try's timeout


class _Stub:
    """The UDP fast path: one datagram per query to the first nameserver, from a fresh socket
    (the kernel picks a random source port), with a random ID; ``wire.decode`` reads the answer.
    ``ask`` returns a ``wire.WireAnswer``, or None / ``_TIMED_OUT`` for the caller to ask dnspython.
    """

    __slots__ = ("family", "address", "port", "peer", "single")

    def __init__(self, address: str, port: int, single: bool) -> None:
        self.family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.address, self.port = address, port
        self.peer = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.single = single  # the only nameserver: its SERVFAIL/REFUSED is the final word

    @classmethod
    def for_nameservers(cls, nameservers: list[Any], port: int) -> _Stub | None:
        """A stub for the first nameserver when it is an IP address (not a DoH URL), else None."""
        if not nameservers or not isinstance(nameservers[0], str):
            return None
        try:
            address = str(ipaddress.ip_address(nameservers[0]))
        except ValueError:
            return None
        return cls(address, port, single=len(nameservers) == 1)

    async def ask(self, name: str, rdtype: int, dnssec: bool, timeout_s: float) -> Any:
        qid = secrets.randbits(16)
        try:
            query = wire.encode_query(qid, name, rdtype, dnssec=dnssec)
        except ValueError:
            return None
        loop = asyncio.get_running_loop()
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.address, self.port))  # only this peer's datagrams reach the socket
            done: asyncio.Future[Any] = loop.create_future()
            single = self.single

            def readable() -> None:
                while not done.done():
                    try:
                        data = sock.recv(65535)
                    except BlockingIOError:
                        return
                    except OSError:  # ICMP port unreachable (ECONNREFUSED) and the like
                        done.set_result(None)
                        return
                    got = wire.decode(data, qid, name, rdtype)
                    if got is wire.NOT_OURS:
                        continue
                    if isinstance(got, wire.WireAnswer) and got.rcode in (wire.SERVFAIL, wire.REFUSED) \
                            and not single:
                        got = None  # the other nameservers may answer: dnspython asks them
                    done.set_result(got)

            fd = sock.fileno()
            loop.add_reader(fd, readable)
            try:
                sock.send(query)
                async with asyncio.timeout(timeout_s):
                    return await done
            except TimeoutError:
                return _TIMED_OUT
            except OSError:
                return None
            finally:
                loop.remove_reader(fd)
        except OSError:
            return None
        finally:
            sock.close()


def _name_text(name: object) -> str:
    """Exchange name as lower-case text without the trailing dot; the root becomes ""."""
    return str(name).lower().rstrip(".")


def _soa_negative_ttl(response: dns.message.Message) -> float | None:
    """RFC 2308 §5: the negative TTL is min(SOA TTL, SOA MINIMUM) from the authority section."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, next(iter(rrset)).minimum))
    return None


def _ip_literal(host: str) -> str | None:
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):  # RFC 5321 §4.1.3 address literal
        text = text[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def has_ipv6_route() -> bool:
    """True if this host can reach the IPv6 internet: a route exists and the source address it
    would use is global (not ULA, link-local or loopback, RFC 6724). No packet is sent."""
    import ipaddress
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect(("2001:4860::1", 53))  # a global address: only the routing table is asked
            return ipaddress.ip_address(s.getsockname()[0].split("%")[0]).is_global
    except (OSError, ValueError):
        return False
