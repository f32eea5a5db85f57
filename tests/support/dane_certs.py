"""Certificates for DANE tests, made at test time with ``cryptography``: CAs, leaves, chains.

Contract: test code only. Keys are EC P-256 (fast to make), never encrypted, and never leave a
test's temporary directory. ``tlsa`` computes the association data of a certificate exactly as
RFC 6698 §2.1 defines it, from the certificate's own DER, independently of the code under test
(which re-encodes the parsed public key).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mta_engine.delivery.dane import TlsaRecord

__all__ = ["Issued", "make_ca", "make_leaf", "tlsa", "tlsa_text", "write_chain"]

NOW = dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def spki(self) -> bytes:
        """The SubjectPublicKeyInfo DER, cut out of the certificate (RFC 5280 §4.1)."""
        return self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(cn: str, issuer: Issued | None, key: ec.EllipticCurvePrivateKey, days: tuple[int, int]) -> x509.CertificateBuilder:
    start, end = days
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=start))
        .not_valid_after(NOW + dt.timedelta(days=end))
    )


def make_ca(cn: str = "DANE test CA", issuer: Issued | None = None, days: tuple[int, int] = (-1, 2)) -> Issued:
    """A CA certificate, self-signed or issued by ``issuer`` (an intermediate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(cn, issuer, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    )
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def make_leaf(
    names: Sequence[str],
    issuer: Issued | None = None,
    *,
    cn: str | None = None,
    days: tuple[int, int] = (-1, 2),
    san: bool = True,
) -> Issued:
    """A server certificate for ``names`` (DNS subjectAltNames unless ``san=False``), issued by
    ``issuer`` or self-signed; ``days`` = (not before, not after) relative to now."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(cn or (names[0] if names else "server"), issuer, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if san and names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def tlsa(issued: Issued, usage: int, selector: int, mtype: int) -> TlsaRecord:
    """The TLSA record for ``issued`` with the given parameters (RFC 6698 §2.1)."""
    data = issued.der if selector == 0 else issued.spki
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return TlsaRecord(usage, selector, mtype, data)


def tlsa_text(owner: str, record: TlsaRecord) -> str:
    """A zone-file line for ``record`` (full data, unlike ``str(record)``)."""
    return f"{owner} TLSA {record.usage} {record.selector} {record.mtype} {record.data.hex()}"


def write_chain(directory: Path, leaf: Issued, chain: Sequence[Issued] = ()) -> tuple[str, str]:
    """Write ``leaf`` + ``chain`` (PEM, leaf first) and the leaf's key; return (cert file, key file)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file = directory / "chain.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (leaf, *chain)))
    key_file.write_bytes(leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return str(cert_file), str(key_file)
