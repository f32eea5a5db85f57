"""MTA-STS (RFC 8461): policy discovery, fetch, cache and MX matching for outbound delivery.

Contract: answers "which MTA-STS policy applies to this destination domain now?" for the worker,
at most once per job and usually from memory. Two layers:

- pure values and rules, no I/O (unit-tested without sockets): ``parse_txt_records`` (the
  ``_mta-sts`` TXT record, §3.1), ``parse_policy`` (the policy file, §3.2), ``mx_matches`` (§4.1)
  and ``PolicyCache``, whose transitions take ``now`` from the caller;
- ``MtaStsCache``, the async adapter: the TXT lookup goes through the engine's ``Resolver`` (so
  the configured DNS servers answer, and its TTL cache applies) and the policy is fetched from
  ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with aiohttp: no redirects (§3.3), the
  certificate checked against the policy host name (PKIX, RFC 6125), at most 64 KiB, a short
  timeout, ``text/plain`` only, no content coding, no proxies. The policy host's address also
  comes from the engine's ``Resolver``.

It never decides a recipient's fate and never opens SMTP connections: the worker applies the
policy (only matching MX hosts, verified TLS in ``enforce``; log only in ``testing``).
Failure is never fatal and never blocks mail on a domain without a policy beyond one (cached)
TXT lookup: a DNS failure or a failed fetch means "no policy" unless an unexpired policy is
cached, which is then kept (§5.1: a stripped TXT record or a blocked fetch must not downgrade a
known policy; removal is announced by a ``mode: none`` policy, §8.3). Trust level: the TXT
record and the policy file are untrusted input, parsed strictly and bounded in size.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from mta_engine.errors import DnsError, MtaError
from mta_engine.routing.mx import normalize_domain

__all__ = [
    "MAX_AGE_CAP_S",
    "MAX_POLICY_BYTES",
    "CacheEntry",
    "MtaStsCache",
    "PolicyCache",
    "PolicyError",
    "PolicyFetchError",
    "StsPolicy",
    "mx_matches",
    "parse_policy",
    "parse_txt_records",
]

log = structlog.get_logger("mta_sts")

StsMode = Literal["enforce", "testing", "none"]
_MODES: tuple[str, ...] = ("enforce", "testing", "none")

STS_VERSION = "STSv1"  # RFC 8461 §3.1 (TXT "v=") and §3.2 (policy "version:")
MAX_AGE_CAP_S = 31_557_600  # §3.2: max_age is at most 31557600 s (about one year)
MAX_POLICY_BYTES = 64 * 1024  # §3.3: senders may cap the body; 64 KiB is the suggested bound
POLICY_PATH = "/.well-known/mta-sts.txt"  # §3.3
TXT_PREFIX = "_mta-sts."  # §3.1
POLICY_HOST_PREFIX = "mta-sts."  # §3.3

RECHECK_S = 300.0  # re-read the TXT record (cheap: the resolver caches it by TTL) this often
NO_POLICY_S = 600.0  # a domain without a TXT record is asked again after this long
FAILURE_S = 60.0  # after a DNS failure or a failed fetch (with no cached policy to keep)
MAX_ENTRIES = 100_000

_ID = re.compile(r"[A-Za-z0-9]{1,32}")  # §3.1 sts-id
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")  # §3.1 sts-ext-name
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")  # §3.1 sts-ext-value: no "=", ";", SP, CTL
_MAX_AGE = re.compile(r"[0-9]{1,10}")  # §3.2 sts-policy-max-age-value
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")  # §3.2 field names (extensions included)


class PolicyError(ValueError):
    """A TXT record or a policy file is not valid MTA-STS (the domain is treated as having none)."""


class PolicyFetchError(MtaError):
    """The policy could not be fetched over HTTPS (status, type, size, TLS, DNS, timeout)."""


# ---------------------------------------------------------------------------------- pure: parsing


def parse_txt_records(texts: Iterable[str]) -> str | None:
    """The policy ``id`` from the ``_mta-sts`` TXT record texts, or None when there is no policy.

    RFC 8461 §3.1: records whose first field is not ``v=STSv1`` are discarded; if not exactly one
    remains, or it is not valid (``id`` is 1-32 letters and digits; extensions are
    ``name=value``), the domain has no available policy. Each text is one record with its
    strings already joined.
    """
    candidates = [t for t in texts if t.split(";", 1)[0].strip(" \t") == f"v={STS_VERSION}"]
    if len(candidates) != 1:
        return None
    try:
        return _txt_id(candidates[0])
    except PolicyError:
        return None


def _txt_id(text: str) -> str:
    fields = [f.strip(" \t") for f in text.split(";")]
    if fields and fields[-1] == "":  # an optional trailing ";"
        fields.pop()
    policy_id: str | None = None
    for field in fields[1:]:
        name, sep, value = field.partition("=")
        if not sep:
            raise PolicyError(f"TXT field {field!r} is not name=value")
        if name == "id":
            if not _ID.fullmatch(value):
                raise PolicyError(f"TXT id {value!r} is not 1-32 letters and digits")
            if policy_id is None:  # the first id wins
                policy_id = value
        elif not (_EXT_NAME.fullmatch(name) and _EXT_VALUE.fullmatch(value)):
            raise PolicyError(f"TXT field {field!r} is not a valid extension")
    if policy_id is None:
        raise PolicyError("TXT record has no id")
    return policy_id


def _mx_pattern(value: str) -> str:
    """A valid §3.2 mx pattern (``["*."] Domain``) in lower case, or PolicyError."""
    text = value.lower().rstrip(".")
    wildcard = text.startswith("*.")
    base = text[2:] if wildcard else text
    if "*" in base:
        raise PolicyError(f"mx {value!r}: a wildcard may only be the whole left-most label")
    try:
        name = normalize_domain(base)
    except ValueError as exc:
        raise PolicyError(f"mx {value!r}: {exc}") from None
    return f"*.{name}" if wildcard else name


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """One parsed policy file (RFC 8461 §3.2): ``mode``, ``mx`` patterns and ``max_age_s``."""

    mode: StsMode
    mx: tuple[str, ...]
    max_age_s: int

    @property
    def enforces(self) -> bool:
        """True in ``enforce`` mode: only matching MX hosts, only verified TLS (§5)."""
        return self.mode == "enforce"

    def matches(self, host: str) -> bool:
        """True if MX host name ``host`` matches one of the policy's patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_policy(text: str) -> StsPolicy:
    """Parse a policy file (RFC 8461 §3.2) or raise ``PolicyError``.

    Lines end in LF or CRLF; each is ``key: value`` (keys are case-sensitive; blank lines are
    skipped). ``version`` (STSv1), ``mode`` (enforce | testing | none) and ``max_age`` (1-10
    digits, capped at 31557600) are required; for version, mode and max_age the first
    occurrence counts. ``mx`` may repeat and is required unless the mode is ``none``. Unknown
    keys are extensions and ignored.
    """
    version: str | None = None
    mode: str | None = None
    max_age: str | None = None
    mx: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip(" \t"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not _KEY.fullmatch(key):
            raise PolicyError(f"policy line {number}: expected 'key: value', got {line[:80]!r}")
        value = value.strip(" \t")
        if key == "version" and version is None:
            version = value
        elif key == "mode" and mode is None:
            mode = value
        elif key == "max_age" and max_age is None:
            max_age = value
        elif key == "mx":
            mx.append(_mx_pattern(value))
    if version != STS_VERSION:
        raise PolicyError(f"policy version is {version!r}, expected {STS_VERSION!r}")
    if mode not in _MODES:
        raise PolicyError(f"policy mode is {mode!r}, expected one of {', '.join(_MODES)}")
    if max_age is None or not _MAX_AGE.fullmatch(max_age):
        raise PolicyError(f"policy max_age is {max_age!r}, expected 1-10 digits")
    if not mx and mode != "none":
        raise PolicyError(f"a {mode} policy needs at least one mx pattern")
    return StsPolicy(mode, tuple(dict.fromkeys(mx)), min(int(max_age), MAX_AGE_CAP_S))  # type: ignore[arg-type]


def mx_matches(pattern: str, host: str) -> bool:
    """True if MX host ``host`` matches policy ``pattern`` (RFC 8461 §4.1, RFC 6125 §6.4.3).

    Case-insensitive, trailing dots ignored. ``*.example.net`` matches exactly one whole
    left-most label: ``mail.example.net``, not ``example.net`` nor ``a.mail.example.net``.
    """
    name = host.lower().rstrip(".")
    pat = pattern.lower().rstrip(".")
    if pat.startswith("*."):
        label, dot, rest = name.partition(".")
        return bool(label) and bool(dot) and rest == pat[2:]
    return name == pat


# ---------------------------------------------------------------------------------- pure: cache


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What is known about one domain: the cached policy (if any) and when to look again.

    ``expires_at`` ends the policy (fetch time + max_age); ``check_at`` is when the TXT record
    is read again. Both are on the cache's clock (monotonic seconds).
    """

    policy_id: str | None
    policy: StsPolicy | None
    expires_at: float
    check_at: float

    def active(self, now: float) -> StsPolicy | None:
        """The policy to apply at ``now``: unexpired and not ``mode: none``; else None."""
        if self.policy is None or now >= self.expires_at or self.policy.mode == "none":
            return None
        return self.policy

    def cached(self, now: float) -> StsPolicy | None:
        """The unexpired cached policy (any mode), else None."""
        return self.policy if self.policy is not None and now < self.expires_at else None


class PolicyCache:
    """Per-domain policy state with expiry; every transition takes ``now`` (no clock, no I/O).

    A domain is looked at again (its TXT record) at ``check_at``. A policy is fetched when the
    record's id differs from the cached policy's, when there is no unexpired policy, or when
    the cached one expires within ``recheck_s`` (refreshed before it lapses). A failed fetch or
    a missing record keeps an unexpired policy (RFC 8461 §5.1, §8.3).
    """

    def __init__(self, *, recheck_s: float = RECHECK_S, no_policy_s: float = NO_POLICY_S,
                 failure_s: float = FAILURE_S, max_entries: int = MAX_ENTRIES) -> None:
        self.recheck_s = recheck_s
        self.no_policy_s = no_policy_s
        self.failure_s = failure_s
        self.max_entries = max_entries
        self._entries: dict[str, CacheEntry] = {}

    def __repr__(self) -> str:
        policies = sum(1 for e in self._entries.values() if e.policy is not None)
        return f"<PolicyCache domains={len(self._entries)} policies={policies}>"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, domain: str) -> CacheEntry | None:
        """The entry for ``domain`` (possibly due for a check), or None."""
        return self._entries.get(domain)

    def due(self, domain: str, now: float) -> bool:
        """True if ``domain``'s TXT record must be read (again) before answering."""
        entry = self._entries.get(domain)
        return entry is None or now >= entry.check_at

    def needs_fetch(self, domain: str, txt_id: str | None, now: float) -> bool:
        """True if the record with ``txt_id`` (None: no valid record) calls for a fetch."""
        if txt_id is None:
            return False
        entry = self._entries.get(domain)
        if entry is None or entry.cached(now) is None or entry.policy_id != txt_id:
            return True
        return entry.expires_at - now <= self.recheck_s

    def checked(self, domain: str, txt_id: str | None, now: float, *, dns_failed: bool = False) -> CacheEntry:
        """The record was read and no fetch is needed: no record, a DNS failure, or the same id."""
        entry = self._entries.get(domain)
        policy = entry.cached(now) if entry is not None else None
        if policy is None or entry is None:
            wait = self.failure_s if dns_failed else self.no_policy_s
            return self._put(domain, CacheEntry(None, None, now, now + wait))
        if txt_id is None:  # a missing record never ends a cached policy early (§8.3)
            wait = self.failure_s if dns_failed else self.recheck_s
        else:
            wait = self.recheck_s
        return self._put(domain, CacheEntry(entry.policy_id, policy, entry.expires_at,
                                            min(now + wait, entry.expires_at)))

    def fetched(self, domain: str, txt_id: str, policy: StsPolicy, now: float) -> CacheEntry:
        """A policy was fetched for record ``txt_id``: it holds for its max_age from now."""
        expires_at = now + policy.max_age_s
        return self._put(domain, CacheEntry(txt_id, policy, expires_at, min(now + self.recheck_s, expires_at)))

    def fetch_failed(self, domain: str, now: float) -> CacheEntry:
        """A fetch failed: keep an unexpired policy (§5.1), else no policy; try again soon."""
        entry = self._entries.get(domain)
        policy = entry.cached(now) if entry is not None else None
        if policy is None or entry is None:
            return self._put(domain, CacheEntry(None, None, now, now + self.failure_s))
        return self._put(domain, CacheEntry(entry.policy_id, policy, entry.expires_at,
                                            min(now + self.failure_s, entry.expires_at)))

    def _put(self, domain: str, entry: CacheEntry) -> CacheEntry:
        self._entries.pop(domain, None)
        while self._entries and len(self._entries) >= self.max_entries:  # FIFO, like the resolver
            self._entries.pop(next(iter(self._entries)))
        self._entries[domain] = entry
        return entry


# ---------------------------------------------------------------------------------- I/O adapter


class MtaStsCache:
    """The policy for a destination domain, from memory or via DNS + HTTPS; see the module doc.

    ``policy(domain)`` returns the ``StsPolicy`` to apply (``enforce`` or ``testing``) or None.
    Concurrent calls for one domain share one lookup. A domain with an unexpired policy never
    waits: its periodic TXT check (and any refetch) runs behind the cached answer. ``close()``
    releases the HTTP client.
    """

    def __init__(self, resolver: Any, *, ca_file: str | None = None, port: int = 443,
                 fetch_timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 cache: PolicyCache | None = None) -> None:
        self.resolver = resolver  # mta_engine.routing.resolver.Resolver (resolve_txt, resolve_addresses)
        self.ca_file = ca_file
        self.port = port
        self.fetch_timeout_s = fetch_timeout_s
        self.cache = cache or PolicyCache()
        self.fetches = 0  # HTTPS fetches started (for tests and repr)
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[StsPolicy | None]] = {}
        self._http: Any = None  # aiohttp.ClientSession, made on first use (inside the loop)

    def __repr__(self) -> str:
        return (f"<MtaStsCache port={self.port} cache={self.cache!r} fetches={self.fetches} "
                f"inflight={len(self._inflight)}>")

    async def policy(self, domain: str) -> StsPolicy | None:
        """The policy to apply to mail for ``domain`` now, or None (no policy, ``none``, expired)."""
        try:
            name = normalize_domain(domain)
        except ValueError:
            return None
        now = self._clock()
        entry = self.cache.get(name)
        if entry is not None and now < entry.check_at:
            return entry.active(now)  # the common case: no I/O at all
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(self._refresh(name))
            self._inflight[name] = task
            task.add_done_callback(functools.partial(self._on_done, name))
        if entry is not None and entry.cached(now) is not None:
            return entry.active(now)  # an unexpired policy holds while the refresh runs (no stall)
        # shield: a cancelled job must not cancel the lookup other jobs share.
        return await asyncio.shield(task)

    async def settle(self) -> None:
        """Wait for the lookups in flight (refreshes behind a cached policy included)."""
        while self._inflight:
            await asyncio.wait(list(self._inflight.values()))

    def _on_done(self, name: str, task: asyncio.Future[StsPolicy | None]) -> None:
        self._inflight.pop(name, None)
        if not task.cancelled():
            task.exception()  # mark retrieved even if every waiter was cancelled

    async def _refresh(self, name: str) -> StsPolicy | None:
        dns_failed = False
        try:
            txt_id = parse_txt_records(await self.resolver.resolve_txt(TXT_PREFIX + name))
        except DnsError as exc:
            txt_id, dns_failed = None, True
            log.info("mta_sts_txt_lookup_failed", domain=name, error=str(exc))
        now = self._clock()
        if not self.cache.needs_fetch(name, txt_id, now):
            return self.cache.checked(name, txt_id, now, dns_failed=dns_failed).active(now)
        assert txt_id is not None
        try:
            policy = parse_policy(await self.fetch(name))
        except Exception as exc:  # PolicyFetchError, PolicyError; anything else is a bug, but never
            if not isinstance(exc, (PolicyFetchError, PolicyError)):  # one that stops this domain's mail
                log.exception("mta_sts_fetch_bug", domain=name)
            now = self._clock()
            entry = self.cache.fetch_failed(name, now)
            log.warning("mta_sts_policy_fetch_failed", domain=name, policy_id=txt_id, error=str(exc),
                        kept_cached=entry.policy is not None)
            return entry.active(now)
        now = self._clock()
        log.info("mta_sts_policy_fetched", domain=name, policy_id=txt_id, mode=policy.mode,
                 mx=list(policy.mx), max_age_s=policy.max_age_s)
        return self.cache.fetched(name, txt_id, policy, now).active(now)

    # -- HTTPS -----------------------------------------------------------------------------------
    def policy_url(self, domain: str) -> str:
        """``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (with ``:port`` when not 443)."""
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://{POLICY_HOST_PREFIX}{domain}{port}{POLICY_PATH}"

    async def fetch(self, domain: str) -> str:
        """The policy file's text for ``domain``, or ``PolicyFetchError`` (RFC 8461 §3.3)."""
        import aiohttp

        self.fetches += 1
        url = self.policy_url(domain)
        closed: asyncio.Future[None] | None = None
        try:
            async with self._client().get(url, allow_redirects=False, headers={"Accept-Encoding": "identity"},
                                          timeout=aiohttp.ClientTimeout(total=self.fetch_timeout_s)) as resp:
                conn = resp.connection  # captured now: reading the body to its end releases it
                closed = conn.protocol.closed if conn is not None and conn.protocol is not None else None
                transport = conn.transport if conn is not None else None
                try:
                    body = await _read_policy(url, resp)
                finally:
                    if transport is not None:
                        # One request per connection: drop it now, without the TLS close_notify
                        # exchange (aiohttp's own default when a connector closes).
                        transport.abort()
        except PolicyFetchError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise PolicyFetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        finally:
            if closed is not None:  # the socket is really gone before we return (bounded wait)
                await asyncio.wait([closed], timeout=1.0)
                if closed.done() and not closed.cancelled():
                    closed.exception()  # retrieved: an aborted connection may report an error
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyFetchError(f"{url}: policy is not UTF-8") from exc

    def _client(self) -> Any:
        import aiohttp

        if self._http is None:
            connector = aiohttp.TCPConnector(resolver=_resolver_adapter(self.resolver),
                                             ssl=_https_context(self.ca_file), use_dns_cache=False,
                                             force_close=True, limit=16)
            self._http = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False,
                                               headers={"User-Agent": "mta-engine MTA-STS"})
        return self._http

    async def close(self) -> None:
        """Cancel lookups in flight and close the HTTP client (idempotent)."""
        for task in list(self._inflight.values()):
            task.cancel()
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=5)
        if self._http is not None:
            await self._http.close()
            self._http = None


