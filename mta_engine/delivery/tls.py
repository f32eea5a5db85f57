"""TLS policy for SMTP sessions: STARTTLS (RFC 3207) and implicit TLS (RFC 8314 §3.3).

Contract: a ``TlsPolicy`` value says whether and how a session uses TLS; ``context()`` builds
(once per policy, cached) the ``ssl.SSLContext`` for it; ``tls_info`` describes a finished
handshake for the accounting log. Modes:

- ``none``: never STARTTLS (implicit TLS is still honoured if ``implicit`` is set);
- ``opportunistic``: STARTTLS when advertised, no certificate checks, TLS >= 1.2; a 454 keeps the
  session in plaintext (RFC 3207 §4, STANDARDS L01); a failed handshake raises
  ``TlsNegotiationError(fallback_ok=True)`` (the session's ``tls_fallback`` retries in plaintext);
- ``required``: TLS >= 1.2 without certificate checks; anything short of TLS raises
  ``TlsNegotiationError(fallback_ok=False)``;
- ``verify``: like ``required`` plus PKIX validation and a host name check against the MX name
  (RFC 6125; MTA-STS enforce, RFC 8461 §4.2); ``ca_file`` adds a trust anchor (tests).

DANE (RFC 7672): ``TlsPolicy.for_dane(records, names)`` is ``required`` (no PKIX check in the
handshake) plus the MX host's usable TLSA records; the session matches the server's chain
(``peer_chain``) against them after the handshake (``delivery/dane.py``) and aborts on a
mismatch with ``TlsNegotiationError(fallback_ok=False)``. ``tls_info`` then says ``dane`` and
which record matched.

Never reads the network; fails only by raising from ``context()`` on an unreadable CA file.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from mta_engine.delivery.dane import DaneMatch, TlsaRecord
from mta_engine.errors import TlsError
from mta_engine.smtp.reply import Reply

__all__ = ["TlsMode", "TlsNegotiationError", "TlsPolicy", "peer_chain", "peer_common_name", "tls_info"]

TlsMode = Literal["none", "opportunistic", "required", "verify"]
_MODES = ("none", "opportunistic", "required", "verify")


class TlsNegotiationError(TlsError):
    """TLS could not be set up as the policy asks.

    ``fallback_ok`` is True only for an opportunistic policy whose handshake failed: the caller
    may retry once in plaintext on a new connection. ``reply`` is the server's STARTTLS reply
    when it refused (454), else None.
    """

    def __init__(self, message: str, *, fallback_ok: bool, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.fallback_ok = fallback_ok
        self.reply = reply


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """How one session uses TLS: ``mode``, ``implicit`` (TLS from the first byte), a test CA, and
    for DANE the TLSA records with the names a DANE-TA certificate may carry."""

    mode: TlsMode = "none"
    implicit: bool = False  # RFC 8314 §3.3: port 465 submission to a smarthost
    ca_file: str | None = None  # extra trust anchor for "verify" (tests, private CAs)
    dane: tuple[TlsaRecord, ...] | None = None  # usable TLSA records (RFC 7672): match after the handshake
    dane_names: tuple[str, ...] = ()  # reference identifiers for DANE-TA (RFC 7672 §3.2.2)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"unknown TLS mode {self.mode!r}; expected one of {_MODES}")
        if self.dane is not None and (self.mode != "required" or not self.dane):
            raise ValueError("a DANE policy is mode 'required' with at least one TLSA record")

    @classmethod
    def for_dane(cls, records: Sequence[TlsaRecord], names: Sequence[str]) -> TlsPolicy:
        """TLS required, no PKIX in the handshake, the chain matched against ``records`` after it."""
        return cls("required", dane=tuple(records), dane_names=tuple(names))

    @property
    def wants_starttls(self) -> bool:
        """True if STARTTLS should be used when the server advertises it."""
        return self.mode != "none" and not self.implicit

    @property
    def requires_tls(self) -> bool:
        """True if the session must not carry mail without TLS."""
        return self.mode in ("required", "verify")

    @property
    def verifies(self) -> bool:
        """True if the certificate chain and the host name are checked."""
        return self.mode == "verify"

    def context(self) -> ssl.SSLContext:
        """The client ``SSLContext`` for this policy (built once per distinct policy)."""
        return _context(self.verifies, self.ca_file)


@lru_cache(maxsize=16)
def _context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    if verify:
        ctx = ssl.create_default_context(cafile=ca_file)  # CERT_REQUIRED + check_hostname
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # opportunistic: encryption without authentication (RFC 7435)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996 deprecates TLS 1.0/1.1
    return ctx


def tls_info(ssl_object: Any, *, verified: bool, dane: DaneMatch | None = None) -> dict[str, Any] | None:
    """``{"version", "cipher", "verified", "peer_cn", "dane"}`` of a finished handshake, or None;
    ``dane`` is True when a TLSA record authenticated the server, and ``dane_record`` says which."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    info = {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "verified": verified or (dane is not None and dane.ok),
        "peer_cn": peer_common_name(der) if der else None,
        "dane": dane is not None and dane.ok,
    }
    if dane is not None and dane.record is not None:
        info["dane_record"] = str(dane.record)
    return info


def peer_chain(ssl_object: Any) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER; unverified (DANE checks them).

    Python 3.13 has ``SSLObject.get_unverified_chain()``; 3.11 and 3.12 have it only on the
    private ``_sslobj`` (``_ssl._SSLSocket``), returning ``_ssl.Certificate`` objects. Without
    either, only the leaf, which is enough for DANE-EE.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        try:
            chain = getter()
        except (ssl.SSLError, ValueError, AttributeError):
            chain = None
        if chain:
            return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain]
    der = ssl_object.getpeercert(binary_form=True)
    return [der] if der else []


_ENCODING_DER = getattr(ssl, "_ssl").ENCODING_DER  # _ssl.Certificate.public_bytes format (3.10+)


# --- a minimal DER walk for the subject CN (the stdlib only decodes verified certificates) ---

_OID_COMMON_NAME = bytes((0x06, 0x03, 0x55, 0x04, 0x03))  # 2.5.4.3 (X.520 commonName)


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the DER element at ``pos`` (X.690 §8.1)."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, cstart, cend = _tlv(der, start)
        out.append((tag, cstart, cend))
        start = cend
    return out


def peer_common_name(der: bytes) -> str | None:
    """The subject commonName of a DER certificate (RFC 5280 §4.1), or None; never raises."""
    try:
        _, cert_start, cert_end = _tlv(der, 0)
        _, tbs_start, tbs_end = _children(der, cert_start, cert_end)[0]
        fields = _children(der, tbs_start, tbs_end)
        if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
            fields = fields[1:]
        _, subj_start, subj_end = fields[4]  # serial, signature, issuer, validity, subject
        for _, set_start, set_end in _children(der, subj_start, subj_end):  # RDN SETs
            for _, atv_start, atv_end in _children(der, set_start, set_end):
                oid, value = _children(der, atv_start, atv_end)[:2]
                if der[oid[1] - 2 : oid[2]] == _OID_COMMON_NAME:
                    return der[value[1] : value[2]].decode("utf-8", "replace")
    except (IndexError, ValueError):
        return None
    return None
