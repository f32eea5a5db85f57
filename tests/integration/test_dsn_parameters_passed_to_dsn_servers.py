"""NOTIFY/ORCPT and RET/ENVID reach a server that advertises DSN, on the wire (RFC 3461 §4)."""

from __future__ import annotations

import asyncio

import pytest

from mta_engine.delivery.session import SmtpSession, SmtpTimeouts
from mta_engine.smtp.body import PreparedMessage
from mta_engine.smtp.transaction import DsnParams
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration


def test_dsn_parameters_on_the_wire() -> None:
    """A DSN-capable server sees RET, ENVID, NOTIFY and ORCPT; the transaction still succeeds."""
    async def go() -> tuple[list[bytes], int]:
        async with FaultServer(Script(extensions=["PIPELINING", "DSN", "ENHANCEDSTATUSCODES"])) as server:
            s = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="c.test", timeouts=SmtpTimeouts(),
                                       mx_name="mx.test")
            r = await s.transaction("s@x.test", ["a@y.test"], PreparedMessage(b"Subject: d\r\n\r\nx\r\n"),
                                    dsn=DsnParams("FULL", "env-1", (("SUCCESS,FAILURE", "rfc822;a@old.test"),)))
            await s.close()
            return list(server.received), r.data.code if r.data else 0

    received, code = asyncio.run(go())
    assert code == 250
    mail = next(line for line in received if line.upper().startswith(b"MAIL"))
    rcpt = next(line for line in received if line.upper().startswith(b"RCPT"))
    assert b"RET=FULL" in mail and b"ENVID=env-1" in mail
    assert b"NOTIFY=SUCCESS,FAILURE" in rcpt and b"ORCPT=rfc822;a@old.test" in rcpt
