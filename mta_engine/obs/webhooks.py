"""Event webhooks: configuration, per-endpoint cursors and the pure delivery bookkeeping.

Contract: accounting events reach webhooks only from the spool outbox, where they were written in
the same transaction as the state change they report. Each configured *webhook* (an HTTP URL, not
an SMTP ``Endpoint``) has a cursor: every ``event_seq`` at or below it was delivered (2xx),
filtered out, or dropped for age. Cursors live in the spool's ``meta`` DB under
``b"webhook_cursor:<name>"``; the manager trims the outbox only up to ``trim_floor``, so an event
stays in the outbox until every webhook is past it, or until it is older than ``retention_s``.
Delivery is at least once: a batch is re-sent until it is acknowledged, and a crash between the
acknowledgement and the cursor write re-sends it. Receivers de-duplicate on ``event_seq``, which
is unique and increasing within one spool.

This module does no network or disk I/O of its own and keeps no clock: ``now`` (epoch seconds)
and ``rng`` come in as arguments. The HTTP driver is ``proc/webhooks.py``. ``cursor_*`` and
``trim_floor`` work inside a caller's LMDB transaction (``Spool.write()``/``Spool.read()``).
Config mistakes raise ``ConfigError`` naming the key.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import orjson

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..spool.store import Spool

__all__ = [
    "EVENT_TYPES", "NO_FLOOR", "WebhookConfig", "WebhookEndpoint", "Cursor", "Batch", "Courier",
    "backoff_delay_s", "cursor_key", "encode_cursor", "decode_cursor", "cursor_get", "cursor_put",
    "cursor_register", "trim_floor", "encode_payload", "signature",
]

EVENT_TYPES = frozenset({"Reception", "Delivery", "Bounce", "TransientFailure", "Expiration", "AdminBounce",
                         "SiteModeChange", "DsnFailed", "OOB", "Feedback"})
"""Accounting record types (KumoMTA names) an endpoint may filter on."""

NO_FLOOR = 2**64 - 1
"""``trim_floor`` when no webhook holds anything back: min() with it is a no-op."""

CURSOR_PREFIX = b"webhook_cursor:"
_CURSOR = struct.Struct(">BQQ")
_CURSOR_VERSION = 1


class _Rng(Protocol):
    def random(self) -> float: ...


# -- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookEndpoint:
    """One ``[[webhooks.endpoint]]`` table, checked."""

    name: str
    """Names the cursor: renaming an endpoint starts it from the oldest event still in the outbox."""
    url: str
    types: frozenset[str] = frozenset()
    """Accounting types sent (empty = all)."""
    tenants: frozenset[str] = frozenset()
    """Tenants whose events are sent (empty = all, including events without a tenant)."""
    batch_max: int = 100
    """Events per POST at most."""
    timeout_s: float = 10.0
    """Whole request (connect, send, response) must finish within this; otherwise it failed."""
    secret: str = ""
    """Non-empty: each POST carries ``X-Mta-Signature: sha256=<HMAC-SHA256(secret, body) hex>``."""

    def __repr__(self) -> str:
        types = ",".join(sorted(self.types)) or "*"
        tenants = ",".join(sorted(self.tenants)) or "*"
        return f"<WebhookEndpoint {self.name} {self.url} types={types} tenants={tenants} batch_max={self.batch_max}>"

    @classmethod
    def from_dict(cls, where: str, raw: dict[str, Any]) -> "WebhookEndpoint":
        known = {"name", "url", "types", "tenants", "batch_max", "timeout_s", "secret"}
        extra = set(raw) - known
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))} (known: {', '.join(sorted(known))})")
        url = raw.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ConfigError(f"{where}.url: expected an http:// or https:// URL, got {url!r}")
        name = raw.get("name", url)
        if not isinstance(name, str) or not name or len(name.encode()) > 200:
            raise ConfigError(f"{where}.name: expected a non-empty string of at most 200 bytes")
        types = _str_set(f"{where}.types", raw.get("types", []))
        unknown = types - EVENT_TYPES
        if unknown:
            raise ConfigError(f"{where}.types: unknown type(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(EVENT_TYPES))})")
        batch_max = raw.get("batch_max", 100)
        if isinstance(batch_max, bool) or not isinstance(batch_max, int) or not 1 <= batch_max <= 10000:
            raise ConfigError(f"{where}.batch_max: expected an integer 1-10000, got {batch_max!r}")
        timeout_s = raw.get("timeout_s", 10.0)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ConfigError(f"{where}.timeout_s: expected a positive number, got {timeout_s!r}")
        secret = raw.get("secret", "")
        if not isinstance(secret, str):
            raise ConfigError(f"{where}.secret: expected a string")
        return cls(name, url, types, _str_set(f"{where}.tenants", raw.get("tenants", [])), batch_max,
                   float(timeout_s), secret)

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether this endpoint receives ``event`` (type and tenant filters)."""
        if self.types and event.get("type") not in self.types:
            return False
        return not self.tenants or event.get("tenant") in self.tenants


