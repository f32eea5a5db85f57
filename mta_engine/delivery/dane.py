"""DANE for SMTP (RFC 7672): does a server's certificate chain match its TLSA records?

Contract: pure. ``match_chain`` takes the peer's certificate chain as DER (leaf first, as the
server sent it), the TLSA records of ``_25._tcp.<mx>`` and the reference names, and returns a
``DaneMatch`` value; it never raises for anything the peer or the DNS sent. It does no I/O and
reads no clock (``now`` is an argument). Trust level: the chain is untrusted input, parsed with
``cryptography`` only (no ASN.1 by hand); the records are trusted because the caller only passes
records from an authenticated (AD) answer.

Rules (RFC 7672 §3.1, RFC 6698 §2.1, RFC 7218 names):

- usage 3, DANE-EE: the leaf's full certificate (selector 0) or SubjectPublicKeyInfo
  (selector 1), exactly (matching type 0) or by SHA2-256 (1) / SHA2-512 (2) digest, equals the
  record; names, validity dates and the rest of the chain are ignored (§3.1.1);
- usage 2, DANE-TA: a certificate the server sent after the leaf matches the record (or the
  record is a full "2 0 0" certificate), the leaf chains to it through the certificates sent
  (issuer name, signature, CA basic constraint), every certificate below the anchor is within
  its validity dates, and the leaf carries one of the reference names (§3.1.2, §3.2.2): a DNS
  subjectAltName, or the subject CN when there is none; ``*`` is allowed as a whole left-most
  label (§3.2.3);
- usages 0/1 (PKIX-TA/PKIX-EE), unknown selectors or matching types, and digests of the wrong
  length are unusable (§3.1.3, RFC 7671 §4.1); ``usable`` filters them. A host that publishes
  only unusable records gets TLS without authentication (``routing/dane.py``).

Any one matching record is enough. Not implemented: digest algorithm agility (RFC 7671 §9: all
digests are tried alike), a DANE-TA "2 1 x" anchor that the server did not send (RFC 7672
§3.1.2 requires servers to send it), and name constraints or path length limits in the chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

__all__ = [
    "DANE_EE",
    "DANE_TA",
    "PKIX_EE",
    "PKIX_TA",
    "DaneMatch",
    "TlsaRecord",
    "match_chain",
    "usable",
]

# RFC 6698 §2.1.1 certificate usages, RFC 7218 §2.1 names.
PKIX_TA = 0
PKIX_EE = 1
DANE_TA = 2
DANE_EE = 3
# RFC 6698 §2.1.2 selectors and §2.1.3 matching types.
SELECTOR_CERT = 0
SELECTOR_SPKI = 1
MATCH_FULL = 0
MATCH_SHA256 = 1
MATCH_SHA512 = 2
_DIGEST_BYTES = {MATCH_SHA256: 32, MATCH_SHA512: 64}
_MAX_CHAIN = 10  # certificates followed from the leaf to an anchor; real chains have 2-4


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 §2.1): usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        """Presentation form (RFC 6698 §2.2); full-data records are shortened to 32 hex digits."""
        hex_data = self.data.hex()
        if self.mtype == MATCH_FULL and len(hex_data) > 32:
            hex_data = hex_data[:32] + "..."
        return f"{self.usage} {self.selector} {self.mtype} {hex_data}"

    @property
    def usable(self) -> bool:
        """True for DANE-TA/DANE-EE with a known selector and matching type (RFC 7672 §3.1.3)."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (SELECTOR_CERT, SELECTOR_SPKI):
            return False
        if self.mtype == MATCH_FULL:
            return bool(self.data)
        return _DIGEST_BYTES.get(self.mtype) == len(self.data)


