"""Frozen values shared across the engine, and mailbox address checks.

Contract: pure, no I/O, no msgpack. Address checks follow RFC 5321 §4.1.2 and the length
limits of §4.5.3.1 (local part 64 octets, domain 255, path 256); UTF-8 local parts are
accepted (RFC 6531) and the domain must be a valid IDNA name.
"""

from __future__ import annotations

import functools
import re

MAX_LOCAL_OCTETS = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN_OCTETS = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH_OCTETS = 256  # RFC 5321 §4.5.3.1.3

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_BAD_LOCAL = re.compile(r"[\x00-\x20\x7f<>()\[\]\\,;:@\"]")


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be a forward-path, or None when it is acceptable."""
    if not isinstance(address, str) or not address:
        return "empty address"
    if address.count("@") != 1:
        return "address must contain exactly one @"
    local, domain = address.split("@")
    if not local:
        return "empty local part"
    if _BAD_LOCAL.search(local):
        return "local part contains a character not allowed unquoted (space, control, <>()[]\\,;:@\")"
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return "local part has a misplaced dot"
    if len(local.encode("utf-8")) > MAX_LOCAL_OCTETS:
        return f"local part longer than {MAX_LOCAL_OCTETS} octets (RFC 5321 §4.5.3.1.1)"
    if len(address.encode("utf-8")) + 2 > MAX_PATH_OCTETS:
        return f"address longer than {MAX_PATH_OCTETS - 2} octets (RFC 5321 §4.5.3.1.3)"
    return _domain_problem(domain)


@functools.lru_cache(maxsize=65536)
def _domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot be a destination, or None. Cached: a campaign's 100,000 recipients
    name about a thousand domains (1.20 -> 0.64 us per ``address_problem`` on the W2 mix)."""
    try:
        ascii_domain = domain_to_ascii(domain)
    except ValueError as exc:
        return f"invalid domain: {exc}"
    if len(ascii_domain) > MAX_DOMAIN_OCTETS:
        return "domain too long"
    return None


def domain_to_ascii(domain: str) -> str:
    """Lower-cased A-label form of a domain; raises ValueError when it is not a host name."""
    d = domain.strip().rstrip(".").lower()
    if not d:
        raise ValueError("empty domain")
    if d.startswith("[") and d.endswith("]"):
        raise ValueError("address literals are not accepted as destinations")
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"not a valid internationalised domain ({exc})") from None
    labels = d.split(".")
    if len(labels) < 2:
        raise ValueError("domain needs at least two labels")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(f"bad label {label!r}")
    return d


def sender_problem(address: str) -> str | None:
    """Like ``address_problem`` but the null reverse-path ``""`` is allowed (RFC 5321 §4.5.5)."""
    if address == "":
        return None
    return address_problem(address)
