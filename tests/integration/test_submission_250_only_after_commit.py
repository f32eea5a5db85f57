"""SMTP submission answers 250 only after the synced commit: the spool holds the message by then."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from mta_engine.errors import SpoolError
from tests.support.submission_server import SubmissionServer, queue_id_of

pytestmark = pytest.mark.integration

MESSAGE = "From: alice@sender.test\r\nSubject: hello\r\nX-Campaign: spring\r\n\r\nHello {{ not a template }}\r\n"


def test_queue_id_in_250_is_already_in_the_spool(tmp_path: Path) -> None:
    """A loopback client without AUTH gets 250 with a queue id whose message is committed, raw, never a template."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.test")
        client.rcpt("bob@rcpt.test")
        client.rcpt("carol@rcpt.test")
        code, reply = client.data(MESSAGE.encode())
        assert code == 250 and reply.startswith(b"2.0.0 "), reply
        queued = srv.queued(queue_id_of(reply))  # read right after the 250, no waiting
        assert queued is not None
        assert queued.message.sender == "alice@sender.test"
        assert [r.address for r in queued.recipients] == ["bob@rcpt.test", "carol@rcpt.test"]
        assert (queued.message.tenant, queued.message.campaign) == (None, "spring")
        assert queued.body["template"] is False and not queued.message.template
        raw = queued.body["raw"]
        assert raw.startswith("Received: from client.test ([127.0.0.1])")
        assert "Hello {{ not a template }}" in raw and "X-Campaign: spring" in raw
        assert "\r\nMessage-ID: <" in raw and "\r\nDate: " in raw


def test_pipelined_transactions_in_one_session_each_get_their_own_queue_id(tmp_path: Path) -> None:
    """Two transactions sent back to back on one session are both queued, with distinct ids."""
    with SubmissionServer(tmp_path) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        ids = []
        for n in range(2):
            client.ehlo("client.test")
            client.mail("alice@sender.test")
            client.rcpt(f"r{n}@rcpt.test")
            ids.append(queue_id_of(client.data(MESSAGE.encode())[1]))
        assert len(set(ids)) == 2 and all(srv.queued(i) is not None for i in ids)


class FailingCommitter:
    async def submit(self, sub: object) -> int:
        raise SpoolError("disk on fire")


def test_commit_failure_answers_451_and_queues_nothing(tmp_path: Path) -> None:
    """When the commit fails the client gets 451 4.3.0 and keeps responsibility for the message."""
    with SubmissionServer(tmp_path, committer=lambda spool: FailingCommitter()) as srv, \
            smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.test")
        client.rcpt("bob@rcpt.test")
        code, reply = client.data(MESSAGE.encode())
        assert (code, reply.split()[0]) == (451, b"4.3.0"), reply
        assert srv.message_count() == 0
