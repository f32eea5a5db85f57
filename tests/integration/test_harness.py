"""The loopback harness itself: smtp-sink counts, the recording receiver records and refuses,
dnsmasq serves the domain mix."""

from __future__ import annotations

import smtplib
from pathlib import Path

import dns.resolver
import pytest

from tests.support.dnsmasq import DnsServer, spread_sites
from tests.support.procs import ManagedProcess, free_port, wait_for, wait_port
from tests.support.sinks import RecordingReceiver, SmtpSink

pytestmark = pytest.mark.integration

DOMAIN_MIX = Path(__file__).resolve().parents[3] / "shared" / "data" / "domain-mix.csv"  # ../shared beside the repo
SINK_IPS = [f"127.0.0.{i}" for i in range(10, 18)]
MESSAGE = b"Subject: harness\r\nFrom: a@src.test\r\n\r\n.leading dot\r\nbody\r\n"


def test_smtp_sink_counts_messages_in_fast_mode() -> None:
    """smtp-sink without dumping still counts each message sent with smtplib."""
    with SmtpSink(host="127.0.0.12") as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
            client.sendmail("a@src.test", ["c@dst.test"], MESSAGE)
        wait_for(lambda: sink.count_messages() == 2, 5.0, what="smtp-sink to count 2 messages")


def test_smtp_sink_dumps_envelope_and_body() -> None:
    """With dump=True each message is a file carrying its envelope and body."""
    with SmtpSink(dump=True) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.sendmail("a@src.test", ["b@dst.test", "c@dst.test"], MESSAGE)
        wait_for(lambda: sink.count_messages() == 1, 5.0, what="smtp-sink to count 1 message")
        [message] = sink.messages()
        assert message["mail_from"] == "a@src.test"
        assert message["rcpt_tos"] == ["b@dst.test", "c@dst.test"]
        assert b".leading dot\n" in message["data"]
        assert sink.count_recipients() == 2


def test_recording_receiver_stores_exact_data(tmp_path: Path) -> None:
    """The receiver keeps the envelope and the DATA bytes, dot-unstuffed, as received."""
    with RecordingReceiver("127.0.0.1", free_port(), tmp_path / "rcv") as receiver:
        with smtplib.SMTP(receiver.host, receiver.port, timeout=10) as client:
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
        [message] = receiver.messages()
    assert message["mail_from"] == "a@src.test"
    assert message["rcpt_tos"] == ["b@dst.test"]
    assert message["data"] == MESSAGE
    assert message["peer"][0] == "127.0.0.1"


def test_recording_receiver_applies_rcpt_and_data_rules(tmp_path: Path) -> None:
    """A 550 rule refuses only the matching recipient; a data rule defers the message."""
    rules = {
        "rcpt": [{"prefix": "bounce", "reply": "550 5.1.1 No such user"}],
        "data": [{"prefix": "defer", "reply": "451 4.3.0 Try later"}],
    }
    with RecordingReceiver("127.0.0.1", free_port(), tmp_path / "rcv", rules=rules) as receiver:
        with smtplib.SMTP(receiver.host, receiver.port, timeout=10) as client:
            refused = client.sendmail("a@src.test", ["bounce-1@dst.test", "ok@dst.test"], MESSAGE)
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail("a@src.test", ["defer-1@dst.test"], MESSAGE)
        assert refused == {"bounce-1@dst.test": (550, b"5.1.1 No such user")}
        assert info.value.smtp_code == 451
        [accepted] = receiver.messages()
        assert accepted["rcpt_tos"] == ["ok@dst.test"]
        [_, deferred] = receiver.messages(accepted_only=False)
        assert deferred["reply"].startswith("451")
        replies = [(e["rcpt"], e["reply"][:3]) for e in receiver.rcpt_events()]
        assert replies == [
            ("bounce-1@dst.test", "550"),
            ("ok@dst.test", "250"),
            ("defer-1@dst.test", "250"),
        ]


def test_dns_server_serves_mx_from_domain_mix() -> None:
    """Every domain of the mix gets MX mx.<site>.test, whose A is one of the sink addresses."""
    pick = spread_sites(SINK_IPS)
    with DnsServer.from_domain_mix(DOMAIN_MIX, pick) as server:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server.host]
        resolver.port = server.port
        mx = resolver.resolve("gmail-like.test", "MX")
        assert [(r.preference, str(r.exchange)) for r in mx] == [(10, "mx.site-g.test.")]
        a = resolver.resolve("mx.site-g.test", "A")
        assert [r.address for r in a] == [pick("site-g")]
        assert pick("site-g") in SINK_IPS


def test_managed_process_stops_by_pid(tmp_path: Path) -> None:
    """stop() ends a child that ignores nothing and reports its exit status."""
    port = free_port()
    code = (
        "import socket,time\n"
        f"s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen()\n"
        "while True: s.accept()\n"
    )
    proc = ManagedProcess(["python3", "-c", code], tmp_path / "child.log")
    with proc:
        wait_port("127.0.0.1", port, 5.0, proc=proc)
        assert proc.running
    assert not proc.running
    assert proc.returncode is not None and proc.returncode < 0
    assert "running" not in repr(proc)


def test_wait_for_names_what_it_waited_for() -> None:
    """A timed-out wait raises AssertionError naming the awaited condition."""
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, 0.05, what="the impossible")