async def _read_policy(url: str, resp: Any) -> bytearray:
    """The body of a policy response: 200, text/plain, no content coding, at most 64 KiB (§3.3)."""
    if resp.status != 200:  # §3.3: a redirect is not followed; anything but 200 fails
        raise PolicyFetchError(f"{url}: HTTP {resp.status}")
    if resp.content_type != "text/plain":
        raise PolicyFetchError(f"{url}: content type {resp.content_type!r}, expected text/plain")
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise PolicyFetchError(f"{url}: content coding {resp.headers['Content-Encoding']!r}")
    if (resp.content_length or 0) > MAX_POLICY_BYTES:
        raise PolicyFetchError(f"{url}: {resp.content_length} bytes, limit {MAX_POLICY_BYTES}")
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyFetchError(f"{url}: body over {MAX_POLICY_BYTES} bytes")
    return body


@functools.lru_cache(maxsize=4)
def _https_context(ca_file: str | None) -> ssl.SSLContext:
    """PKIX + host name check (the default context) on the system store, plus ``ca_file``."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996
    return ctx


def _resolver_adapter(resolver: Any) -> Any:
    """An ``aiohttp.abc.AbstractResolver`` over the engine's ``Resolver`` (its DNS servers, its
    cache), so the policy host is found the way MX hosts are. aiohttp is imported only here and in
    ``fetch``: a worker pays for it only once a domain publishes a policy."""
    from aiohttp.abc import AbstractResolver, ResolveResult

    class EngineResolver(AbstractResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
            try:
                addrs = await resolver.resolve_addresses(host)
            except DnsError as exc:  # aiohttp turns an OSError here into ClientConnectorDNSError
                raise OSError(f"{host}: {exc}") from exc
            out: list[ResolveResult] = []
            for addr in addrs:
                fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                if family in (socket.AF_UNSPEC, fam):
                    out.append(ResolveResult(hostname=host, host=addr, port=port, family=fam, proto=0,
                                             flags=socket.AI_NUMERICHOST))
            if not out:
                raise OSError(f"{host}: no usable address")
            return out

        async def close(self) -> None:
            return None

    return EngineResolver()
