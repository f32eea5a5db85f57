"""SmtpSession in LMTP mode against aiosmtpd's LMTP server, over TCP and a unix socket (RFC 2033)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller

from mta_engine.delivery.outcome import transaction_outcomes
from mta_engine.delivery.session import SessionRefused, SmtpSession, SmtpTimeouts, TransactionResult
from mta_engine.smtp.body import PreparedMessage
from tests.support.lmtp_server import LmtpHandler, LmtpServer
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5,
                        final_s=5, quit_s=5, tls_s=5)
MESSAGE = PreparedMessage(b"From: a@sender.test\r\nSubject: lmtp\r\n\r\nbody\r\n")


@pytest.fixture(params=["tcp", "unix", "tcp-pipelining"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LmtpServer]:
    handler = LmtpHandler(rcpt={"gone": "550 5.1.1 no such user"},
                          data={"full": "452 4.2.2 mailbox full", "sieve": "550 5.7.1 refused by sieve",
                                "drop": "close"}, pipelining=request.param.endswith("pipelining"))
    srv = LmtpServer.tcp(handler) if request.param == "tcp" else LmtpServer.unix(handler, tmp_path / "lmtp.sock")
    with srv:
        yield srv


async def _open(server: LmtpServer) -> SmtpSession:
    if server.endpoint.startswith("unix:"):
        return await SmtpSession.open(server.path, 0, ehlo_name="mta.test", timeouts=TIMEOUTS, lmtp=True, unix=True)
    return await SmtpSession.open(server.host, server.port, ehlo_name="mta.test", timeouts=TIMEOUTS, lmtp=True)


def codes(replies: list[Any] | None) -> list[int | None]:
    assert replies is not None
    return [None if r is None else r.code for r in replies]


def test_each_recipient_gets_its_own_reply_after_data(server: LmtpServer) -> None:
    """LHLO, then one reply per accepted RCPT after the dot, each applied to its recipient only."""
    rcpts = ["ok@lmtp.test", "gone@lmtp.test", "sieve@lmtp.test", "full@lmtp.test", "ok2@lmtp.test"]

    async def run() -> tuple[TransactionResult, TransactionResult, str, bool, str]:
        session = await _open(server)
        try:
            first = await session.transaction("a@sender.test", rcpts, MESSAGE)
            usable = session.usable
            second = await session.transaction("a@sender.test", ["ok3@lmtp.test"], MESSAGE)
            return first, second, repr(session), usable, " ".join(session.extensions)
        finally:
            await session.close()

    first, second, text, usable, text_ext = asyncio.run(run())
    assert first.error is None and usable, first
    assert codes(first.rcpts) == [250, 550, 250, 250, 250]
    assert codes(first.data_rcpts) == [250, None, 550, 452, 250]
    out, again = transaction_outcomes([0, 1, 2, 3, 4], first)
    assert again == []
    assert {o[0]: (o[1], o[4], o[5]) for o in out} == {
        0: (250, "data", False), 1: (550, "rcpt", False), 2: (550, "data", False), 3: (452, "data", False),
        4: (250, "data", False)}
    assert codes(second.data_rcpts) == [250]  # the same session, a new count
    assert [d.rcpt for d in server.handler.delivered] == ["ok@lmtp.test", "ok2@lmtp.test", "ok3@lmtp.test"]
    assert server.handler.delivered[0].content.endswith(b"body\r\n")
    assert server.handler.hellos == ["LHLO mta.test"]
    assert "transactions=2" in text
    assert ("PIPELINING" in text_ext) is server.handler.pipelining


def test_connection_lost_among_the_replies(server: LmtpServer) -> None:
    """The server closes after the first reply: that recipient keeps it, the rest are unknown."""
    async def run() -> tuple[TransactionResult, bool]:
        session = await _open(server)
        try:
            return await session.transaction("a@sender.test", ["ok@lmtp.test", "drop@lmtp.test", "c@lmtp.test"],
                                             MESSAGE), session.usable
        finally:
            await session.close()

    result, usable = asyncio.run(run())
    assert codes(result.data_rcpts) == [250, None, None]
    assert result.error is not None and not usable
    out, _ = transaction_outcomes([0, 1, 2], result)
    assert {o[0]: (o[1], o[5]) for o in out} == {0: (250, False), 1: (451, True), 2: (451, True)}


def test_lmtp_session_has_an_lmtp_connection(server: LmtpServer) -> None:
    """open(lmtp=True) drives an LmtpConnection; the server never sees EHLO or HELO."""
    async def run() -> str:
        session = await _open(server)
        try:
            return repr(session._conn)
        finally:
            await session.close()

    assert asyncio.run(run()).startswith("<LmtpConnection state=READY")
    assert server.handler.hellos == ["LHLO mta.test"]


class _HelloRecorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        self.seen.append("HELO")
        return "250 ok"

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
                          ) -> list[str]:
        self.seen.append("EHLO")
        return responses


def test_smtp_server_refusing_lhlo_gets_no_helo() -> None:
    """An SMTP server answers LHLO with 500: the session is refused at "lhlo", with no HELO fallback."""
    recorder = _HelloRecorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        async def run() -> SessionRefused:
            with pytest.raises(SessionRefused) as info:
                await SmtpSession.open("127.0.0.1", port, ehlo_name="mta.test", timeouts=TIMEOUTS, lmtp=True)
            return info.value

        refused = asyncio.run(run())
    finally:
        controller.stop()
    assert refused.phase == "lhlo" and refused.reply.code == 500
    assert recorder.seen == []
