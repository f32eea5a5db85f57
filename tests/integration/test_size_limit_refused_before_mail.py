"""SIZE (RFC 1870): SIZE=<n> on MAIL, local 552 5.3.4 over the limit, 452/552 to MAIL as replies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mta_engine.delivery.outcome import transaction_outcomes
from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TransactionResult
from mta_engine.smtp.body import PreparedMessage
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)
MESSAGE = PreparedMessage(b"Subject: size\n\n" + b"x" * 100 + b"\n")  # 119 octets


async def deliver(script: Script, message: PreparedMessage = MESSAGE) -> tuple[TransactionResult, FaultServer]:
    async with FaultServer(script) as server:
        session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=TIMEOUTS,
                                         mx_name="mx.test")
        try:
            return await session.transaction("a@example.com", ["b@example.net", "c@example.net"], message), server
        finally:
            await session.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("size", [None, 0, 1000])
def test_size_parameter_sent_when_advertised(size: int | None) -> None:
    """MAIL carries SIZE=<octets incl. CRLF> whenever SIZE is advertised, also as 0 (no limit) (X04, X05)."""
    result, server = run(deliver(Script(size=size)))
    assert result.data is not None and result.data.code == 250
    expected = [] if size is None else [f"SIZE={MESSAGE.size}"]
    assert server.mail_params == [expected]


def test_size_alone_gives_no_information() -> None:
    """A bare SIZE keyword sets no limit: the message is sent with SIZE= (RFC 1870 §7)."""
    result, server = run(deliver(Script(extensions=["PIPELINING", "SIZE"])))
    assert (result.local, result.data and result.data.code) == (False, 250)
    assert server.mail_params == [[f"SIZE={MESSAGE.size}"]]


def test_oversized_message_is_refused_without_a_transaction() -> None:
    """Over a positive limit: no MAIL is sent, every recipient gets a local permanent 552 5.3.4 (RFC 1870 §4)."""
    result, server = run(deliver(Script(size=100)))
    assert result.local and result.phase == "mail" and result.rcpts == [None, None]
    assert result.mail is not None and (result.mail.code, result.mail.enhanced) == (552, "5.3.4")
    assert result.mail.text == f"5.3.4 message size {MESSAGE.size} exceeds the limit 100 advertised by mx.test"
    assert server.commands == ["EHLO", "QUIT"]
    outcomes, again = transaction_outcomes([7, 8], result)
    assert [(o[0], o[1], o[4]) for o in outcomes] == [(7, 552, "mail"), (8, 552, "mail")] and again == []


@pytest.mark.parametrize(("reply", "transient"), [("452 4.3.1 insufficient storage", True),
                                                  ("552 5.3.4 message too big", False)])
def test_mail_size_reply_is_a_normal_reply(reply: str, transient: bool) -> None:
    """452 to MAIL ... SIZE= is transient, 552 permanent; both come back as the MAIL reply (RFC 1870 §6.2)."""
    result, _ = run(deliver(Script(size=1000, actions={"mail": reply})))
    assert not result.local and result.error is None
    assert result.mail is not None and result.mail.is_transient is transient
