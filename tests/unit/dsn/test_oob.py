"""Out-of-band bounces: RFC 3464 DSNs and plain-text bounces parse to per-recipient failures."""
from __future__ import annotations

import pytest

from mta_engine.dsn.classify import Classifier
from mta_engine.dsn.oob import classify, clean, parse_dsn, parse_message, parse_text_bounce
from mta_engine.dsn.verp import RecipientRef
from tests.support import reports as R

DOMAINS = frozenset({"bounce.test"})
MID = "<00000000000000a1.3@mta.test>"
ORIG = R.original_headers(message_id=MID, return_path="bounces+00000000000000a1.3@bounce.test", to="gone@example.net")
C = Classifier.default()


def dsn(raw: bytes):
    return parse_dsn(parse_message(raw), DOMAINS, raw.decode())


@pytest.mark.parametrize("build, address, status, code, category", [
    (R.gmail_dsn, "gone@example.net", "5.1.1", 550, "invalid_recipient"),
    (R.outlook_ndr, "gone@contoso.example", "5.1.10", 550, "invalid_recipient"),
    (R.postfix_dsn, "gone@example.net", "5.1.1", 550, "invalid_recipient"),
])
def test_provider_dsn_gives_recipient_status_and_category(build, address, status, code, category) -> None:
    """Gmail, Exchange Online and Postfix DSNs: Final-Recipient, Status, the smtp Diagnostic-Code, classified."""
    rep = dsn(build(address, ORIG))
    assert rep is not None and rep.format == "dsn"
    (rs,) = rep.recipients
    assert (rs.final_recipient, rs.action, rs.status, rs.code) == (address, "failed", status, code)
    verdict = classify(C, rs)
    assert (verdict.category, verdict.permanence) == (category, "permanent")
    assert rep.original.message_id == MID
    assert rep.refs[0] == RecipientRef(0xA1, 3, "return_path") and RecipientRef(0xA1, 3, "message_id") in rep.refs


def test_folded_diagnostic_is_unfolded_on_one_line() -> None:
    """A multi-line Diagnostic-Code becomes one line, without the smtp; type."""
    (rs,) = dsn(R.gmail_dsn("gone@example.net", ORIG)).recipients
    assert rs.diagnostic.startswith("550-5.1.1 The email account that you tried to reach does not exist. Please")
    assert "\n" not in rs.diagnostic and "  " not in rs.diagnostic


def test_delayed_dsn_is_transient_even_with_a_permanent_looking_text() -> None:
    """Action: delayed is a warning: never permanent, whatever the classifier would say."""
    raw = R.postfix_dsn("slow@example.net", ORIG, action="delayed", status="4.4.1",
                        diagnostic="X-Postfix; connect to mailstore.example.net[198.51.100.4]:25: Connection timed out")
    (rs,) = dsn(raw).recipients
    assert rs.action == "delayed" and rs.code is None
    assert classify(C, rs).permanence == "transient"
    raw = R.postfix_dsn("slow@example.net", ORIG, action="delayed", status="5.1.1")
    assert classify(C, dsn(raw).recipients[0]).permanence == "transient"


def test_delivered_actions_are_not_failures() -> None:
    """A success DSN (Action: delivered/relayed) has no recipient to report."""
    rep = dsn(R.postfix_dsn("ok@example.net", ORIG, action="relayed", status="2.0.0"))
    assert rep is not None and rep.recipients == ()


def test_base64_delivery_status_part_is_read() -> None:
    """Some MTAs encode the delivery-status part; its field blocks are still found."""
    import base64
    raw = R.postfix_dsn("gone@example.net", ORIG).decode()
    head, _, rest = raw.partition("Content-Type: message/delivery-status\r\n\r\n")
    fields, sep, tail = rest.partition("\r\n--3F1A2B0C11")
    encoded = base64.encodebytes(fields.encode()).decode().replace("\n", "\r\n")
    raw2 = head + "Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + \
        sep + tail
    (rs,) = dsn(raw2.encode()).recipients
    assert (rs.final_recipient, rs.status) == ("gone@example.net", "5.1.1")


