"""Per-site limits: defaults plus overrides selected by domain, site key or MX host pattern.

Contract: pure data resolution, no I/O. The config shape (parsed TOML, handed in as plain data)::

    [sched.defaults]                # optional; the built-in SiteLimits defaults otherwise
    max_connections = 20

    [[sched.site]]
    domain = "gmail.com"            # or a list of domains
    messages_per_minute = 600

    [[sched.site]]
    site = "mx1.example.net,mx2.example.net"    # a site key (routing.mx.site_key)
    max_connections = 5

    [[sched.site]]
    pattern = "*.yahoodns.net"      # fnmatch on any MX host name or on the site key
    new_connections_per_minute = 30

    [[sched.site]]
    domain = "gmail.com"
    source = "192.0.2.10"           # only this egress source's lane (a string or a list)
    messages_per_minute = 60        # e.g. an IP still warming up

Each override has exactly one selector and any limit keys; keys it does not name keep the value
from the less specific layers. Precedence, least to most specific: defaults < pattern < site <
domain; among overrides of the same kind, later ones win. Bad data raises ``ConfigError``
naming the override and the key.

Egress sources (``[delivery] sources``): the limits hold per (site, source) *lane*, as providers
count per sending IP (PowerMTA's per-virtual-MTA domain queues, KumoMTA's egress paths). An
override may name ``source`` (IP addresses) as well as, or instead of, a selector: it then applies
only to those sources' lanes, and sits just above the same layer without ``source`` (a
``source``-only override sits just above the defaults). Source overrides may set only the keys of
a lane (``LANE_KEYS``); what is decided before a lane is chosen (recipients per transaction, max
age) is per site.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from ..errors import ConfigError

__all__ = ["LANE_KEYS", "LimitTable", "SiteLimits"]

SELECTORS = ("domain", "site", "pattern")
"""Override kinds, most specific first."""
SOURCE = "source"
"""The qualifier that narrows an override to some egress sources' lanes."""
LANE_KEYS = frozenset({"max_connections", "max_messages_per_connection", "messages_per_minute",
                       "messages_per_hour", "new_connections_per_minute", "initial_connections", "shared"})
"""Limit keys a ``source`` override may set: those of one (site, source) lane."""


@dataclass(frozen=True)
class SiteLimits:
    """What one site may get. Rates are per minute/hour; 0 means unlimited."""

    max_connections: int = 20
    max_messages_per_connection: int = 100
    max_recipients_per_transaction: int = 100
    """RFC 5321 §4.5.3.1.8: servers must accept at least 100 recipients per transaction."""
    messages_per_minute: float = 0.0
    messages_per_hour: float = 0.0
    new_connections_per_minute: float = 0.0
    initial_connections: int = 2
    """Slow start begins with this many concurrent sessions."""
    max_age_s: float = 5 * 86400.0
    """Give up on a recipient this long after it was queued (RFC 5321 §4.5.4.1: 4-5 days)."""
    shared: bool = False
    """The message rates are fleet-wide: every engine instance takes them from one shared bucket
    (``[redis]``); per (site, source) lane when sources are configured."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise ValueError(f"{f.name}: expected true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{f.name}: expected a number, got {v!r}")
            if f.type in ("int", int) and not isinstance(v, int):
                if float(v).is_integer():
                    object.__setattr__(self, f.name, int(v))
                else:
                    raise ValueError(f"{f.name}: expected an integer, got {v!r}")
            elif f.type in ("float", float):
                object.__setattr__(self, f.name, float(v))
        for name in ("max_connections", "max_messages_per_connection", "max_recipients_per_transaction",
                     "initial_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        for name in ("messages_per_minute", "messages_per_hour", "new_connections_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0 (0 = unlimited), got {getattr(self, name)!r}")
        if not self.max_age_s > 0:
            raise ValueError(f"max_age_s: must be positive, got {self.max_age_s!r}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def shared_rate_per_s(self) -> float:
        """The rate a shared bucket enforces: the tighter of the minute and hour rates (0 = none)."""
        rates = [r for r in (self.messages_per_minute / 60.0, self.messages_per_hour / 3600.0) if r > 0]
        return min(rates) if rates else 0.0

    def updated(self, data: Mapping[str, Any]) -> SiteLimits:
        """These limits with the keys in ``data`` replaced; ``ValueError`` on unknown keys or bad values."""
        unknown = set(data) - set(self.keys())
        if unknown:
            raise ValueError(f"unknown limit keys {sorted(unknown)} (known: {', '.join(self.keys())})")
        return dataclasses.replace(self, **dict(data))

    @classmethod
    def from_config(cls, delivery: Any = None, queue: Any = None) -> SiteLimits:
        """Defaults taken from the existing ``[delivery]`` and ``[queue]`` config objects (or mappings)."""
        def get(obj: Any, key: str, default: Any) -> Any:
            if obj is None:
                return default
            if isinstance(obj, Mapping):
                return obj.get(key, default)
            return getattr(obj, key, default)
        d = cls()
        return cls(
            max_connections=get(delivery, "max_connections_per_site", d.max_connections),
            max_messages_per_connection=get(delivery, "max_messages_per_connection", d.max_messages_per_connection),
            max_recipients_per_transaction=get(delivery, "max_recipients_per_transaction",
                                               d.max_recipients_per_transaction),
            max_age_s=get(queue, "max_age_s", d.max_age_s),
        )


@dataclass(frozen=True)
class _Override:
    kind: str
    """A selector, or ``"source"`` for an override with no selector (every site)."""
    values: tuple[str, ...]
    limits: Mapping[str, Any]
    index: int
    sources: frozenset[str] | None = None
    """Only these egress sources' lanes (normalised IP text); None = every lane."""

    @property
    def layer(self) -> int:
        """Precedence, least specific first: source-only, pattern, pattern+source, ..., domain+source."""
        if self.kind == SOURCE:
            return 0
        return 1 + 2 * (len(SELECTORS) - 1 - SELECTORS.index(self.kind)) + (self.sources is not None)


