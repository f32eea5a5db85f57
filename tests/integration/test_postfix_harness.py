"""The private Postfix harness: a receiver that keeps what arrived, a relay peer via a transport map.

Postfix (3.7 on Debian) changes a received message only by prepending one header, its smtpd's
``Received: from ... by <myhostname> (Postfix) with ESMTP id ...``; ``messages()`` splits that
header off into ``received_header`` and gives the rest back as ``data`` with CRLF line ends. The
pipe delivery adds no Return-Path/Delivered-To/X-Original-To (no pipe flags are set), and
cleanup adds no Message-ID/Date/To because ``local_header_rewrite_clients`` is empty.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postfix import PostfixInstance, postfix_processes
from tests.support.procs import wait_for
from tests.support.sinks import SmtpSink

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance needs root"),
    pytest.mark.skipif(not Path("/usr/sbin/postfix").exists(), reason="postfix not installed"),
]

MESSAGE = (
    b"Subject: postfix harness\r\n"
    b"From: a@src.test\r\n"
    b"To: b@dst.test\r\n"
    b"\r\n"
    b".leading dot survives stuffing\r\n"
    b"..two dots\r\n"
    b"body line\r\n"
)


def _assert_gone(instance_dir: Path, config_dir: Path) -> None:
    """Nothing of the instance runs any more: no MAIL_CONFIG=<conf>, no argv with its dir."""
    assert postfix_processes(config_dir) == []
    pgrep = subprocess.run(["pgrep", "-f", str(instance_dir)], capture_output=True, text=True)
    assert pgrep.stdout.strip() == "", f"left over: {pgrep.stdout}"
    assert not instance_dir.exists()


ReceiverFactory = Callable[..., PostfixInstance]


@pytest.fixture
def receiver_factory() -> Iterator[ReceiverFactory]:
    """Start receivers; each is cleaned up and checked gone at the end of the test."""
    made: list[tuple[PostfixInstance, Path, Path]] = []

    def make(**kwargs: Any) -> PostfixInstance:
        instance = PostfixInstance("receiver", **kwargs).start()
        made.append((instance, instance.dir, instance.config_dir))
        return instance

    yield make
    for instance, instance_dir, config_dir in made:
        warnings = [line for line in instance.log_text().splitlines() if "warning:" in line]
        instance.cleanup()
        assert warnings == [], "\n".join(warnings)
        _assert_gone(instance_dir, config_dir)


def test_receiver_keeps_message_byte_identical(receiver_factory: ReceiverFactory) -> None:
    """smtplib -> Postfix -> pipe store: envelope kept, data equal after the own Received."""
    pf = receiver_factory(host="127.0.0.41")
    with smtplib.SMTP(pf.host, pf.port, timeout=10) as client:
        client.sendmail("a@src.test", ["b@dst.test", "Mixed.Case@other.test"], MESSAGE)
        client.sendmail("", ["null-sender@dst.test"], MESSAGE)
    # Deliveries run in parallel: order by sender, not by arrival.
    second, first = sorted(pf.wait_messages(2), key=lambda m: m["mail_from"])
    assert first["mail_from"] == "a@src.test"
    # One delivery for both (constant nexthop), address case kept.
    assert sorted(first["rcpts"]) == ["Mixed.Case@other.test", "b@dst.test"]
    assert first["data"] == MESSAGE
    header = first["received_header"].decode()
    assert header.startswith("Received: from ")
    assert f"by {pf.hostname} (Postfix) with ESMTP id" in header
    assert first["raw"] == first["received_header"] + MESSAGE.replace(b"\r\n", b"\n")
    assert second["mail_from"] == ""
    assert second["rcpts"] == ["null-sender@dst.test"]
    assert second["data"] == MESSAGE
    # pipe logs after the store command exits, and postlogd writes asynchronously: poll.
    wait_for(
        lambda: pf.log_text().count("status=sent (delivered via store service)") == 3,
        10.0,
        what="3 status=sent lines in the maillog",
    )


def test_receiver_answers_452_to_recipient_over_limit(receiver_factory: ReceiverFactory) -> None:
    pf = receiver_factory(smtpd_recipient_limit=50, host="127.0.0.42")
    with smtplib.SMTP(pf.host, pf.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("a@src.test")[0] == 250
        for i in range(50):
            assert client.rcpt(f"r{i}@dst.test")[0] == 250, i
        code, text = client.rcpt("r50@dst.test")
        assert code == 452, text
        assert b"too many recipients" in text.lower()
        code, _ = client.data(MESSAGE)
        assert code == 250
    [message] = pf.wait_messages(1)
    # qmgr sorts a message's recipients: the order is Postfix's, not the RCPT order.
    assert sorted(message["rcpts"]) == sorted(f"r{i}@dst.test" for i in range(50))


def test_receiver_advertises_size_and_chunking(receiver_factory: ReceiverFactory) -> None:
    pf = receiver_factory(message_size_limit=123_456)
    with smtplib.SMTP(pf.host, pf.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == "123456"
        assert "chunking" in client.esmtp_features
        assert "starttls" not in client.esmtp_features
    plain = receiver_factory(chunking=False)
    with smtplib.SMTP(plain.host, plain.port, timeout=10) as client:
        client.ehlo("client.test")
        assert "chunking" not in client.esmtp_features
        assert "size" in client.esmtp_features
    # Oversized mail is refused at MAIL FROM when the client declares SIZE=.
    with smtplib.SMTP(pf.host, pf.port, timeout=10) as client:
        client.ehlo("client.test")
        code, _ = client.mail("a@src.test", ["SIZE=200000"])
        assert code == 552


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=postfix-receiver.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_receiver_with_tls_advertises_starttls(
    receiver_factory: ReceiverFactory, self_signed: tuple[Path, Path]
) -> None:
    pf = receiver_factory(tls=self_signed, host="127.0.0.43")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed test certificate
    with smtplib.SMTP(pf.host, pf.port, timeout=10) as client:
        client.ehlo("client.test")
        assert "starttls" in client.esmtp_features
        code, _ = client.starttls(context=context)
        assert code == 220
        client.ehlo("client.test")
        client.sendmail("a@src.test", ["tls@dst.test"], MESSAGE)
    [message] = pf.wait_messages(1)
    assert message["data"] == MESSAGE
    assert "with ESMTPS id" in message["received_header"].decode()


@pytest.mark.parametrize("tuned", [False, True], ids=["default", "tuned"])
def test_relay_delivers_through_transport_map_to_sink(tuned: bool) -> None:
    """The relay peer routes by its transport map to smtp-sink and its queue drains."""
    with SmtpSink(host="127.0.0.44", dump=True) as sink:
        routes = {"routed.test": (sink.host, sink.port)}
        relay = PostfixInstance("relay", host="127.0.0.45", routes=routes, tuned=tuned)
        with relay:
            instance_dir, config_dir = relay.dir, relay.config_dir
            with smtplib.SMTP(relay.host, relay.port, timeout=10) as client:
                client.sendmail("a@src.test", ["x@routed.test", "y@routed.test"], MESSAGE)
            wait_for(lambda: sink.count_messages() == 1, 15.0, what="the sink to get 1 message")
            wait_for(relay.queue_empty, 15.0, what="the relay queue to drain")
            [message] = sink.messages()
            assert message["mail_from"] == "a@src.test"
            assert message["rcpt_tos"] == ["x@routed.test", "y@routed.test"]
            assert b".leading dot survives stuffing\n..two dots\n" in message["data"]
            sent = f"relay={sink.host}[{sink.host}]:{sink.port}"
            wait_for(
                lambda: relay.log_text().count(sent) == 2 and "status=sent" in relay.log_text(),
                10.0,
                what="the relay to log 2 deliveries to the sink",
            )
            assert "warning:" not in relay.log_text()
        _assert_gone(instance_dir, config_dir)


def test_relay_queue_reports_mail_it_cannot_deliver_yet() -> None:
    """queue() shows a deferred message (its route is a closed port): queue_empty() is false."""
    with SmtpSink(host="127.0.0.46") as sink:
        closed_port = sink.port
    routes = {"down.test": ("127.0.0.46", closed_port)}
    with PostfixInstance("relay", host="127.0.0.47", routes=routes) as relay:
        with smtplib.SMTP(relay.host, relay.port, timeout=10) as client:
            client.sendmail("a@src.test", ["z@down.test"], MESSAGE)
        wait_for(
            lambda: any(
                r.get("delay_reason") for m in relay.queue() for r in m.get("recipients", [])
            ),
            15.0,
            what="the message to be deferred",
        )
        assert not relay.queue_empty()
        [queued] = relay.queue()
        assert queued["queue_name"] == "deferred"
        assert "Connection refused" in queued["recipients"][0]["delay_reason"]
