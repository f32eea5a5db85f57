"""Which MX hosts have DANE (RFC 7672 §2.2): authenticated TLSA lookups, cached by TTL.

Contract: ``DaneLookup.lookup(host)`` says, for one MX host, whether DANE applies and with which
records. It asks the configured resolver (``routing/resolver.py``, queries with DO and AD) and
trusts its AD bit, like Postfix's ``smtp_dns_support_level = dnssec``: the resolver must validate
and be reached over a trusted path (on this host). It never opens SMTP connections, never logs,
and never looks at certificates (``delivery/dane.py`` does). Steps, per host:

1. the host's A records, with AD: an insecure (unsigned) answer means no DANE, and no TLSA
   query at all (RFC 7672 §2.2.2), so a resolver that does not validate never sets AD and
   DANE stays off, whatever is published;
2. ``_<port>._tcp.<name>`` TLSA, first at the CNAME-expanded name when the host name is a
   secure alias, then at the host name itself (§2.2.2); NXDOMAIN, NODATA or an insecure answer
   = no DANE; a secure RRset whose records are all unusable (PKIX-TA/EE, unknown parameters;
   §3.1.3) still says the server does TLS: a target with no records, TLS required but not
   authenticated (Postfix's "encrypt" in that case; no downgrade to plaintext);
3. a failed lookup (SERVFAIL, which is how a validating resolver answers bogus data, or a
   timeout) raises a transient ``DnsError`` (4.7.5): the host must not be used (§2.1: bogus or
   indeterminate answers are never a reason to send in plaintext or unauthenticated).

Simplification: the MX RRset itself is not required to be secure (§2.2.1 allows DANE for MX
hosts found through an insecure MX lookup, so domains hosted at a DANE provider benefit); the
manager resolves MX and does not carry the AD bit to workers.

Caching: one entry per host, for the smallest TTL of the answers used (clamped to [1 s, 1 day]),
a negative answer for its negative TTL, a failure for ``failure_ttl_s``. Concurrent lookups
of one host share one query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from mta_engine.delivery.dane import TlsaRecord, usable
from mta_engine.errors import DnsError
from mta_engine.routing.resolver import Resolver

__all__ = ["DaneLookup", "DaneTarget"]

ENHANCED_DANE_LOOKUP = "4.7.5"  # RFC 3463: cryptographic failure (no trusted TLSA verdict)
MAX_TTL_S = 86_400.0
MIN_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class DaneTarget:
    """DANE applies to an MX host: its usable TLSA records and the names a DANE-TA certificate
    may carry (the TLSA base domain first, then the MX host name; RFC 7672 §3.2.2). No records:
    the host published only unusable ones, so TLS is required but cannot be authenticated."""

    records: tuple[TlsaRecord, ...]
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    expires_at: float
    target: DaneTarget | None
    error: DnsError | None = None


class DaneLookup:
    """Per-host DANE verdicts over a ``Resolver``; see the module docstring."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        port: int = 25,
        clock: Callable[[], float] = time.monotonic,
        failure_ttl_s: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self._resolver = resolver
        resolver.authenticated_a = True  # the connect path's A query carries the AD bit we need
        self._port = port
        self._clock = clock
        self._failure_ttl_s = failure_ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}

    def __repr__(self) -> str:
        return f"<DaneLookup port={self._port} cached={len(self._cache)} inflight={len(self._inflight)}>"

    async def lookup(self, host: str) -> DaneTarget | None:
        """The DANE target for MX ``host``, or None (no DANE: opportunistic TLS as before).

        Raises ``DnsError`` (transient, 4.7.5) when DANE may apply but the DNS could not say.
        """
        name = host.strip().lower().rstrip(".")
        entry = self._cache.get(name)
        if entry is None or entry.expires_at <= self._clock():
            future = self._inflight.get(name)
            if future is None:
                future = asyncio.ensure_future(self._fill(name))
                self._inflight[name] = future
                future.add_done_callback(lambda f, n=name: self._done(n, f))
            entry = await asyncio.shield(future)  # a cancelled caller must not cancel the shared query
        if entry.error is not None:
            err = DnsError(str(entry.error), permanent=False, enhanced=entry.error.enhanced)
            err.__cause__ = entry.error.__cause__
            raise err
        return entry.target

    def _done(self, name: str, future: asyncio.Future[_Entry]) -> None:
        self._inflight.pop(name, None)
        if not future.cancelled():
            future.exception()  # retrieved even if every waiter went away

    async def _fill(self, name: str) -> _Entry:
        try:
            target, ttl_s = await self._resolve(name)
            entry = _Entry(self._clock() + min(max(ttl_s, MIN_TTL_S), MAX_TTL_S), target)
        except DnsError as exc:
            err = DnsError(f"DANE TLSA lookup for {name}: {exc}", permanent=False, enhanced=ENHANCED_DANE_LOOKUP)
            err.__cause__ = exc
            entry = _Entry(self._clock() + self._failure_ttl_s, None, err)
        self._cache.pop(name, None)
        while self._cache and len(self._cache) >= self._max_entries:
            self._cache.pop(next(iter(self._cache)))  # FIFO eviction, like the resolver's caches
        self._cache[name] = entry
        return entry

    async def _resolve(self, name: str) -> tuple[DaneTarget | None, float]:
        """(target or None, TTL) for ``name``; DnsError passes through."""
        address = await self._resolver.take_authenticated_a(name)
        if not address.authenticated:  # RFC 7672 §2.2.2: insecure address records, no TLSA lookup
            return None, address.ttl_s
        ttl_s = address.ttl_s
        bases = [name]
        if address.canonical and address.canonical != name:
            bases.insert(0, address.canonical)  # §2.2.2: the expanded name first, then the MX host
        for base in bases:
            tlsa = await self._resolver.resolve_tlsa(f"_{self._port}._tcp.{base}")
            ttl_s = min(ttl_s, tlsa.ttl_s)
            if not tlsa.authenticated or not tlsa.records:
                continue
            records = usable([TlsaRecord(*r) for r in tlsa.records])  # () = TLS, unauthenticated
            return DaneTarget(records, tuple(dict.fromkeys((base, name)))), ttl_s
        return None, ttl_s
