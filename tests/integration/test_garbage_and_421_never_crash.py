"""Garbage replies, 421 at every phase and resets mid-DATA: never a crash, error set, session dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mta_engine.delivery.outcome import transaction_outcomes
from mta_engine.delivery.session import (
    ServerClosingError,
    SessionRefused,
    SmtpSession,
    SmtpTimeouts,
    TransactionResult,
)
from mta_engine.errors import NetworkError, RemoteProtocolError
from mta_engine.smtp.body import PreparedMessage
from mta_engine.smtp.reply import MAX_LINE_OCTETS
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)
MESSAGE = PreparedMessage(b"Subject: faults\n\n" + b"z" * 70 + b"\n" * 3000)  # ~216 KB: several writes


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def attempt(script: Script, *, chunking: bool = False) -> tuple[Any, bool | None]:
    """Open and run one transaction; return (result or open()'s exception, session.usable)."""
    async with FaultServer(script) as server:
        try:
            session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=TIMEOUTS,
                                             mx_name="mx.test", chunking=chunking)
        except Exception as exc:  # returned for assertions
            return exc, None
        result = await session.transaction("a@example.com", ["b@example.net", "c@example.net"], MESSAGE)
        usable = session.usable
        await session.close()
        return result, usable


@pytest.mark.parametrize("phase", ["greeting", "ehlo"])
def test_421_before_the_transaction_refuses_the_session(phase: str) -> None:
    """421 as greeting or EHLO reply: SessionRefused with that phase (S01, S03)."""
    exc, _ = run(attempt(Script(actions={phase: "421 4.3.2 going away"})))
    assert isinstance(exc, SessionRefused) and exc.phase == phase and exc.reply.code == 421


@pytest.mark.parametrize(("phase", "result_phase"), [("mail", "mail"), ("rcpt", "rcpt"), ("data", "data"),
                                                    ("dot", "payload")])
def test_421_in_the_transaction_is_recorded(phase: str, result_phase: str) -> None:
    """421 at MAIL/RCPT/DATA/final dot: ServerClosingError in result.error, the 421 in its slot (R08)."""
    result, usable = run(attempt(Script(actions={phase: "421 4.3.2 going away"})))
    assert usable is False
    outcomes, _ = transaction_outcomes([0, 1], result)
    if not isinstance(result.error, ServerClosingError):
        # The server closes right after its 421 with our pipelined commands unread, so its kernel may
        # answer with a reset that discards the 421 before we read it: then it is a lost connection.
        assert result.error is not None and all(o[1] == 451 for o in outcomes)
        return
    assert result.phase == result_phase
    assert all(o[1] == 421 for o in outcomes)


def test_421_to_bdat_is_recorded() -> None:
    """421 to BDAT LAST is the final reply: recorded in result.data."""
    result, usable = run(attempt(Script(chunking=True, actions={"dot": "421 4.3.2 bye"}), chunking=True))
    assert isinstance(result.error, ServerClosingError) and result.data is not None and result.data.code == 421
    assert usable is False


@pytest.mark.parametrize("garbage", [
    "abc hello",  # not a code
    "650 6xx is no class",  # first digit outside 2-5
    "250-first line\r\n550 second line changes the code",  # mixed codes in one reply
    "250-" + "x" * MAX_LINE_OCTETS,  # a line over the 8 KiB cap
])
@pytest.mark.parametrize("phase", ["mail", "rcpt", "dot"])
def test_garbage_reply_is_a_protocol_error(garbage: str, phase: str) -> None:
    """A reply that is not SMTP sets RemoteProtocolError in result.error and drops the session (R02)."""
    result, usable = run(attempt(Script(actions={phase: garbage})))
    assert isinstance(result, TransactionResult)
    assert isinstance(result.error, RemoteProtocolError) and usable is False


def test_garbage_greeting_raises_protocol_error() -> None:
    """A garbage greeting raises RemoteProtocolError from open()."""
    exc, _ = run(attempt(Script(greeting="hello, I am not SMTP")))
    assert isinstance(exc, RemoteProtocolError)


def test_long_reply_line_under_the_cap_is_kept_whole() -> None:
    """Reply lines over 512 octets but under 8 KiB are accepted and never truncated (R07)."""
    text = "2.1.5 " + "y" * 4000
    result, usable = run(attempt(Script(actions={"rcpt": f"250 {text}"})))
    assert result.error is None and result.rcpts[0] is not None and result.rcpts[0].text == text
    assert result.data is not None and result.data.code == 250 and usable


@pytest.mark.parametrize("action", ["reset", "close"])
@pytest.mark.parametrize("chunking", [False, True])
def test_connection_lost_mid_data(action: str, chunking: bool) -> None:
    """A reset or close while the body is being sent: NetworkError recorded, nothing delivered (R09)."""
    result, usable = run(attempt(Script(chunking=chunking, actions={"body": action}), chunking=chunking))
    assert isinstance(result, TransactionResult)
    assert isinstance(result.error, NetworkError) and usable is False
    assert result.data is None or result.data.code != 250
    outcomes, _ = transaction_outcomes([0, 1], result)
    assert all(o[1] == 451 for o in outcomes)


def test_drop_after_the_final_dot_is_unknown() -> None:
    """The server closes instead of answering the final dot: phase "payload", outcome UNKNOWN (§6.1)."""
    result, usable = run(attempt(Script(actions={"dot": "close"})))
    assert isinstance(result.error, NetworkError) and result.phase == "payload" and usable is False
    outcomes, _ = transaction_outcomes([0, 1], result)
    assert all(o[5] for o in outcomes)