def _str_set(where: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings, got {value!r}")
    return frozenset(value)


@dataclass(frozen=True)
class WebhookConfig:
    """The ``[webhooks]`` section (declared like the other sections of ``config.py``)."""

    endpoint: list[dict[str, Any]] = field(default_factory=list)
    """``[[webhooks.endpoint]]`` tables: url (required), name (default: the url), types, tenants,
    batch_max (100), timeout_s (10), secret ("")."""
    retention_s: float = 86400.0
    """An event not delivered to an endpoint within this long is dropped for that endpoint, and a
    cursor not refreshed for this long (the webhook process is gone) stops holding the outbox."""
    min_backoff_s: float = 1.0
    """Delay after the first failed POST; doubles per consecutive failure (jittered)."""
    max_backoff_s: float = 300.0
    """Upper bound of the retry delay, including a server's Retry-After."""
    poll_s: float = 0.5
    """How often an idle endpoint looks for new events in the outbox."""

    def endpoints(self) -> list[WebhookEndpoint]:
        """The checked endpoint list (parsed once); ``ConfigError`` names the offending key."""
        return list(self._endpoints)

    @cached_property
    def _endpoints(self) -> tuple[WebhookEndpoint, ...]:
        out = [WebhookEndpoint.from_dict(f"webhooks.endpoint[{i}]", raw) for i, raw in enumerate(self.endpoint)]
        names = [e.name for e in out]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"webhooks.endpoint: duplicate name(s) {', '.join(sorted(dup))}: give each a `name`")
        return tuple(out)

    def validate(self) -> None:
        """Raise ``ConfigError`` for a bad section (call from ``config._validate``)."""
        self.endpoints()
        if self.retention_s <= 0:
            raise ConfigError("webhooks.retention_s: must be positive")
        if not 0 < self.min_backoff_s <= self.max_backoff_s:
            raise ConfigError("webhooks: need 0 < min_backoff_s <= max_backoff_s")
        if self.poll_s <= 0:
            raise ConfigError("webhooks.poll_s: must be positive")

    @property
    def heartbeat_s(self) -> float:
        """How often a live webhook process rewrites its cursors so they keep holding the outbox."""
        return min(60.0, self.retention_s / 4)


# -- cursors (meta DB) ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int
    """Every ``event_seq`` <= seq is done for this endpoint."""
    updated_ms: int
    """Wall clock of the last write by the webhook process (or of registration)."""


def cursor_key(name: str) -> bytes:
    return CURSOR_PREFIX + name.encode()


def encode_cursor(cursor: Cursor) -> bytes:
    return _CURSOR.pack(_CURSOR_VERSION, cursor.seq, cursor.updated_ms)


def decode_cursor(raw: bytes | None) -> Cursor | None:
    """None for a missing or undecodable record (treated as "not registered")."""
    if raw is None or len(raw) != _CURSOR.size:
        return None
    version, seq, updated_ms = _CURSOR.unpack(raw)
    return Cursor(seq, updated_ms) if version == _CURSOR_VERSION else None


def cursor_get(txn: Any, spool: "Spool", name: str) -> Cursor | None:
    return decode_cursor(txn.get(cursor_key(name), db=spool.dbs["meta"]))


def cursor_put(txn: Any, spool: "Spool", name: str, seq: int, now: float) -> None:
    txn.put(cursor_key(name), encode_cursor(Cursor(seq, int(now * 1000))), db=spool.dbs["meta"])


def cursor_register(txn: Any, spool: "Spool", endpoints: list[WebhookEndpoint], now: float) -> dict[str, int]:
    """Give every endpoint without a cursor one at 0 (everything still in the outbox); needs a
    write transaction. Returns each endpoint's cursor sequence."""
    out = {}
    for ep in endpoints:
        cur = cursor_get(txn, spool, ep.name)
        if cur is None:
            cursor_put(txn, spool, ep.name, 0, now)
            out[ep.name] = 0
        else:
            out[ep.name] = cur.seq
    return out


def trim_floor(txn: Any, spool: "Spool", cfg: WebhookConfig, now: float) -> int:
    """The highest ``event_seq`` the outbox may be trimmed to for webhooks' sake.

    The manager trims to ``min(accounting written, trim_floor(...))``. An endpoint with no cursor
    yet is registered at 0 in this (write) transaction, so events committed before the webhook
    process first starts still reach it. A cursor not rewritten for ``retention_s`` (the webhook
    process is gone) holds nothing back. ``NO_FLOOR`` when no endpoint is configured.
    """
    floor = NO_FLOOR
    stale_ms = int((now - cfg.retention_s) * 1000)
    for ep in cfg.endpoints():
        cur = cursor_get(txn, spool, ep.name)
        if cur is None:
            cursor_put(txn, spool, ep.name, 0, now)
            floor = 0
        elif cur.updated_ms >= stale_ms:
            floor = min(floor, cur.seq)
    return floor


