"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314): upgrade, EHLO again, policies and fallbacks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TlsNegotiationError, TlsPolicy
from mta_engine.errors import RemoteProtocolError, TlsError
from mta_engine.smtp.body import PreparedMessage
from tests.support.certs import TestCerts, make_certs
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)
MESSAGE = PreparedMessage(b"Subject: tls\n\nsecret\n")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(Path(tmp_path_factory.mktemp("certs")), ["mx.test", "127.0.0.1"])


def tls_script(certs: TestCerts, **kwargs: Any) -> Script:
    return Script(certfile=certs.cert_file, keyfile=certs.key_file, **kwargs)


async def deliver(script: Script, tls: TlsPolicy, *, mx_name: str = "mx.test",
                  **kwargs: Any) -> tuple[Any, FaultServer]:
    """Open, send one message, close; return (session or the exception raised, server)."""
    async with FaultServer(script) as server:
        try:
            session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=TIMEOUTS,
                                             mx_name=mx_name, tls=tls, **kwargs)
        except Exception as exc:  # returned for assertions
            return exc, server
        try:
            result = await session.transaction("a@example.com", ["b@example.net"], MESSAGE)
            assert result.data is not None and result.data.code == 250, result
            return session, server
        finally:
            await session.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("mode", ["opportunistic", "required", "verify"])
def test_starttls_upgrades_and_says_ehlo_again(certs: TestCerts, mode: str) -> None:
    """STARTTLS alone, handshake, EHLO again with the new capabilities, then mail (RFC 3207 §4.2, L02)."""
    script = tls_script(certs, extensions_after_tls=["PIPELINING", "SIZE 5000", "AUTH PLAIN"])
    session, server = run(deliver(script, TlsPolicy(mode, ca_file=certs.ca_file)))  # type: ignore[arg-type]
    assert server.commands == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert "STARTTLS" not in session.extensions and "AUTH" in session.extensions
    assert server.mail_params == [[f"SIZE={MESSAGE.size}"]]
    info = session.tls_info
    assert info["version"] in ("TLSv1.2", "TLSv1.3") and info["cipher"]
    assert info["verified"] is (mode == "verify") and info["peer_cn"] == "mx.test"
    assert session.tls_fallback_reason is None
    assert repr(session).endswith(f"tls={info['version']}>")


def test_no_tls_policy_never_starttls(certs: TestCerts) -> None:
    """Mode "none" ignores an advertised STARTTLS; tls_info stays None."""
    session, server = run(deliver(tls_script(certs), TlsPolicy()))
    assert "STARTTLS" not in server.commands and session.tls_info is None


def test_454_opportunistic_continues_in_plaintext(certs: TestCerts) -> None:
    """A 454 to STARTTLS keeps an opportunistic session in plaintext on the same connection (L01)."""
    script = tls_script(certs, actions={"starttls": "454 4.7.0 TLS not available"})
    session, server = run(deliver(script, TlsPolicy("opportunistic")))
    assert server.commands == ["EHLO", "STARTTLS", "MAIL", "RCPT", "DATA", "QUIT"]
    assert session.tls_info is None and session.tls_fallback_reason.startswith("STARTTLS refused: 454")


@pytest.mark.parametrize("mode", ["required", "verify"])
def test_454_required_raises_tls_error(certs: TestCerts, mode: str) -> None:
    """A 454 under a required policy raises TlsNegotiationError (no fallback) after QUIT."""
    script = tls_script(certs, actions={"starttls": "454 4.7.0 TLS not available"})
    exc, server = run(deliver(script, TlsPolicy(mode, ca_file=certs.ca_file)))  # type: ignore[arg-type]
    assert isinstance(exc, TlsNegotiationError) and isinstance(exc, TlsError)
    assert not exc.fallback_ok and exc.reply is not None and exc.reply.code == 454
    assert server.commands == ["EHLO", "STARTTLS", "QUIT"]


def test_required_but_not_advertised_raises(certs: TestCerts) -> None:
    """TLS required and STARTTLS not advertised: TlsNegotiationError, nothing sent in plaintext."""
    exc, server = run(deliver(Script(), TlsPolicy("required")))
    assert isinstance(exc, TlsNegotiationError) and not exc.fallback_ok
    assert server.commands == ["EHLO", "QUIT"]


def test_handshake_failure_falls_back_to_plaintext_once(certs: TestCerts) -> None:
    """Opportunistic: a failed handshake is retried once in plaintext on a new connection."""
    script = tls_script(certs, actions={"starttls": "tls_garbage"})
    session, server = run(deliver(script, TlsPolicy("opportunistic")))
    assert server.connections == 2
    assert server.commands == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert session.tls_info is None and session.tls_fallback_reason.startswith("TLS handshake failed")


def test_handshake_failure_without_fallback_raises(certs: TestCerts) -> None:
    """With tls_fallback=False the opportunistic handshake failure is raised with fallback_ok=True."""
    script = tls_script(certs, actions={"starttls": "tls_garbage"})
    exc, server = run(deliver(script, TlsPolicy("opportunistic"), tls_fallback=False))
    assert isinstance(exc, TlsNegotiationError) and exc.fallback_ok
    assert server.connections == 1


def test_verify_rejects_a_name_mismatch(certs: TestCerts) -> None:
    """Mode "verify" checks the certificate against the MX name: a mismatch is a TlsError, no fallback."""
    exc, server = run(deliver(tls_script(certs), TlsPolicy("verify", ca_file=certs.ca_file), mx_name="other.test"))
    assert isinstance(exc, TlsNegotiationError) and not exc.fallback_ok
    assert "certificate" in str(exc) and server.messages == []


def test_verify_rejects_an_unknown_ca(certs: TestCerts) -> None:
    """Mode "verify" without the test CA does not trust the certificate."""
    exc, _ = run(deliver(tls_script(certs), TlsPolicy("verify")))
    assert isinstance(exc, TlsNegotiationError) and not exc.fallback_ok


def test_plaintext_after_starttls_220_is_injection(certs: TestCerts) -> None:
    """Bytes sent after the STARTTLS 220 in the same packet are refused (RFC 3207 §6, L03)."""
    script = tls_script(certs, actions={"starttls": "inject"})
    exc, server = run(deliver(script, TlsPolicy("opportunistic")))
    assert isinstance(exc, RemoteProtocolError)
    assert server.messages == []


def test_implicit_tls_handshakes_before_the_greeting(certs: TestCerts) -> None:
    """Implicit TLS (RFC 8314 §3.3): TLS from the first byte, no STARTTLS, then EHLO and mail."""
    script = tls_script(certs, implicit_tls=True)
    session, server = run(deliver(script, TlsPolicy("verify", implicit=True, ca_file=certs.ca_file)))
    assert server.commands == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert session.tls_info["verified"] is True


def test_implicit_tls_failure_is_not_retried_in_plaintext(certs: TestCerts) -> None:
    """An implicit-TLS handshake against a plaintext server fails without a plaintext retry."""
    exc, server = run(deliver(Script(), TlsPolicy("opportunistic", implicit=True)))
    assert isinstance(exc, TlsNegotiationError) and not exc.fallback_ok
    assert server.connections == 1