def test_non_reports_are_not_dsns() -> None:
    """A plain message, or a feedback report, is not parsed as a DSN."""
    assert dsn(b"From: a@b.test\r\nSubject: hi\r\n\r\nhello\r\n") is None
    assert dsn(R.yahoo_arf("c@yahoo.example", ORIG, mail_from="x@bounce.test")) is None


def test_exim_text_bounce_names_recipient_and_reply() -> None:
    """A plain-text Exim report: the failed address and the remote reply, classified inactive."""
    raw = R.exim_text_bounce("olduser@exim.example", ORIG)
    rep = parse_text_bounce(parse_message(raw), "", DOMAINS, raw.decode(), ignore_domains=DOMAINS)
    assert rep is not None and rep.format == "text"
    (rs,) = rep.recipients
    assert (rs.final_recipient, rs.code, rs.status) == ("olduser@exim.example", 550, "5.2.1")
    assert rs.diagnostic == "550 5.2.1 Mailbox disabled, not accepting messages"
    assert (classify(C, rs).category, classify(C, rs).permanence) == ("inactive_mailbox", "permanent")
    assert rep.refs[0] == RecipientRef(0xA1, 3, "return_path")  # from the inline copy of the message


def test_qmail_failure_notice_uses_its_hash_code() -> None:
    """qmail's "(#5.1.1)" is an RFC 3463 code: invalid recipient, permanent."""
    raw = R.qmail_failure_notice("nobody@qmail.example", ORIG)
    rep = parse_text_bounce(parse_message(raw), "someone@qmail.example", DOMAINS, raw.decode(),
                            ignore_domains=DOMAINS)
    (rs,) = rep.recipients
    assert (rs.final_recipient, rs.status) == ("nobody@qmail.example", "5.1.1")
    assert classify(C, rs).category == "invalid_recipient"


def test_out_of_office_reply_is_not_a_bounce() -> None:
    """An RFC 3834 auto-reply to the bounce address, even from the null sender, is not a bounce."""
    raw = (b"From: Alice <alice@example.net>\r\nTo: bounces+00000000000000a1.3@bounce.test\r\n"
           b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\n"
           b"I am away until Monday; for urgent matters write to bob@example.net.\r\n")
    assert parse_text_bounce(parse_message(raw), "", DOMAINS, raw.decode(), ignore_domains=DOMAINS) is None


def test_text_bounce_without_codes_assumes_a_permanent_failure() -> None:
    """A non-delivery report that quotes no code is a failure (X.0.0); its text still picks the category."""
    raw = (b"From: MAILER-DAEMON@old.example\r\nSubject: Returned mail: see transcript\r\n\r\n"
           b"The following address had permanent fatal errors:\r\n<ghost@old.example>\r\n"
           b"    (reason: user unknown)\r\n")
    (rs,) = parse_text_bounce(parse_message(raw), "", DOMAINS, raw.decode()).recipients
    assert rs.final_recipient == "ghost@old.example" and rs.code == 550 and rs.status == "5.0.0"


def test_garbage_never_raises() -> None:
    """Truncated MIME, binary junk and missing parts give None, not an exception."""
    junk = [b"", b"\x00\xff" * 50, b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\n--x",
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n"
            b"Content-Type: message/delivery-status\r\n\r\nFinal-Recipient: \r\nAction: failed\r\n--x--"]
    for raw in junk:
        msg = parse_message(raw)
        rep = parse_dsn(msg, DOMAINS, raw.decode("utf-8", "replace"))
        assert rep is None or all(rs.final_recipient is None for rs in rep.recipients)
        assert parse_text_bounce(msg, "x@y.test", DOMAINS) is None


def test_clean_bounds_and_strips_control_characters() -> None:
    """Field values are one line, without control characters, and bounded."""
    assert clean("a\r\n\tb\x00c") == "a b c"
    assert len(clean("x" * 10_000)) == 500
