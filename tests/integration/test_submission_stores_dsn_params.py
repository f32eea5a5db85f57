"""DSN parameters (RFC 3461) given in the SMTP envelope are stored with the message and recipients."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.support.submission_server import SubmissionServer, queue_id_of

pytestmark = pytest.mark.integration


def test_ret_envid_notify_orcpt_are_stored_decoded(tmp_path: Path) -> None:
    """RET/ENVID land on the message and NOTIFY/ORCPT on their recipient, xtext-decoded; others stay None."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn") and client.has_extn("enhancedstatuscodes") and client.has_extn("pipelining")
        code, _ = client.mail("a@sender.test", ["RET=HDRS", "ENVID=Batch+2B42"])
        assert code == 250
        code, _ = client.rcpt("bob@rcpt.test", ["NOTIFY=success,failure", "ORCPT=rfc822;Bob+40old.test"])
        assert code == 250
        client.rcpt("carol@rcpt.test")
        code, reply = client.data(b"From: a@sender.test\r\n\r\nx\r\n")
        assert code == 250, reply
        queued = srv.queued(queue_id_of(reply))
        assert queued is not None
        assert (queued.message.ret, queued.message.envid) == ("HDRS", "Batch+42")
        assert [(r.notify, r.orcpt) for r in queued.recipients] == [("SUCCESS,FAILURE", "rfc822;Bob@old.test"),
                                                                (None, None)]


@pytest.mark.parametrize("params, code, enhanced", [
    (["NOTIFY=SOMETIMES"], 501, b"5.5.4"),
    (["NOTIFY=NEVER,SUCCESS"], 501, b"5.5.4"),
    (["ORCPT=no-semicolon"], 501, b"5.5.4"),
    (["ORCPT=rfc822;bad+ZZ"], 501, b"5.5.4"),
    (["FOO=1"], 555, b"5.5.4"),
])
def test_bad_rcpt_parameters_are_refused_at_rcpt(tmp_path: Path, params: list[str], code: int,
                                                 enhanced: bytes) -> None:
    """A malformed NOTIFY/ORCPT or an unknown parameter is refused for that RCPT only."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        got, reply = client.rcpt("bob@rcpt.test", params)
        assert (got, reply.split()[0]) == (code, enhanced), reply
        assert client.rcpt("carol@rcpt.test")[0] == 250


def test_invalid_recipient_is_553_513(tmp_path: Path) -> None:
    """An address that fails model.address_problem is refused at RCPT with 553 5.1.3."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        code, reply = client.rcpt("bob@localhost")
        assert (code, reply.split()[0]) == (553, b"5.1.3"), reply
