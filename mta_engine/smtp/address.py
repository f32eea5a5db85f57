"""Envelope addresses on the wire: SMTPUTF8 need and IDNA A-labels (RFC 6531, RFC 5890).

Contract: pure string functions. ``wire_address`` returns the form of an address to put in
MAIL FROM/RCPT TO: unchanged when it is ASCII or when SMTPUTF8 is in use (RFC 6531 §3.2 allows
UTF-8 mailboxes and U-label domains); otherwise the domain as A-labels (RFC 5890 §2.3.2.1) and
``None`` when that is impossible (a UTF-8 local part has no ASCII form, RFC 6531 §3.2; there is
no downgrade). Never raises on any string input. No I/O.
"""

from __future__ import annotations

__all__ = ["address_needs_smtputf8", "envelope_needs_smtputf8", "to_a_labels", "wire_address"]

try:  # IDNA 2008 + UTS #46 (RFC 5891); installed with aiohttp (yarl depends on it)
    import idna as _idna
except ImportError:  # pragma: no cover - the stdlib codec is IDNA 2003, close enough as a fallback
    _idna = None


def to_a_labels(domain: str) -> str | None:
    """Return ``domain`` as ASCII A-labels (``xn--…``), or None if it is not a valid IDN."""
    if domain.isascii():
        return domain
    try:
        if _idna is not None:
            return str(_idna.encode(domain, uts46=True).decode("ascii"))
        return domain.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError subclass
        return None


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def wire_address(address: str, *, smtputf8: bool) -> str | None:
    """The address as sent on the wire, or None if it cannot be sent without SMTPUTF8."""
    if smtputf8 or address.isascii():
        return address
    local, domain = _split(address)
    if not local.isascii():
        return None  # RFC 6531 §3.2: a UTF-8 mailbox needs SMTPUTF8; we never downgrade
    labels = to_a_labels(domain)
    return None if labels is None else f"{local}@{labels}"


def address_needs_smtputf8(address: str) -> bool:
    """True if ``address`` has no ASCII wire form (UTF-8 local part, or an invalid IDN domain)."""
    return wire_address(address, smtputf8=False) is None


def envelope_needs_smtputf8(sender: str, recipients: list[str] | tuple[str, ...]) -> bool:
    """True if the sender or any recipient needs SMTPUTF8 (RFC 6531 §3.4 / STANDARDS X08)."""
    return address_needs_smtputf8(sender) or any(address_needs_smtputf8(r) for r in recipients)