# -- delivery bookkeeping -------------------------------------------------------------------------
def backoff_delay_s(failures: int, min_s: float, max_s: float, rng: _Rng,
                    retry_after_s: float | None = None) -> float:
    """Delay before the next POST after ``failures`` consecutive failures (>= 1).

    Exponential from ``min_s``, capped at ``max_s``, jittered down by up to half so that many
    endpoints failing together do not retry in step; a server's Retry-After is honoured up to
    ``max_s``.
    """
    base = min(max_s, min_s * 2.0 ** min(failures - 1, 62))
    delay = base * (0.5 + 0.5 * rng.random())
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, max_s))
    return delay


@dataclass(slots=True)
class Batch:
    """Events for one POST; delivering it moves the endpoint's cursor to ``upto``."""

    events: list[dict[str, Any]]
    upto: int

    @property
    def first_seq(self) -> int:
        return int(self.events[0]["event_seq"])

    @property
    def last_seq(self) -> int:
        return int(self.events[-1]["event_seq"])

    def __repr__(self) -> str:
        return f"<Batch {self.first_seq}-{self.last_seq} n={len(self.events)} upto={self.upto}>"


class Courier:
    """One endpoint's delivery state: cursor, pending batch, failures, counters. Pure bookkeeping.

    The driver feeds outbox events (``event_seq`` > cursor, in order) to ``offer``, POSTs
    ``pending`` when ``due(now)``, and reports ``on_delivered`` or ``on_failed``.
    """

    def __init__(self, endpoint: WebhookEndpoint, cursor: int, *, retention_s: float,
                 min_backoff_s: float, max_backoff_s: float) -> None:
        self.endpoint = endpoint
        self.cursor = cursor
        self.retention_s = retention_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.pending: Batch | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.delivered = 0
        self.expired = 0
        self.missing = 0
        """Sequence numbers found absent from the outbox (trimmed past retention, or corrupt)."""

    def __repr__(self) -> str:
        return (f"<Courier {self.endpoint.name} cursor={self.cursor} pending={self.pending!r} "
                f"failures={self.failures} delivered={self.delivered} expired={self.expired} missing={self.missing}>")

    def _fresh(self, event: dict[str, Any], now: float) -> bool:
        ts = event.get("timestamp")
        return not isinstance(ts, (int, float)) or ts >= now - self.retention_s

    def offer(self, events: list[dict[str, Any]], now: float) -> int:
        """Consume events from the front of ``events`` into the next batch; returns how many were
        consumed. Events the endpoint does not want, and events older than the retention, move the
        cursor without a POST. Only call when ``pending`` is None."""
        assert self.pending is None, "offer() with a batch still pending"
        take: list[dict[str, Any]] = []
        used = 0
        upto = self.cursor
        for ev in events:
            seq = int(ev["event_seq"])
            if seq <= upto:  # already done (a re-read page)
                used += 1
                continue
            if seq > upto + 1 and upto:
                self.missing += seq - upto - 1
            used += 1
            upto = seq
            if not self.endpoint.wants(ev):
                continue
            if not self._fresh(ev, now):
                self.expired += 1
                continue
            take.append(ev)
            if len(take) >= self.endpoint.batch_max:
                break
        if take:
            self.pending = Batch(take, upto)
        else:
            self.cursor = upto
        return used

    def expire(self, now: float) -> int:
        """Drop pending events that outlived the retention; returns how many were dropped."""
        if self.pending is None:
            return 0
        keep = [ev for ev in self.pending.events if self._fresh(ev, now)]
        dropped = len(self.pending.events) - len(keep)
        if dropped:
            self.expired += dropped
            if keep:
                self.pending.events = keep
            else:
                self.cursor, self.pending = self.pending.upto, None
                self.failures, self.retry_at = 0, 0.0
        return dropped

    def due(self, now: float) -> bool:
        return self.pending is not None and now >= self.retry_at

    def on_delivered(self) -> None:
        assert self.pending is not None
        self.delivered += len(self.pending.events)
        self.cursor, self.pending = self.pending.upto, None
        self.failures, self.retry_at = 0, 0.0

    def on_failed(self, now: float, rng: _Rng, retry_after_s: float | None = None) -> float:
        """Schedule the retry of the pending batch; returns the delay in seconds."""
        self.failures += 1
        delay = backoff_delay_s(self.failures, self.min_backoff_s, self.max_backoff_s, rng, retry_after_s)
        self.retry_at = now + delay
        return delay


def encode_payload(endpoint: WebhookEndpoint, batch: Batch) -> bytes:
    """The POST body: ``{"webhook", "first_seq", "last_seq", "events": [...]}``; None values are
    left out of events, as in the accounting log."""
    return orjson.dumps({
        "webhook": endpoint.name, "first_seq": batch.first_seq, "last_seq": batch.last_seq,
        "events": [{k: v for k, v in ev.items() if v is not None} for ev in batch.events],
    })


def signature(secret: str, body: bytes) -> str:
    """``X-Mta-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
