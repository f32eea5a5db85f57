"""An unauthenticated client outside trusted_networks can never submit: 530 5.7.0, nothing queued."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from mta_engine.ingest.smtp_submit import SubmissionConfig
from tests.support.submission_server import SubmissionServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("require_auth", [False, True])
def test_untrusted_unauthenticated_client_gets_530(tmp_path: Path, require_auth: bool) -> None:
    """With trusted_networks = [] (loopback is untrusted), MAIL, RCPT and DATA all answer 530 5.7.0."""
    cfg = SubmissionConfig(listen="127.0.0.1:0", trusted_networks=[], require_auth=require_auth,
                           users={"u": {"password_sha256": "0" * 64, "tenant": "t"}}, auth_require_tls=False)
    with SubmissionServer(tmp_path, cfg) as srv, smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("client.test")
        for code, reply in (client.mail("a@sender.test"), client.rcpt("b@rcpt.test"), client.docmd("DATA")):
            assert (code, reply.split()[0]) == (530, b"5.7.0"), reply
        assert srv.message_count() == 0
