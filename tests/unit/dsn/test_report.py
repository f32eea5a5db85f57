"""RFC 3464 / RFC 6522 DSN builder: round trips through the stdlib parser (STANDARDS N01-N05)."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from email.message import EmailMessage

import pytest

from mta_engine.dsn.report import (
    DsnRequest,
    RecipientReport,
    build_dsn,
    select_recipients,
    should_send,
)
from mta_engine.errors import LocalProtocolError

ARRIVAL_S = 1_700_000_000.0
NOW_S = ARRIVAL_S + 3600
ORIGINAL = (b"From: News <news@example.com>\r\nTo: alice@example.org\r\nSubject: Hello\r\n"
            b"Message-ID: <orig.1@example.com>\r\n\r\nFirst body line\r\nSECRET BODY\r\n")
GMAIL_550 = ("550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
             "550-5.1.1 double-checking the recipient's email address for typos or\n"
             "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser "
             "a1-2b - gsmtp")

FAILED = RecipientReport("alice@example.org", "failed", "5.1.1",
                         original_recipient="rfc822;Alice@Example.org",
                         remote_mta="mx1.example.org",
                         diagnostic_code="550 5.1.1 user unknown", last_attempt_s=NOW_S - 60)
DELAYED = RecipientReport("bob@example.net", "delayed", "4.4.1", remote_mta="mx.example.net",
                          diagnostic_code="421 4.4.1 try later", last_attempt_s=NOW_S - 30,
                          will_retry_until_s=ARRIVAL_S + 5 * 86400)


def request(*recipients: RecipientReport, **changes: object) -> DsnRequest:
    req = DsnRequest(reporting_mta="mta.example.com", envelope_sender="news@example.com",
                     original_message=ORIGINAL, recipients=recipients or (FAILED,),
                     arrival_s=ARRIVAL_S, envid="campaign+2B42")
    return replace(req, **changes)  # type: ignore[arg-type]


def build(req: DsnRequest) -> bytes:
    return build_dsn(req, now_s=NOW_S, message_id="dsn.0001")


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def status_blocks(msg: EmailMessage) -> list[dict[str, str]]:
    part = list(msg.iter_parts())[1]
    assert part.get_content_type() == "message/delivery-status"
    return [{k.lower(): str(v) for k, v in block.items()} for block in part.get_payload()]


def test_dsn_is_multipart_report_with_three_parts() -> None:
    """A DSN is multipart/report; report-type=delivery-status with text, status, headers parts."""
    msg = parse(build(request()))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_per_message_fields() -> None:
    """Reporting-MTA, Original-Envelope-Id (the ENVID) and Arrival-Date are in the first block."""
    first = status_blocks(parse(build(request())))[0]
    assert first["reporting-mta"] == "dns; mta.example.com"
    assert first["original-envelope-id"] == "campaign+2B42"
    assert email.utils.parsedate_to_datetime(first["arrival-date"]).timestamp() == ARRIVAL_S


def test_no_envid_no_original_envelope_id() -> None:
    """Without ENVID the Original-Envelope-Id field is left out."""
    first = status_blocks(parse(build(request(envid=None))))[0]
    assert "original-envelope-id" not in first


def test_per_recipient_fields_of_a_failure() -> None:
    """A failure carries ORCPT, Final-Recipient, Action, Status, Remote-MTA and the reply."""
    block = status_blocks(parse(build(request())))[1]
    assert block["original-recipient"] == "rfc822;Alice@Example.org"
    assert block["final-recipient"] == "rfc822; alice@example.org"
    assert block["action"] == "failed"
    assert block["status"] == "5.1.1"
    assert block["remote-mta"] == "dns; mx1.example.org"
    assert block["diagnostic-code"] == "smtp; 550 5.1.1 user unknown"
    assert email.utils.parsedate_to_datetime(block["last-attempt-date"]).timestamp() == NOW_S - 60
    assert "will-retry-until" not in block


def test_field_names_are_found_case_insensitively() -> None:
    """The parsed blocks answer to field names in any case."""
    part = list(parse(build(request())).iter_parts())[1]
    block = part.get_payload()[1]
    assert block["FINAL-RECIPIENT"] == block["final-recipient"] == "rfc822; alice@example.org"


def test_one_dsn_for_several_recipients_with_blank_lines_between_blocks() -> None:
    """Several recipients of one message share one DSN, one blank-line-separated block each."""
    third = RecipientReport("carol@example.org", "failed", "5.2.2",
                            diagnostic_code="552 5.2.2 full")
    data = build(request(FAILED, DELAYED, third))
    blocks = status_blocks(parse(data))
    assert [b["final-recipient"] for b in blocks[1:]] == [
        "rfc822; alice@example.org", "rfc822; bob@example.net", "rfc822; carol@example.org"]
    raw_status = data.split(b"Content-Type: message/delivery-status\r\n\r\n")[1]
    assert raw_status.count(b"\r\n\r\nFinal-Recipient:") == 2  # blocks 2 and 3 (1 has ORCPT first)
    assert b"\r\n\r\nOriginal-Recipient: rfc822;Alice@Example.org\r\nFinal-Recipient:" in raw_status


def test_delayed_recipient_carries_will_retry_until() -> None:
    """A delayed action carries Will-Retry-Until and the human text says until when it retries."""
    msg = parse(build(request(DELAYED)))
    block = status_blocks(msg)[1]
    assert block["action"] == "delayed"
    assert block["status"] == "4.4.1"
    until = email.utils.parsedate_to_datetime(block["will-retry-until"]).timestamp()
    assert until == ARRIVAL_S + 5 * 86400
    text = " ".join(list(msg.iter_parts())[0].get_content().split())
    assert "delayed" in text and block["will-retry-until"] in text
    assert msg["Subject"] == "Delayed Mail (still being retried)"


def test_will_retry_until_only_for_delayed() -> None:
    """Will-Retry-Until is not written for a failed recipient even if a time is set."""
    failed = replace(FAILED, will_retry_until_s=NOW_S + 10)
    assert "will-retry-until" not in status_blocks(parse(build(request(failed))))[1]


def test_subjects_for_failed_delayed_and_mixed() -> None:
    """The subject says failed, delayed, or a neutral report when both are present."""
    assert parse(build(request(FAILED)))["Subject"] == "Undelivered Mail Returned to Sender"
    assert parse(build(request(DELAYED)))["Subject"] == "Delayed Mail (still being retried)"
    assert parse(build(request(FAILED, DELAYED)))["Subject"] == "Mail Delivery Status Report"


def test_human_text_explains_each_recipient() -> None:
    """The text part names each recipient, says failed or delayed, and quotes the server."""
    text = list(parse(build(request(FAILED, DELAYED))).iter_parts())[0].get_content()
    flat = " ".join(text.split())
    assert "<alice@example.org>: Delivery failed permanently" in flat
    assert "will not be retried" in flat
    assert "<bob@example.net>: Delivery is delayed" in flat
    assert "550 5.1.1 user unknown" in flat and "mx1.example.org" in flat


def test_ret_hdrs_returns_only_the_header_section() -> None:
    """RET=HDRS returns text/rfc822-headers with the headers and none of the body."""
    part = list(parse(build(request(ret="HDRS"))).iter_parts())[2]
    assert part.get_content_type() == "text/rfc822-headers"
    content = part.get_content()
    assert "Subject: Hello" in content and "Message-ID: <orig.1@example.com>" in content
    assert "SECRET BODY" not in content


def test_ret_full_returns_the_whole_message() -> None:
    """RET=FULL returns message/rfc822 holding the original byte for byte."""
    data = build(request(ret="full"))
    part = list(parse(data).iter_parts())[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_content()
    assert inner["Subject"] == "Hello"
    assert inner.get_content().splitlines() == ["First body line", "SECRET BODY"]
    assert ORIGINAL in data


def test_ret_full_with_an_over_long_line_falls_back_to_headers() -> None:
    """A body line over 998 octets cannot be returned as message/rfc822, so headers are returned."""
    original = ORIGINAL + b"x" * 2000 + b"\r\n"
    data = build(request(ret="FULL", original_message=original))
    assert list(parse(data).iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_over_long_header_line_is_quoted_printable_and_round_trips() -> None:
    """A header line over 998 octets is returned quoted-printable, intact after decoding."""
    long_value = "v" * 1500
    original = b"Subject: x\r\nX-Long: " + long_value.encode() + b"\r\n\r\nbody\r\n"
    data = build(request(original_message=original))
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    part = list(parse(data).iter_parts())[2]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert f"X-Long: {long_value}" in part.get_content()


def test_long_multiline_diagnostic_is_folded_and_round_trips() -> None:
    """A long multi-line reply is joined into one value, folded under 78 columns, unfolds intact."""
    rcpt = replace(FAILED, diagnostic_code=GMAIL_550)
    data = build(request(rcpt))
    raw = data.split(b"Diagnostic-Code:")[1].split(b"\r\nLast-Attempt-Date:")[0]
    assert raw.count(b"\r\n ") >= 2  # folded onto continuation lines
    assert all(len(line) <= 78 for line in (b"Diagnostic-Code:" + raw).split(b"\r\n"))
    value = status_blocks(parse(data))[1]["diagnostic-code"]
    assert value == (
        "smtp; 550 5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. "
        "https://support.google.com/mail/?p=NoSuchUser a1-2b - gsmtp")


def test_non_smtp_diagnostic_is_not_labelled_smtp() -> None:
    """A local diagnostic (no reply code) uses our own diagnostic type, not "smtp"."""
    rcpt = replace(DELAYED, diagnostic_code="connect to mx.example.net: connection timed out")
    block = status_blocks(parse(build(request(rcpt))))[1]
    expected = "X-mta-engine; connect to mx.example.net: connection timed out"
    assert block["diagnostic-code"] == expected


def test_non_ascii_and_controls_in_a_reply_are_escaped() -> None:
    """Status fields stay US-ASCII: non-ASCII becomes \\x{HEX} and controls become spaces."""
    rcpt = replace(FAILED, diagnostic_code="550 5.1.1 Empfänger\tunbekannt")
    data = build(request(rcpt))
    value = status_blocks(parse(data))[1]["diagnostic-code"]
    assert value == "smtp; 550 5.1.1 Empf\\x{E4}nger unbekannt"


def test_output_uses_crlf_only_and_short_lines() -> None:
    """Every line ends in CRLF (no bare CR or LF) and none exceeds 998 octets."""
    original = b"Subject: bare lf\nX-A: b\r\n\nbody\rmore\n"
    data = build(request(FAILED, DELAYED, original_message=original, ret="FULL"))
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_top_level_headers() -> None:
    """From, To, Date (numeric zone), Message-ID, MIME-Version and Auto-Submitted are set once."""
    data = build(request())
    msg = parse(data)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mta.example.com>"
    assert b"\r\nTo: <news@example.com>\r\n" in data
    assert msg["To"].addresses[0].addr_spec == "news@example.com"
    assert msg["Message-ID"] == "<dsn.0001@localhost>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"].datetime.timestamp() == NOW_S
    assert msg["Date"].endswith("+0000")
    header_lines = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    for name in (b"From:", b"To:", b"Date:", b"Message-ID:", b"Subject:"):
        assert sum(line.startswith(name) for line in header_lines) == 1


def test_message_id_and_from_can_be_given_in_full() -> None:
    """A Message-ID with a domain and a full From address are used as given."""
    req = request(from_address="bounces@example.com", message_id_domain="example.com")
    msg = parse(build_dsn(req, now_s=NOW_S, message_id="<x.1@dsn.example.com>"))
    assert msg["Message-ID"] == "<x.1@dsn.example.com>"
    assert msg["From"] == "Mail Delivery System <bounces@example.com>"


def test_output_is_deterministic() -> None:
    """The same request, time and Message-ID give the same bytes (no hidden clock or randomness)."""
    assert build(request(FAILED, DELAYED)) == build(request(FAILED, DELAYED))


def test_boundary_never_occurs_in_the_content() -> None:
    """An original that contains the natural boundary string still parses into three parts."""
    first = build(request())
    boundary = parse(first).get_boundary()
    assert boundary is not None
    original = ORIGINAL + b"--" + boundary.encode() + b"\r\n"
    msg = parse(build(request(original_message=original, ret="FULL")))
    assert msg.get_boundary() != boundary
    assert len(list(msg.iter_parts())) == 3


@pytest.mark.parametrize("sender", ["", "<>", "  "])
def test_null_sender_gets_no_dsn(sender: str) -> None:
    """A null reverse-path never gets a DSN (RFC 5321 §6.1): should_send False, build refuses."""
    req = request(envelope_sender=sender)
    assert should_send(req) is False
    with pytest.raises(LocalProtocolError):
        build(req)


def test_should_send_for_a_real_sender() -> None:
    """A real reverse-path gets its DSN."""
    assert should_send(request()) is True


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"action": "bounced"}, "action"), ({"status": "550"}, "status"),
     ({"final_recipient": ""}, "final_recipient")],
)
def test_recipient_report_validates(kwargs: dict[str, str], field: str) -> None:
    """A report with an unknown action, a malformed status or no recipient is refused."""
    with pytest.raises(ValueError, match=field):
        replace(FAILED, **kwargs)  # type: ignore[arg-type]


def test_request_validates_ret_and_recipients() -> None:
    """RET must be FULL or HDRS and a DSN must be about at least one recipient."""
    with pytest.raises(ValueError, match="ret"):
        request(ret="BODY")
    with pytest.raises(ValueError, match="recipient"):
        replace(request(), recipients=())


@pytest.mark.parametrize(
    ("notify", "action", "expected"),
    [
        ("NEVER", "failed", False),
        ("NEVER", "delayed", False),
        ("never", "delivered", False),
        (None, "failed", True),
        (None, "delayed", True),
        (None, "delivered", False),
        (None, "relayed", False),
        ("", "failed", True),
        ("SUCCESS", "delivered", True),
        ("SUCCESS", "relayed", True),
        ("SUCCESS", "expanded", True),
        ("SUCCESS", "failed", False),
        ("FAILURE", "failed", True),
        ("FAILURE", "delayed", False),
        ("FAILURE,DELAY", "delayed", True),
        ("success, failure", "failed", True),
        ("DELAY", "delivered", False),
    ],
)
def test_select_recipients_follows_notify(notify: str | None, action: str, expected: bool) -> None:
    """RFC 3461 §4.1 NOTIFY picks the actions that get a DSN; without it, failures and delays."""
    assert select_recipients(notify, action) is expected


def test_delays_without_notify_follow_engine_policy() -> None:
    """Without NOTIFY, engine policy can turn delayed DSNs off; an explicit DELAY still wins."""
    assert select_recipients(None, "delayed", delay_by_default=False) is False
    assert select_recipients("DELAY", "delayed", delay_by_default=False) is True


def test_select_recipients_rejects_unknown_action() -> None:
    """An action outside RFC 3464 §2.3.3 is a programming error."""
    with pytest.raises(ValueError):
        select_recipients(None, "bounced")
