"""Submission listener policy as pure values: config checks, credentials, trust, replies, message prep."""

from __future__ import annotations

import hashlib

import pytest

from mta_engine.errors import ConfigError
from mta_engine.ingest.bsmtp import EnvelopeRefused
from mta_engine.ingest.smtp_submit import (SubmissionConfig, TrustedNetworks, check_password,
                                           credentials_from_config, enhance_reply, prepare_message, received_header)

NOW = 1_700_000_000.0


def test_defaults_are_the_documented_ones() -> None:
    """Defaults: loopback:2525, 50 MiB, trusted loopback, no TLS, no users, AUTH only over TLS."""
    cfg = SubmissionConfig()
    assert (cfg.listen, cfg.max_message_bytes, cfg.require_auth, cfg.trusted_networks, cfg.tls_cert, cfg.users,
            cfg.auth_require_tls) == ("127.0.0.1:2525", 50 << 20, False, ["127.0.0.0/8", "::1/128"], "", {}, True)
    assert cfg.problems() == []


@pytest.mark.parametrize("kwargs, key", [
    ({"listen": "2525"}, "listen"),
    ({"trusted_networks": ["10.0.0.1/8"]}, "trusted_networks[0]"),
    ({"tls_cert": "/nonexistent.pem"}, "tls_cert"),
    ({"require_auth": True}, "require_auth"),
    ({"users": {"u": {"password_sha256": "00", "tenant": "t"}}, "auth_require_tls": False}, "users.u.password_sha256"),
    ({"users": {"u": {"password_env": "X"}}, "auth_require_tls": False}, "users.u.tenant"),
    ({"users": {"u": {"password_env": "X", "tenant": "t"}}}, "auth_require_tls"),
])
def test_config_problems_name_the_key(kwargs: dict, key: str) -> None:
    """Each unusable setting is reported under its own key."""
    assert key in [k for k, _ in SubmissionConfig(**kwargs).problems()]


def test_credentials_from_hash_or_environment() -> None:
    """password_sha256 is compared as a digest; password_env is read from the given environment."""
    table = credentials_from_config({"a": {"password_sha256": hashlib.sha256(b"pw").hexdigest(), "tenant": "t1"},
                                     "b": {"password_env": "B_PW", "tenant": "t2", "campaign": "c"}},
                                    {"B_PW": "secret"})
    assert check_password(table, b"a", b"pw") == table["a"]
    assert check_password(table, b"b", b"secret") == table["b"] and table["b"].campaign == "c"
    assert check_password(table, b"a", b"secret") is None and check_password(table, b"nobody", b"pw") is None
    assert "pw" not in repr(table["a"]) and "password" not in repr(table["a"])


def test_missing_password_env_is_a_config_error() -> None:
    """A credential whose environment variable is unset refuses to start rather than accept any password."""
    with pytest.raises(ConfigError, match="B_PW"):
        credentials_from_config({"b": {"password_env": "B_PW", "tenant": "t"}}, {})


def test_trusted_networks() -> None:
    """Membership by network; IPv4-mapped IPv6 peers count as their IPv4 address; junk is untrusted."""
    nets = TrustedNetworks(["127.0.0.0/8", "::1/128"])
    assert "127.0.0.5" in nets and "::1" in nets and "::ffff:127.0.0.1" in nets
    assert "10.0.0.1" not in nets and "not-an-ip" not in nets and "127.0.0.1" not in TrustedNetworks([])
    assert repr(TrustedNetworks([])) == "<TrustedNetworks none>"


@pytest.mark.parametrize("line, expected", [
    ("250 OK", "250 2.0.0 OK"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
    ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
    ("535 5.7.8 Authentication credentials invalid", "535 5.7.8 Authentication credentials invalid"),
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
    ("421 Error: timeout", "421 4.4.2 Error: timeout"),
    ("250", "250"),
])
def test_enhance_reply(line: str, expected: str) -> None:
    """Stock replies without an RFC 3463 code get one; 3xx and already-coded replies are unchanged."""
    assert enhance_reply(line) == expected


def test_prepare_message_adds_trace_date_and_message_id() -> None:
    """A Received field is prepended; Date and Message-ID are added only when missing (RFC 6409 §8)."""
    trace = received_header(helo="c.test", peer_ip="127.0.0.1", hostname="s.test", protocol="ESMTPSA", now_s=NOW)
    text, campaign = prepare_message(b"From: a@s.test\r\nX-Campaign: q1\r\n\r\nhi\r\n", trace=trace, now_s=NOW,
                                     message_id="id1@s.test")
    assert text.startswith("Received: from c.test ([127.0.0.1])\r\n\tby s.test (mta-engine) with ESMTPSA;\r\n\t")
    assert "\r\nDate: Tue, 14 Nov 2023 22:13:20 -0000\r\nMessage-ID: <id1@s.test>\r\nFrom: a@s.test\r\n" in text
    assert campaign == "q1"
    kept, _ = prepare_message(b"Date: x\r\nMessage-ID: <m@x>\r\nFrom: a@s.test\r\n\r\nhi\r\n", trace="Received: t",
                              now_s=NOW, message_id="unused")
    assert kept == "Received: t\r\nDate: x\r\nMessage-ID: <m@x>\r\nFrom: a@s.test\r\n\r\nhi\r\n"


@pytest.mark.parametrize("content, code", [
    (b"From: a@s.test\r\n\r\nGr\xfc\xdfe\r\n", 554),
    (b"Subject: no from\r\n\r\nx\r\n", 550),
    (b"From: a@s.test\r\n\r\n" + b"x" * 999 + b"\r\n", 550),
    (b"From: a@s.test\r\nX-Campaign: \x01\r\n\r\nx\r\n", 550),
])
def test_prepare_message_refusals(content: bytes, code: int) -> None:
    """Non-UTF-8 content, a missing From:, an overlong line or a bad X-Campaign are refused with x.6.0."""
    with pytest.raises(EnvelopeRefused) as info:
        prepare_message(content, trace="Received: t", now_s=NOW, message_id="m@x")
    assert info.value.code == code and info.value.enhanced == "5.6.0"


def test_received_header_strips_comment_breakers_from_helo() -> None:
    """A hostile HELO cannot close the trace comment or inject lines."""
    h = received_header(helo="evil)\r\nX-Bad: 1", peer_ip="127.0.0.1", hostname="s", protocol="ESMTP", now_s=NOW)
    assert "\r\nX-Bad" not in h and ")" not in h.split("([")[0]