def usable(records: Sequence[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    """The records DANE can use, in their order; empty means "no DANE" (RFC 7672 §2.2)."""
    return tuple(r for r in records if r.usable)


@dataclass(frozen=True, slots=True)
class DaneMatch:
    """The verdict: ``ok``, the matching ``record`` (if any) and why, for logs and the outcome."""

    ok: bool
    record: TlsaRecord | None
    reason: str
    depth: int | None = None  # where the record matched: 0 = leaf, 1.. = sent chain, -1 = the record itself


def match_chain(
    chain_der: Sequence[bytes],
    records: Sequence[TlsaRecord],
    names: Sequence[str],
    now: datetime,
) -> DaneMatch:
    """Match ``chain_der`` (leaf first) against ``records``; ``names`` are the reference
    identifiers for DANE-TA (the MX host name, RFC 7672 §3.2.2); ``now`` is timezone-aware."""
    recs = usable(records)
    if not recs:
        return DaneMatch(False, None, "no usable TLSA record")
    if not chain_der:
        return DaneMatch(False, None, "the server sent no certificate")
    certs = [_load(der) for der in chain_der[:_MAX_CHAIN]]
    leaf = certs[0]
    if leaf is None:
        return DaneMatch(False, None, "the server's certificate does not parse")
    for rec in recs:  # RFC 7672 §3.1.1: DANE-EE, the leaf only
        if rec.usage == DANE_EE and _associates(chain_der[0], leaf, rec):
            return DaneMatch(True, rec, f"DANE-EE {rec} matched the server certificate", 0)
    failures: list[str] = []
    for rec in recs:  # RFC 7672 §3.1.2: DANE-TA
        if rec.usage != DANE_TA:
            continue
        for depth, anchor in _anchors(chain_der, certs, rec):
            problem = _ta_problem(certs, anchor, names, now)
            if problem is None:
                return DaneMatch(True, rec, f"DANE-TA {rec} matched a trust anchor", depth)
            failures.append(f"DANE-TA {rec} matched at depth {depth} but {problem}")
    if failures:
        return DaneMatch(False, None, "; ".join(failures))
    return DaneMatch(False, None, f"no TLSA record matched the certificate chain ({len(recs)} usable)")


# --------------------------------------------------------------------------- helpers


def _load(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _selected(der: bytes, cert: x509.Certificate, selector: int) -> bytes | None:
    """The bytes a record's selector points at (RFC 6698 §2.1.2): the certificate or its SPKI."""
    if selector == SELECTOR_CERT:
        return der
    try:  # DER is canonical: re-encoding the parsed key gives the certificate's SPKI bytes
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm):
        return None


def _associates(der: bytes, cert: x509.Certificate, rec: TlsaRecord) -> bool:
    """True if ``rec``'s association data is this certificate's (RFC 6698 §2.1.3)."""
    selected = _selected(der, cert, rec.selector)
    if selected is None:
        return False
    if rec.mtype == MATCH_SHA256:
        selected = hashlib.sha256(selected).digest()
    elif rec.mtype == MATCH_SHA512:
        selected = hashlib.sha512(selected).digest()
    return selected == rec.data


def _anchors(
    chain_der: Sequence[bytes], certs: Sequence[x509.Certificate | None], rec: TlsaRecord
) -> list[tuple[int, x509.Certificate]]:
    """Certificates that ``rec`` designates as trust anchor: sent ones after the leaf, or the
    record's own certificate ("2 0 0", which servers need not send, RFC 7672 §3.1.2)."""
    found = [
        (depth, cert)
        for depth, cert in enumerate(certs)
        if depth > 0 and cert is not None and _associates(chain_der[depth], cert, rec)
    ]
    if rec.selector == SELECTOR_CERT and rec.mtype == MATCH_FULL:
        own = _load(rec.data)
        if own is not None and not found:
            found.append((-1, own))
    return found


def _ta_problem(
    certs: Sequence[x509.Certificate | None], anchor: x509.Certificate, names: Sequence[str], now: datetime
) -> str | None:
    """Why the leaf does not validate under ``anchor``, or None (RFC 7672 §3.1.2, §3.2)."""
    path = _path_to(certs, anchor)
    if path is None:
        return "the server certificate does not chain to it"
    for cert in path:  # the anchor itself is trusted as is (RFC 5280 §6.1.1(d))
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return f"{_subject(cert)!r} is outside its validity period"
    leaf = path[0]
    if not _name_matches(leaf, names):
        return f"the server certificate names none of {list(names)}"
    return None


def _path_to(certs: Sequence[x509.Certificate | None], anchor: x509.Certificate) -> list[x509.Certificate] | None:
    """The certificates from the leaf up to (not including) ``anchor``, each issued by the next,
    in whatever order the server sent the intermediates; None if there is no such path."""
    leaf = certs[0]
    assert leaf is not None
    path = [leaf]
    pool = [c for c in certs[1:] if c is not None and c != anchor]
    current = leaf
    for _ in range(_MAX_CHAIN):
        if _issued_by(current, anchor):
            return path
        issuer = next((c for c in pool if _issued_by(current, c)), None)
        if issuer is None:
            return None
        pool.remove(issuer)
        path.append(issuer)
        current = issuer
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issuer name and signature check, and the issuer is a CA (RFC 5280 §4.2.1.9)."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    except ValueError:  # a malformed extension
        return False
    if not constraints.ca:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "?"


def _dns_names(cert: x509.Certificate) -> list[str]:
    """DNS subjectAltNames, else the subject CNs (RFC 7672 §3.2.2 allows CN without SANs)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    except ValueError:
        return []
    if names:
        return names
    out = []
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attr.value, str):
            out.append(attr.value)
    return out


def _name_matches(cert: x509.Certificate, names: Sequence[str]) -> bool:
    wanted = {n.lower().rstrip(".") for n in names if n}
    for presented in _dns_names(cert):
        p = presented.lower().rstrip(".")
        if p in wanted:
            return True
        if p.startswith("*.") and "*" not in p[2:]:  # RFC 7672 §3.2.3: one whole left-most label
            suffix = p[1:]
            if any(w.endswith(suffix) and "." not in w[: -len(suffix)] and w[: -len(suffix)] for w in wanted):
                return True
    return False
