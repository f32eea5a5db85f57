"""Per-phase timeouts (RFC 5321 §4.5.3.2, STANDARDS W01): a server that stalls at each phase."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from mta_engine.delivery.outcome import transaction_outcomes
from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TransactionResult
from mta_engine.errors import ConnectTimeout, DataTimeout, DeliveryTimeout, ReplyTimeout
from mta_engine.smtp.body import PreparedMessage, data_payload
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration
SLOW = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                    quit_s=5, tls_s=5)
TINY = 0.15  # seconds: the one phase under test gets this, every other phase 5 s
MESSAGE = PreparedMessage(b"Subject: stall\n\nbody\n")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def attempt(script: Script, timeouts: SmtpTimeouts, *, chunking: bool = False) -> Any:
    """Open and run one transaction; return the TransactionResult or the exception open() raised."""
    async with FaultServer(script) as server:
        try:
            session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=timeouts,
                                             mx_name="mx.test", chunking=chunking)
        except DeliveryTimeout as exc:
            return exc
        result = await session.transaction("a@example.com", ["b@example.net"], MESSAGE)
        assert not session.usable
        await session.close()
        return result


@pytest.mark.parametrize(("phase", "field", "error"), [("greeting", "greeting_s", ConnectTimeout),
                                                      ("ehlo", "ehlo_s", ReplyTimeout)])
def test_stall_before_the_session_is_open(phase: str, field: str, error: type[Exception]) -> None:
    """A stall at the greeting raises ConnectTimeout, at EHLO ReplyTimeout, from open()."""
    exc = run(attempt(Script(actions={phase: "stall"}), dataclasses.replace(SLOW, **{field: TINY})))
    assert type(exc) is error and isinstance(exc.__cause__, TimeoutError)


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize(("phase", "field", "error", "result_phase"), [
    ("mail", "mail_s", ReplyTimeout, "mail"),
    ("rcpt", "rcpt_s", ReplyTimeout, "rcpt"),
    ("data", "data_s", ReplyTimeout, "data"),
    ("dot", "final_s", DataTimeout, "payload"),
])
def test_stall_in_the_transaction(phase: str, field: str, error: type[Exception], result_phase: str,
                                  pipelining: bool) -> None:
    """A stall at MAIL/RCPT/DATA/final dot records that phase's timeout error; the session is dropped."""
    extensions = ["PIPELINING"] if pipelining else []
    script = Script(extensions=extensions, actions={phase: "stall"})
    result = run(attempt(script, dataclasses.replace(SLOW, **{field: TINY})))
    assert isinstance(result, TransactionResult)
    assert type(result.error) is error and result.phase == result_phase


def test_stall_after_the_final_dot_is_unknown() -> None:
    """No reply to the final dot within final_s: phase "payload", and the outcome is UNKNOWN (W02)."""
    result = run(attempt(Script(actions={"dot": "stall"}), dataclasses.replace(SLOW, final_s=TINY)))
    assert result.phase == "payload" and (result.data is None or result.data.code == 354)
    outcomes, _ = transaction_outcomes([0], result)
    assert outcomes[0][5] is True  # unknown: the message may have been delivered


def test_stall_after_bdat_last_is_unknown() -> None:
    """The same for BDAT LAST: its reply is the final reply (RFC 3030 §2)."""
    script = Script(chunking=True, actions={"dot": "stall"})
    result = run(attempt(script, dataclasses.replace(SLOW, final_s=TINY), chunking=True))
    assert type(result.error) is DataTimeout and result.phase == "payload"
    assert transaction_outcomes([0], result)[0][0][5] is True


def test_stall_during_legacy_payload_is_unknown() -> None:
    """A bytes payload (the worker's current form) gets the same final-reply timeout."""

    async def scenario() -> TransactionResult:
        async with FaultServer(Script(actions={"dot": "stall"})) as server:
            session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test",
                                             timeouts=dataclasses.replace(SLOW, final_s=TINY))
            return await session.transaction("a@example.com", ["b@example.net"], data_payload(b"x"))

    result = run(scenario())
    assert type(result.error) is DataTimeout and result.phase == "payload"
