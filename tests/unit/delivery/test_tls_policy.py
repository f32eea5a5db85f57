"""TlsPolicy: mode checks, one cached SSLContext per policy, TLS >= 1.2, verification only in "verify"."""

from __future__ import annotations

import ssl

import pytest

from mta_engine.delivery.tls import TlsPolicy, peer_common_name


def test_unknown_mode_is_refused() -> None:
    """A misspelt mode fails at construction, not at the first connection."""
    with pytest.raises(ValueError):
        TlsPolicy("opportunistc")  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "verify"), [("opportunistic", False), ("required", False), ("verify", True)])
def test_context_per_mode(mode: str, verify: bool) -> None:
    """Only "verify" checks the chain and host name; every mode refuses TLS below 1.2; contexts are cached."""
    policy = TlsPolicy(mode)  # type: ignore[arg-type]
    ctx = policy.context()
    assert ctx is TlsPolicy(mode).context()  # type: ignore[arg-type]
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname is verify
    assert (ctx.verify_mode is ssl.CERT_REQUIRED) is verify


def test_policy_flags() -> None:
    """STARTTLS is wanted for any mode but none and never with implicit TLS; required/verify require TLS."""
    assert not TlsPolicy().wants_starttls and not TlsPolicy().requires_tls
    assert TlsPolicy("opportunistic").wants_starttls and not TlsPolicy("opportunistic").requires_tls
    assert not TlsPolicy("verify", implicit=True).wants_starttls and TlsPolicy("required").requires_tls


@pytest.mark.parametrize("der", [b"", b"\x30\x03\x02\x01", b"\x30\x80" + b"\x00" * 10, b"garbage"])
def test_peer_common_name_never_raises(der: bytes) -> None:
    """Malformed DER gives None, never an exception."""
    assert peer_common_name(der) is None
