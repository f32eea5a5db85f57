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

Each override has exactly one selector and any limit keys; keys it does not name keep the value
from the less specific layers. Precedence, least to most specific: defaults < pattern < site <
domain; among overrides of the same kind, later ones win. Bad data raises ``ConfigError``
naming the override and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from ..errors import ConfigError

__all__ = ["LimitTable", "SiteLimits"]

SELECTORS = ("domain", "site", "pattern")
"""Override kinds, most specific first."""


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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
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
    values: tuple[str, ...]
    limits: Mapping[str, Any]
    index: int


def _norm_host(name: str) -> str:
    return name.strip().lower().rstrip(".")


class LimitTable:
    """Resolves the limits of one site from defaults and ``[[sched.site]]`` overrides."""

    __slots__ = ("defaults", "_overrides")

    def __init__(self, defaults: SiteLimits | None = None, overrides: Sequence[Mapping[str, Any]] = ()) -> None:
        self.defaults = defaults if defaults is not None else SiteLimits()
        self._overrides: list[_Override] = [self._parse(i, o) for i, o in enumerate(overrides)]

    def _parse(self, index: int, data: Mapping[str, Any]) -> _Override:
        where = f"sched.site[{index}]"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a table")
        kinds = [k for k in SELECTORS if k in data]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: needs exactly one of {', '.join(SELECTORS)} (got {kinds or 'none'})")
        kind = kinds[0]
        raw = data[kind]
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise ConfigError(f"{where}: {kind}: expected a non-empty string or list of strings")
        limits = {k: v for k, v in data.items() if k != kind}
        try:
            self.defaults.updated(limits)  # validate now, so a bad override fails at load time
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where} ({kind} = {raw!r}): {exc}") from None
        norm = tuple(_norm_host(v) for v in values)
        return _Override(kind, norm, limits, index)

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

    def matching(self, site: str, domains: Iterable[str], mx_hosts: Iterable[str]) -> list[_Override]:
        """The overrides that apply, in the order they are layered (least specific first)."""
        site_n = _norm_host(site)
        domain_set = {_norm_host(d) for d in domains}
        hosts = [_norm_host(h) for h in mx_hosts] + [site_n]
        found: dict[str, list[_Override]] = {k: [] for k in SELECTORS}
        for o in self._overrides:
            if o.kind == "domain":
                hit = any(v in domain_set for v in o.values)
            elif o.kind == "site":
                hit = site_n in o.values
            else:
                hit = any(fnmatchcase(h, v) for v in o.values for h in hosts)
            if hit:
                found[o.kind].append(o)
        return [o for kind in reversed(SELECTORS) for o in found[kind]]

    def for_site(self, site: str, domains: Iterable[str], mx_hosts: Iterable[str]) -> SiteLimits:
        """Defaults, then pattern, site and domain overrides (later of one kind over earlier)."""
        merged: dict[str, Any] = {}
        for o in self.matching(site, domains, mx_hosts):
            merged.update(o.limits)
        return self.defaults.updated(merged) if merged else self.defaults

    def __len__(self) -> int:
        return len(self._overrides)

    def __repr__(self) -> str:
        counts = {k: sum(o.kind == k for o in self._overrides) for k in SELECTORS}
        return f"<LimitTable overrides={len(self._overrides)} {counts} defaults={self.defaults}>"
