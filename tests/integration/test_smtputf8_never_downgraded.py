"""SMTPUTF8 (RFC 6531): used only when needed and advertised; otherwise 553 5.6.7, no downgrade."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TransactionResult
from mta_engine.smtp.body import PreparedMessage
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)
ASCII = PreparedMessage(b"Subject: x\n\nhello\n")


async def deliver(script: Script, sender: str, rcpts: list[str],
                  message: PreparedMessage = ASCII) -> tuple[TransactionResult, FaultServer]:
    async with FaultServer(script) as server:
        session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=TIMEOUTS,
                                         mx_name="mx.test")
        try:
            return await session.transaction(sender, rcpts, message), server
        finally:
            await session.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_utf8_envelope_uses_smtputf8_when_advertised() -> None:
    """A UTF-8 mailbox goes as UTF-8 on the wire with the SMTPUTF8 parameter (RFC 6531 §3.4)."""
    result, server = run(deliver(Script(smtputf8=True), "a@example.com", ["jürgen@bücher.example"]))
    assert result.data is not None and result.data.code == 250
    assert server.mail_params == [["SMTPUTF8"]]
    assert "RCPT TO:<jürgen@bücher.example>\r\n".encode() in server.received


def test_ascii_envelope_gets_a_labels_and_no_smtputf8() -> None:
    """An ASCII mailbox at an IDN domain is sent with A-labels and without SMTPUTF8, even if advertised."""
    result, server = run(deliver(Script(smtputf8=True), "a@example.com", ["b@bücher.example"]))
    assert result.data is not None and result.data.code == 250
    assert server.mail_params == [[]]
    assert b"RCPT TO:<b@xn--bcher-kva.example>\r\n" in server.received


def test_utf8_sender_without_smtputf8_is_553_5_6_7() -> None:
    """A UTF-8 sender to a server without SMTPUTF8: local 553 5.6.7 and no MAIL on the wire."""
    result, server = run(deliver(Script(), "jö@example.com", ["b@example.net"]))
    assert result.local and result.mail is not None and (result.mail.code, result.mail.enhanced) == (553, "5.6.7")
    assert server.commands == ["EHLO", "QUIT"]


def test_utf8_headers_without_smtputf8_is_553_5_6_7() -> None:
    """A message the caller marks as needing SMTPUTF8 is refused locally by a server without it."""
    message = PreparedMessage("Subject: grüße\n\nx\n".encode(), smtputf8=True)
    result, _ = run(deliver(Script(), "a@example.com", ["b@example.net"], message))
    assert result.local and result.mail is not None and result.mail.code == 553


def test_only_the_utf8_recipient_is_refused() -> None:
    """Without SMTPUTF8 the UTF-8 recipient gets a local 553 5.6.7; the ASCII one is delivered."""
    result, server = run(deliver(Script(), "a@example.com", ["jö@example.net", "b@example.net"]))
    assert not result.local and result.local_rcpts == (0,)
    assert [r.code if r else None for r in result.rcpts] == [553, 250]
    assert result.data is not None and result.data.code == 250
    assert server.messages[0].rcpts == ["b@example.net"]
