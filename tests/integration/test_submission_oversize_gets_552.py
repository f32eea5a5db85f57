"""A message over max_message_bytes is refused with 552 5.3.4, declared (SIZE=) or not."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from mta_engine.ingest.smtp_submit import SubmissionConfig
from tests.support.submission_server import SubmissionServer

pytestmark = pytest.mark.integration

BIG = b"From: a@sender.test\r\n\r\n" + b"x" * 70 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 100


@pytest.fixture
def server(tmp_path: Path):
    with SubmissionServer(tmp_path, SubmissionConfig(listen="127.0.0.1:0", max_message_bytes=4096)) as srv:
        yield srv


def test_declared_size_over_limit_is_552_at_mail(server: SubmissionServer) -> None:
    """EHLO advertises SIZE 4096; MAIL FROM ... SIZE=8000 gets 552 5.3.4 before any data is sent."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == "4096"
        code, reply = client.mail("a@sender.test", ["SIZE=8000"])
        assert (code, reply.split()[0]) == (552, b"5.3.4"), reply


def test_undeclared_oversize_data_is_552_after_data(server: SubmissionServer) -> None:
    """Without SIZE=, an oversize body is read to its end and then refused with 552 5.3.4; nothing is queued."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        client.rcpt("b@rcpt.test")
        code, reply = client.data(BIG)
        assert (code, reply.split()[0]) == (552, b"5.3.4"), reply
        assert client.noop()[0] == 250  # the session survives
    assert server.message_count() == 0
