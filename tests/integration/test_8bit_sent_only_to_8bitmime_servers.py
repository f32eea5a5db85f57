"""8BITMIME (RFC 6152): BODY=8BITMIME when advertised, else a 7-bit form, else a local 554 5.6.3."""

from __future__ import annotations

import asyncio
import email
from typing import Any

import pytest

from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TransactionResult
from mta_engine.smtp.body import PreparedMessage
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)
EIGHT = PreparedMessage(b"Subject: x\nContent-Type: text/plain; charset=utf-8\n\nna\xc3\xafve\n")


async def deliver(script: Script, message: PreparedMessage) -> tuple[TransactionResult, FaultServer]:
    async with FaultServer(script) as server:
        session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=TIMEOUTS,
                                         mx_name="mx.test")
        try:
            return await session.transaction("a@example.com", ["b@example.net"], message), server
        finally:
            await session.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_8bit_with_8bitmime_goes_unchanged() -> None:
    """An 8-bit message to an 8BITMIME server carries BODY=8BITMIME and arrives byte for byte."""
    result, server = run(deliver(Script(extensions=["PIPELINING", "8BITMIME"]), EIGHT))
    assert result.data is not None and result.data.code == 250
    assert server.mail_params == [["BODY=8BITMIME"]]
    assert server.messages[0].body == EIGHT.data


def test_8bit_to_7bit_server_is_converted_to_quoted_printable() -> None:
    """Without 8BITMIME only 7-bit octets go on the wire, with no BODY parameter, and the text survives."""
    result, server = run(deliver(Script(extensions=["PIPELINING"]), EIGHT))
    assert result.data is not None and result.data.code == 250
    assert server.mail_params == [[]]
    body = server.messages[0].body
    assert body.isascii() and b"Content-Transfer-Encoding: quoted-printable" in body
    assert email.message_from_bytes(body).get_payload(decode=True) == "naïve\r\n".encode()


def test_unconvertible_8bit_is_never_sent_raw() -> None:
    """8-bit headers to a 7-bit server: local 554 5.6.3 for everyone, no MAIL on the wire (RFC 6152 §3)."""
    result, server = run(deliver(Script(extensions=["PIPELINING"]), PreparedMessage(b"Subject: \xc3\xa9\n\n\xc3\xa9\n")))
    assert result.local and result.mail is not None
    assert (result.mail.code, result.mail.enhanced) == (554, "5.6.3")
    assert server.commands == ["EHLO", "QUIT"]
