"""SmtpSession AUTH toward a smarthost (aiosmtpd): PLAIN/LOGIN only over TLS, 535 refused (X10, L04)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from mta_engine.delivery.session import AuthRefused, SessionRefused, SmtpSession, SmtpTimeouts
from mta_engine.delivery.tls import TlsPolicy
from mta_engine.smtp.body import data_payload
from tests.support.certs import TestCerts, make_certs

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
NAME = "relay.test"
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5,
                        final_s=5, quit_s=5, tls_s=5)
MESSAGE = b"From: a@example.com\r\nTo: b@relayed.test\r\nSubject: relay\r\n\r\nbody\r\n"


@dataclass
class Relay:
    """Records AUTH commands (mechanism only), authentications and envelopes."""

    seen_auth: list[str] = field(default_factory=list)
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # (mechanism, user, ok)
    envelopes: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    def authenticator(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        ok = data.login == b"user" and data.password == b"pass"
        self.logins.append((mechanism, data.login.decode(), ok))
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        assert session.authenticated, "mail accepted only after AUTH"
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 queued"


class RelayController(Controller):
    """aiosmtpd on 127.0.0.1:0 whose SMTP records every AUTH command line."""

    def __init__(self, relay: Relay, **kwargs: Any) -> None:
        self.relay = relay
        super().__init__(relay, hostname=HOST, port=0, authenticator=relay.authenticator, **kwargs)

    def factory(self) -> SMTP:
        relay = self.relay

        class RecordingSMTP(SMTP):
            async def smtp_AUTH(self, arg: str) -> None:
                relay.seen_auth.append(arg.split()[0].upper() if arg else "")
                await super().smtp_AUTH(arg)

        return RecordingSMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        create = super()._create_server()

        async def bind() -> asyncio.AbstractServer:
            server = await create
            self.port = server.sockets[0].getsockname()[1]
            return server

        return bind()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(Path(tmp_path_factory.mktemp("certs")), [NAME, HOST])


def _server_context(certs: TestCerts) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert_file, certs.key_file)
    return ctx


def _start(relay: Relay, **kwargs: Any) -> RelayController:
    controller = RelayController(relay, **kwargs)
    controller.start()
    return controller


@pytest.fixture
def relay() -> Relay:
    return Relay()


@pytest.fixture
def starttls_relay(relay: Relay, certs: TestCerts) -> Iterator[RelayController]:
    controller = _start(relay, tls_context=_server_context(certs), require_starttls=True, auth_required=True)
    try:
        yield controller
    finally:
        controller.stop()


async def _deliver(port: int, tls: TlsPolicy, auth: tuple[str, str], **kwargs: Any) -> Any:
    session = await SmtpSession.open(HOST, port, ehlo_name="client.test", timeouts=TIMEOUTS, mx_name=NAME,
                                     tls=tls, auth=auth, **kwargs)
    try:
        return await session.transaction("a@example.com", ["b@relayed.test"], data_payload(MESSAGE))
    finally:
        await session.close()
        async with asyncio.timeout(5):  # let the TLS close finish before asyncio.run ends the loop
            while not session._proto.lost:
                await session._proto.wait_data()


def test_starttls_then_auth_plain_delivers(starttls_relay: RelayController, relay: Relay, certs: TestCerts) -> None:
    """EHLO, STARTTLS (certificate verified), EHLO, AUTH PLAIN, then the transaction."""
    result = asyncio.run(_deliver(starttls_relay.port, TlsPolicy("verify", ca_file=certs.ca_file), ("user", "pass")))
    assert result.data is not None and result.data.code == 250, result
    assert relay.seen_auth == ["PLAIN"]
    assert relay.logins == [("PLAIN", "user", True)]
    assert relay.envelopes and relay.envelopes[0][1] == ["b@relayed.test"]


def test_auth_login_when_plain_is_not_offered(relay: Relay, certs: TestCerts) -> None:
    """Without PLAIN in the AUTH keyword, LOGIN is used (334 user, 334 password, 235)."""
    controller = _start(relay, tls_context=_server_context(certs), require_starttls=True, auth_required=True,
                        auth_exclude_mechanism=["PLAIN"])
    try:
        result = asyncio.run(_deliver(controller.port, TlsPolicy("verify", ca_file=certs.ca_file), ("user", "pass")))
    finally:
        controller.stop()
    assert result.data is not None and result.data.code == 250, result
    assert relay.seen_auth == ["LOGIN"]
    assert relay.logins == [("LOGIN", "user", True)]


def test_wrong_password_is_refused_in_auth_phase(starttls_relay: RelayController, relay: Relay,
                                                 certs: TestCerts) -> None:
    """535: SessionRefused with phase "auth"; the error text never holds the password."""
    with pytest.raises(SessionRefused) as info:
        asyncio.run(_deliver(starttls_relay.port, TlsPolicy("verify", ca_file=certs.ca_file), ("user", "s3cr3t-x")))
    assert info.value.phase == "auth"
    assert info.value.reply.code == 535
    assert "s3cr3t-x" not in str(info.value) and "s3cr3t-x" not in repr(info.value)
    assert relay.logins == [("PLAIN", "user", False)]
    assert not relay.envelopes


def test_no_credentials_without_tls(relay: Relay) -> None:
    """A server without STARTTLS: refused before any AUTH is sent (RFC 4954 §4, STANDARDS X10)."""
    controller = _start(relay, auth_require_tls=False)  # offers AUTH in plaintext
    try:
        with pytest.raises(AuthRefused) as info:
            asyncio.run(_deliver(controller.port, TlsPolicy("opportunistic"), ("user", "pass")))
    finally:
        controller.stop()
    assert info.value.phase == "auth"
    assert "TLS" in str(info.value)
    assert relay.seen_auth == [] and relay.logins == []


def test_auth_without_tls_when_explicitly_allowed(relay: Relay) -> None:
    """auth_without_tls=True: plaintext AUTH is used (only when configured so)."""
    controller = _start(relay, auth_require_tls=False)  # handle_DATA still demands AUTH
    try:
        result = asyncio.run(_deliver(controller.port, TlsPolicy("none"), ("user", "pass"), auth_without_tls=True))
    finally:
        controller.stop()
    assert result.data is not None and result.data.code == 250, result
    assert relay.seen_auth == ["PLAIN"]


def test_implicit_tls_then_auth(relay: Relay, certs: TestCerts) -> None:
    """Port-465 style: TLS from the first byte, then greeting, EHLO and AUTH (RFC 8314 §3.3, L04)."""
    # aiosmtpd does not count implicit TLS as TLS for auth_require_tls; the link is TLS-wrapped anyway.
    controller = _start(relay, ssl_context=_server_context(certs), auth_require_tls=False)
    try:
        tls = TlsPolicy("verify", implicit=True, ca_file=certs.ca_file)
        result = asyncio.run(_deliver(controller.port, tls, ("user", "pass")))
    finally:
        controller.stop()
    assert result.data is not None and result.data.code == 250, result
    assert relay.logins == [("PLAIN", "user", True)]
