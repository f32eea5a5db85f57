"""CHUNKING (RFC 3030): BDAT <n> LAST with raw content, pipelined after MAIL/RCPT, only when enabled."""

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
MESSAGE = PreparedMessage(b"Subject: x\n\n.leading dot\n.\nend\n")


async def deliver(script: Script, *, chunking: bool, rcpts: list[str] | None = None,
                  message: PreparedMessage = MESSAGE, count: int = 1) -> tuple[list[TransactionResult], FaultServer]:
    async with FaultServer(script) as server:
        session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=TIMEOUTS,
                                         mx_name="mx.test", chunking=chunking)
        try:
            results = [await session.transaction("a@example.com", rcpts or ["b@example.net"], message)
                       for _ in range(count)]
            return results, server
        finally:
            await session.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_bdat_last_carries_the_raw_message() -> None:
    """One BDAT <size> LAST with no dot-stuffing and no terminator; the server gets the exact content."""
    (result,), server = run(deliver(Script(chunking=True), chunking=True))
    assert result.data is not None and result.data.code == 250 and result.phase == "payload"
    assert server.commands == ["EHLO", "MAIL", "RCPT", "BDAT", "QUIT"]
    assert server.received[3] == f"BDAT {MESSAGE.size} LAST\r\n".encode()
    assert server.messages[0].body == MESSAGE.data and server.messages[0].via == "BDAT"


def test_bdat_reused_session_resets_between_transactions() -> None:
    """Two BDAT transactions on one session: RSET before the second, both delivered (T01)."""
    results, server = run(deliver(Script(chunking=True), chunking=True, count=2))
    assert [r.data.code if r.data else None for r in results] == [250, 250]
    assert server.commands == ["EHLO", "MAIL", "RCPT", "BDAT", "RSET", "MAIL", "RCPT", "BDAT", "QUIT"]


def test_large_body_goes_in_several_chunks() -> None:
    """A body over one chunk is split; only the last chunk says LAST, and they join to the message."""
    big = PreparedMessage(b"Subject: big\n\n" + b"y" * 2_500_000 + b"\n")
    (result,), server = run(deliver(Script(chunking=True), chunking=True, message=big))
    assert result.data is not None and result.data.code == 250
    bdat = [line for line in server.received if line.startswith(b"BDAT")]
    assert len(bdat) == 3 and bdat[-1].endswith(b" LAST\r\n") and not bdat[0].endswith(b" LAST\r\n")
    assert server.messages[0].body == big.data


def test_chunking_disabled_uses_data() -> None:
    """Without open(chunking=True) an advertised CHUNKING is ignored and DATA is used."""
    (result,), server = run(deliver(Script(chunking=True), chunking=False))
    assert result.data is not None and result.data.code == 250
    assert "BDAT" not in server.commands and "DATA" in server.commands


def test_chunking_not_advertised_uses_data() -> None:
    """A server that does not advertise CHUNKING never sees BDAT (S06)."""
    (result,), server = run(deliver(Script(chunking=False), chunking=True))
    assert result.data is not None and result.data.code == 250
    assert "BDAT" not in server.commands


def test_bdat_without_pipelining_is_lockstep() -> None:
    """Without PIPELINING, MAIL, RCPT and BDAT each wait for their reply."""
    (result,), server = run(deliver(Script(chunking=True, extensions=["8BITMIME"]), chunking=True))
    assert result.data is not None and result.data.code == 250
    assert server.commands == ["EHLO", "MAIL", "RCPT", "BDAT", "QUIT"]


def test_bdat_with_every_recipient_refused_delivers_nothing() -> None:
    """With pipelined BDAT and all RCPTs refused, the chunk is refused and the session stays usable."""
    script = Script(chunking=True, rcpt_replies={"b@example.net": "550 5.1.1 no such user"})
    (result,), server = run(deliver(script, chunking=True))
    assert result.rcpts[0] is not None and result.rcpts[0].code == 550
    assert result.data is not None and not result.data.is_success
    assert server.messages == []
