"""An 8-bit UTF-8 body with BODY=8BITMIME is stored as sent; non-UTF-8 8-bit content is refused."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.support.submission_server import SubmissionServer, queue_id_of

pytestmark = pytest.mark.integration

BODY_8BIT = "From: jörg@sender.test\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n" \
            "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln — ☃\r\n"


def test_8bit_body_with_body_8bitmime_is_queued_verbatim(tmp_path: Path) -> None:
    """MAIL ... BODY=8BITMIME SMTPUTF8 with a UTF-8 body and address: 250, and the text is unchanged."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        code, _ = client.mail("jörg@sender.test", ["BODY=8BITMIME", "SMTPUTF8"])
        assert code == 250
        client.rcpt("zoë@rcpt.test")
        code, reply = client.data(BODY_8BIT.encode("utf-8"))
        assert code == 250, reply
        queued = srv.queued(queue_id_of(reply))
        assert queued is not None
        assert queued.body["raw"].endswith(BODY_8BIT)
        assert queued.message.sender == "jörg@sender.test" and queued.recipients[0].address == "zoë@rcpt.test"


def test_non_ascii_address_without_smtputf8_is_553(tmp_path: Path) -> None:
    """A UTF-8 mailbox without SMTPUTF8 on MAIL is refused with 553 5.6.7 (RFC 6531)."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        client.command_encoding = "utf-8"  # smtplib would refuse to send the address otherwise
        code, reply = client.mail("jörg@sender.test", ["BODY=8BITMIME"])
        assert (code, reply.split()[0]) == (553, b"5.6.7"), reply


def test_non_utf8_8bit_body_is_554(tmp_path: Path) -> None:
    """Latin-1 octets in the body cannot be stored as message text: 554 5.6.0, nothing queued."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test", ["BODY=8BITMIME"])
        client.rcpt("b@rcpt.test")
        code, reply = client.data("From: a@sender.test\r\n\r\nGr\xfc\xdfe\r\n".encode("latin-1"))
        assert (code, reply.split()[0]) == (554, b"5.6.0"), reply
        assert srv.message_count() == 0
