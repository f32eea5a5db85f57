"""MX values and rules: ordering, null MX, site keys and domain normalisation.

Contract: pure functions over frozen values. No I/O, no clock, no global randomness (callers
pass a ``random.Random``), and no DNS library import: the resolver adapter converts records
into ``MxHost`` values before anything here sees them. Invalid input raises ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rng is passed in; this module never draws randomness itself
    import random

__all__ = ["MxHost", "MxPlan", "below_self", "is_null_mx", "normalize_domain", "order_mx", "site_key"]

# RFC 1035 §2.3.4: 63 octets per label, 255 octets per name on the wire (253 in text form).
_MAX_LABEL_OCTETS = 63
_MAX_NAME_OCTETS = 253
# RFC 5321 §4.1.2 sub-domain: Let-dig [Ldh-str]; letters, digits and inner hyphens only.
_SUB_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


@dataclass(frozen=True, slots=True, order=True)
class MxHost:
    """One MX record: ``preference`` (lower is tried first) and the exchange ``name``.

    Values order by (preference, name): the canonical order of ``MxPlan.hosts``.
    """

    preference: int
    name: str


@dataclass(frozen=True, slots=True)
class MxPlan:
    """The routing answer for one destination.

    ``hosts`` is in canonical order (preference, then name); shuffle per attempt with
    ``order_mx``. ``implicit`` means no MX existed and the domain itself stands in at
    preference 0 (RFC 5321 §5.1). ``site`` groups destinations sharing one MX farm.
    ``ttl_s`` is the smallest TTL of the answer that produced the plan.
    """

    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool
    site: str
    ttl_s: float


def _exchange(name: str) -> str:
    return name.lower().rstrip(".")


def order_mx(hosts: Iterable[MxHost], rng: random.Random) -> list[MxHost]:
    """Return ``hosts`` by ascending preference, each equal-preference group shuffled by ``rng``.

    RFC 5321 §5.1: try lower preference first; randomise among equal preferences to spread load.
    """
    by_pref = sorted(hosts, key=lambda h: (h.preference, _exchange(h.name)))
    ordered: list[MxHost] = []
    for _, group in groupby(by_pref, key=lambda h: h.preference):
        tier = list(group)
        rng.shuffle(tier)
        ordered.extend(tier)
    return ordered


def below_self(hosts: Sequence[MxHost], own_names: Iterable[str]) -> list[MxHost]:
    """``hosts`` without those at or above our own preference (RFC 5321 §5.1, STANDARDS M05).

    When one of ``own_names`` (the names this engine answers to, e.g. its EHLO names) is listed as
    an MX host, only hosts with a strictly lower preference may be tried, or mail would loop back
    to us. An empty result means we are the best MX ourselves: a configuration error for the caller
    to report. Without our names in the list, ``hosts`` are returned unchanged.
    """
    own = {_exchange(n) for n in own_names if n}
    ours = [h.preference for h in hosts if _exchange(h.name) in own]
    if not ours:
        return list(hosts)
    limit = min(ours)
    return [h for h in hosts if h.preference < limit]


def is_null_mx(hosts: Sequence[MxHost]) -> bool:
    """True for a null MX (RFC 7505 §3): exactly one record, preference 0, exchange the root."""
    return len(hosts) == 1 and hosts[0].preference == 0 and hosts[0].name.strip() in (".", "")


def site_key(hosts: Iterable[MxHost]) -> str:
    """Name the MX farm: sorted unique exchange names, lower-cased, no trailing dot, joined by ",".

    Destinations with the same key share throttles and windows (STYLE: key on site, not domain).
    """
    return ",".join(sorted({_exchange(h.name) for h in hosts}))


def normalize_domain(domain: str) -> str:
    """Return the lower-case A-label form of ``domain`` without a trailing dot.

    "Bücher.Example." -> "xn--bcher-kva.example". Uses Python's ``idna`` codec (IDNA 2003, so
    "ß" maps to "ss"). Raises ``ValueError`` for empty names or labels, labels that are not
    letters-digits-hyphen (RFC 5321 §4.1.2), over-long labels or names (RFC 1035 §2.3.4) and
    names the codec cannot encode.
    """
    text = domain.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise ValueError(f"empty domain: {domain!r}")
    labels = text.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise ValueError(f"empty label in domain: {domain!r}")
        if label.isascii():
            encoded = label.lower()
        else:
            try:
                encoded = label.encode("idna").decode("ascii").lower()
            except UnicodeError as exc:
                raise ValueError(f"domain is not IDNA-encodable: {domain!r}") from exc
        if len(encoded) > _MAX_LABEL_OCTETS:
            raise ValueError(f"label longer than {_MAX_LABEL_OCTETS} octets in {domain!r}")
        if not _SUB_DOMAIN.fullmatch(encoded):
            raise ValueError(f"label {encoded!r} is not letters-digits-hyphen in {domain!r}")
        out.append(encoded)
    name = ".".join(out)
    if len(name) > _MAX_NAME_OCTETS:
        raise ValueError(f"domain longer than {_MAX_NAME_OCTETS} octets: {domain!r}")
    return name
