"""AUTH PLAIN after STARTTLS binds the credential's tenant and campaign to the message."""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from pathlib import Path

import pytest

from mta_engine.ingest.smtp_submit import SubmissionConfig
from tests.support.submission_server import SubmissionServer, queue_id_of
from tests.support.certs import make_certs

pytestmark = pytest.mark.integration

MESSAGE = b"From: news@acme.test\r\nSubject: hi\r\nX-Campaign: ignored\r\n\r\nbody\r\n"


@pytest.fixture
def server(tmp_path: Path):
    certs = make_certs(tmp_path / "certs", ["127.0.0.1"])
    cfg = SubmissionConfig(listen="127.0.0.1:0", require_auth=True, tls_cert=certs.cert_file, tls_key=certs.key_file,
                           users={"alice": {"password_sha256": hashlib.sha256(b"s3cret").hexdigest(),
                                            "tenant": "acme", "campaign": "spring"},
                                  "bob": {"password_env": "BOB_PASSWORD", "tenant": "globex"}})
    with SubmissionServer(tmp_path, cfg, environ={"BOB_PASSWORD": "hunter2"}) as srv:
        srv.ca_file = certs.ca_file  # type: ignore[attr-defined]
        yield srv


def _tls_client(srv: SubmissionServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", srv.port, timeout=30)
    client.ehlo("client.test")
    assert not client.has_extn("auth"), "AUTH must not be offered before TLS"
    client.starttls(context=ssl.create_default_context(cafile=srv.ca_file))  # type: ignore[attr-defined]
    client.ehlo("client.test")
    return client


def test_auth_plain_over_starttls_binds_tenant_and_campaign(server: SubmissionServer) -> None:
    """alice's message is queued for tenant acme, campaign spring (the credential beats X-Campaign)."""
    with _tls_client(server) as client:
        assert client.has_extn("auth") and "PLAIN" in client.esmtp_features["auth"]
        client.user, client.password = "alice", "s3cret"
        code, _ = client.auth("PLAIN", client.auth_plain)
        assert code == 235
        client.mail("news@acme.test")
        client.rcpt("reader@rcpt.test")
        code, reply = client.data(MESSAGE)
        assert code == 250, reply
    queued = server.queued(queue_id_of(reply))
    assert queued is not None
    assert (queued.message.tenant, queued.message.campaign) == ("acme", "spring")
    assert "with ESMTPSA;" in queued.body["raw"]


def test_auth_login_with_password_from_environment(server: SubmissionServer) -> None:
    """bob's password comes from $BOB_PASSWORD; AUTH LOGIN works; his messages belong to globex."""
    with _tls_client(server) as client:
        client.user, client.password = "bob", "hunter2"
        code, _ = client.auth("LOGIN", client.auth_login)
        assert code == 235
        _, reply = client.data(MESSAGE) if client.mail("b@globex.test") and client.rcpt("r@rcpt.test") else (0, b"")
    queued = server.queued(queue_id_of(reply))
    assert queued is not None and queued.message.tenant == "globex" and queued.message.campaign == "ignored"


def test_wrong_password_is_535_and_mail_stays_refused(server: SubmissionServer) -> None:
    """A bad password gets 535 5.7.8; the session still cannot submit (530 5.7.0)."""
    with _tls_client(server) as client:
        client.user, client.password = "alice", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.auth("PLAIN", client.auth_plain)
        assert info.value.smtp_code == 535 and info.value.smtp_error.startswith(b"5.7.8")
        code, reply = client.mail("news@acme.test")
        assert (code, reply.split()[0]) == (530, b"5.7.0")
    assert server.message_count() == 0
