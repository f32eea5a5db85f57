"""SIZE, 8BITMIME, SMTPUTF8 and STARTTLS against a real third-party server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TlsPolicy, TransactionResult
from mta_engine.smtp.body import PreparedMessage
from tests.support.certs import TestCerts, make_certs

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)


class Recorder:
    """aiosmtpd handler that keeps every envelope (sender, recipients, options, content)."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), list(envelope.mail_options),
                               envelope.original_content))
        return "250 2.0.0 queued"


class EphemeralController(Controller):
    """Controller bound to an ephemeral port, read back from the socket."""

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        create = super()._create_server()

        async def bind() -> asyncio.AbstractServer:
            server = await create
            self.port = server.sockets[0].getsockname()[1]
            return server

        return bind()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(Path(tmp_path_factory.mktemp("certs")), ["mx.test"])


def serve(handler: Recorder, **kwargs: Any) -> EphemeralController:
    controller = EphemeralController(handler, hostname=HOST, port=0, **kwargs)
    controller.start()
    return controller


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    yield Recorder()


def deliver(port: int, sender: str, rcpts: list[str], message: PreparedMessage,
            tls: TlsPolicy = TlsPolicy()) -> tuple[TransactionResult, dict[str, Any] | None, dict[str, str]]:
    async def scenario() -> tuple[TransactionResult, dict[str, Any] | None, dict[str, str]]:
        session = await SmtpSession.open(HOST, port, ehlo_name="client.test", timeouts=TIMEOUTS, mx_name="mx.test",
                                         tls=tls)
        try:
            return await session.transaction(sender, rcpts, message), session.tls_info, dict(session.extensions)
        finally:
            await session.close()

    return asyncio.run(scenario())


def test_size_and_8bitmime_parameters_reach_aiosmtpd(recorder: Recorder) -> None:
    """aiosmtpd advertises SIZE and 8BITMIME; it receives SIZE=<n> BODY=8BITMIME and the exact bytes."""
    message = PreparedMessage(b"Subject: x\nContent-Type: text/plain; charset=utf-8\n\nna\xc3\xafve\n")
    controller = serve(recorder)
    try:
        result, _, extensions = deliver(controller.port, "a@example.com", ["b@example.net"], message)
    finally:
        controller.stop()
    assert "8BITMIME" in extensions and "SIZE" in extensions
    assert result.data is not None and result.data.code == 250
    ((_, _, options, content),) = recorder.envelopes
    assert options == [f"SIZE={message.size}", "BODY=8BITMIME"]
    assert content == message.data


def test_aiosmtpd_size_limit_refuses_locally(recorder: Recorder) -> None:
    """Over aiosmtpd's advertised data_size_limit the message is refused here with 552 5.3.4."""
    controller = serve(recorder, data_size_limit=50)
    try:
        result, _, _ = deliver(controller.port, "a@example.com", ["b@example.net"],
                               PreparedMessage(b"Subject: big\n\n" + b"x" * 100 + b"\n"))
    finally:
        controller.stop()
    assert result.local and result.mail is not None and result.mail.enhanced == "5.3.4"
    assert recorder.envelopes == []


def test_smtputf8_with_aiosmtpd(recorder: Recorder) -> None:
    """With enable_SMTPUTF8 a UTF-8 recipient is sent as UTF-8 with the SMTPUTF8 parameter."""
    controller = serve(recorder, enable_SMTPUTF8=True)
    try:
        result, _, _ = deliver(controller.port, "a@example.com", ["jürgen@example.net"],
                               PreparedMessage(b"Subject: x\n\nhi\n"))
    finally:
        controller.stop()
    assert result.data is not None and result.data.code == 250
    ((_, rcpts, options, _),) = recorder.envelopes
    assert rcpts == ["jürgen@example.net"] and "SMTPUTF8" in options


def test_starttls_with_aiosmtpd(recorder: Recorder, certs: TestCerts) -> None:
    """aiosmtpd with a tls_context: STARTTLS, verified against the MX name, then delivery over TLS."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.cert_file, certs.key_file)
    controller = serve(recorder, tls_context=server_ctx, require_starttls=True)
    try:
        result, info, _ = deliver(controller.port, "a@example.com", ["b@example.net"],
                                  PreparedMessage(b"Subject: tls\n\nhi\n"), TlsPolicy("verify", ca_file=certs.ca_file))
    finally:
        controller.stop()
    assert result.data is not None and result.data.code == 250
    assert info is not None and info["verified"] and info["peer_cn"] == "mx.test"
    assert len(recorder.envelopes) == 1