def _norm_ip(text: str) -> str:
    return str(ipaddress.ip_address(text.strip()))


def _norm_host(name: str) -> str:
    return name.strip().lower().rstrip(".")


class LimitTable:
    """Resolves the limits of one site from defaults and ``[[sched.site]]`` overrides."""

    __slots__ = ("defaults", "_overrides")

    def __init__(self, defaults: SiteLimits | None = None, overrides: Sequence[Mapping[str, Any]] = ()) -> None:
        self.defaults = defaults if defaults is not None else SiteLimits()
        self._overrides: list[_Override] = [self._parse(i, o) for i, o in enumerate(overrides)]

    @staticmethod
    def _strings(where: str, key: str, raw: Any) -> list[str]:
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise ConfigError(f"{where}: {key}: expected a non-empty string or list of strings")
        return values

    def _parse(self, index: int, data: Mapping[str, Any]) -> _Override:
        where = f"sched.site[{index}]"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a table")
        kinds = [k for k in SELECTORS if k in data]
        if len(kinds) > 1 or (not kinds and SOURCE not in data):
            raise ConfigError(f"{where}: needs exactly one of {', '.join(SELECTORS)} (got {kinds or 'none'})"
                              f" or a {SOURCE}")
        sources = None
        if SOURCE in data:
            try:
                sources = frozenset(_norm_ip(v) for v in self._strings(where, SOURCE, data[SOURCE]))
            except ValueError as exc:
                raise ConfigError(f"{where}: {SOURCE}: expected IP addresses ({exc})") from None
        kind = kinds[0] if kinds else SOURCE
        raw = data[kind]
        values = self._strings(where, kind, raw)
        limits = {k: v for k, v in data.items() if k not in (kind, SOURCE)}
        try:
            self.defaults.updated(limits)  # validate now, so a bad override fails at load time
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where} ({kind} = {raw!r}): {exc}") from None
        if sources is not None and set(limits) - LANE_KEYS:
            raise ConfigError(f"{where}: {sorted(set(limits) - LANE_KEYS)} cannot be set per {SOURCE}"
                              f" (per source: {', '.join(sorted(LANE_KEYS))})")
        norm = tuple(_norm_host(v) for v in values) if kind != SOURCE else tuple(sorted(sources or ()))
        return _Override(kind, norm, limits, index, sources)

    @classmethod
    def from_config(cls, sched: Mapping[str, Any] | None, defaults: SiteLimits | None = None) -> LimitTable:
        """From the ``[sched]`` table: optional ``defaults`` table (over ``defaults``) and ``site`` list."""
        sched = sched or {}
        base = defaults if defaults is not None else SiteLimits()
        table = sched.get("defaults", {})
        if not isinstance(table, Mapping):
            raise ConfigError("sched.defaults: must be a table")
        try:
            base = base.updated(table)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"sched.defaults: {exc}") from None
        sites = sched.get("site", [])
        if not isinstance(sites, list):
            raise ConfigError("sched.site: must be an array of tables ([[sched.site]])")
        return cls(base, sites)

    def matching(self, site: str, domains: Iterable[str], mx_hosts: Iterable[str],
                 source: str | None = None) -> list[_Override]:
        """The overrides that apply, in the order they are layered (least specific first).

        ``source`` is the lane's egress source IP; None (no sources configured, or the site as a
        whole) matches only overrides without ``source``.
        """
        site_n = _norm_host(site)
        domain_set = {_norm_host(d) for d in domains}
        hosts = [_norm_host(h) for h in mx_hosts] + [site_n]
        src = _norm_ip(source) if source is not None else None
        found: list[_Override] = []
        for o in self._overrides:
            if o.sources is not None and src not in o.sources:
                continue
            if o.kind == SOURCE:
                hit = True
            elif o.kind == "domain":
                hit = any(v in domain_set for v in o.values)
            elif o.kind == "site":
                hit = site_n in o.values
            else:
                hit = any(fnmatchcase(h, v) for v in o.values for h in hosts)
            if hit:
                found.append(o)
        found.sort(key=lambda o: o.layer)  # stable: config order within a layer
        return found

    def for_site(self, site: str, domains: Iterable[str], mx_hosts: Iterable[str],
                 source: str | None = None) -> SiteLimits:
        """Defaults, then pattern, site and domain overrides (later of one kind over earlier);
        with ``source``, the overrides for that egress source too (see the module docstring)."""
        merged: dict[str, Any] = {}
        for o in self.matching(site, domains, mx_hosts, source):
            merged.update(o.limits)
        return self.defaults.updated(merged) if merged else self.defaults

    def sources(self) -> set[str]:
        """Every egress source some override names (to check them against ``[delivery] sources``)."""
        return {s for o in self._overrides if o.sources is not None for s in o.sources}

    def any_shared(self) -> bool:
        """Whether the defaults or any override asks for a fleet-wide (shared) rate."""
        return self.defaults.shared or any(o.limits.get("shared") is True for o in self._overrides)

    def __len__(self) -> int:
        return len(self._overrides)

    def __repr__(self) -> str:
        counts = {k: sum(o.kind == k for o in self._overrides) for k in SELECTORS}
        return f"<LimitTable overrides={len(self._overrides)} {counts} defaults={self.defaults}>"
