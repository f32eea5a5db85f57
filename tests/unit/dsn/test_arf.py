"""Feedback loop reports (ARF, RFC 5965) from Yahoo/AOL, Outlook JMRP and Comcast parse to one value."""
from __future__ import annotations

from mta_engine.dsn.arf import parse_arf
from mta_engine.dsn.oob import parse_message
from mta_engine.dsn.verp import RecipientRef
from tests.support import reports as R

DOMAINS = frozenset({"bounce.test"})
MID = "<00000000000000a1.3@mta.test>"
VERP = "bounces+00000000000000a1.3@bounce.test"
ORIG = R.original_headers(message_id=MID, return_path=VERP, to="c@yahoo.example")


def arf(raw: bytes):
    return parse_arf(parse_message(raw), DOMAINS, raw.decode())


def test_yahoo_report_fields() -> None:
    """Feedback-Type, User-Agent, Version, Original-Mail-From/Rcpt-To, date and source IP are read."""
    fb = arf(R.yahoo_arf("c@yahoo.example", ORIG, mail_from=VERP))
    assert fb is not None and fb.is_complaint
    assert (fb.feedback_type, fb.user_agent, fb.version) == ("abuse", "Yahoo!-Mail-Feedback/2.0", "0.1")
    assert fb.original_mail_from == VERP and fb.original_rcpt_to == ("c@yahoo.example",)
    assert fb.arrival_date == "Tue, 7 May 2024 10:00:00 +0000" and fb.source_ip == "192.0.2.10"
    assert fb.reported_domain == "sender.test" and fb.original.subject == "Spring sale"
    assert fb.refs[0] == RecipientRef(0xA1, 3, "verp")  # the original envelope sender comes first


def test_jmrp_redacted_recipient_still_correlates_by_original_headers() -> None:
    """Outlook redacts the complainer; the original's Return-Path and Message-ID still lead back."""
    fb = arf(R.jmrp_arf(ORIG))
    assert fb is not None and fb.feedback_type == "abuse" and fb.user_agent == "Microsoft-JMRP/1.0"
    assert fb.original_rcpt_to == () and fb.original.to == "[redacted]"
    assert {r.via for r in fb.refs} == {"return_path", "message_id"} and all(r.index == 3 for r in fb.refs)


def test_comcast_headers_only_report() -> None:
    """Comcast: bare Original-Mail-From, Arrival-Date, Incidents, original as text/rfc822-headers."""
    fb = arf(R.comcast_arf("c@comcast.example", ORIG, mail_from=VERP))
    assert fb.user_agent == "Comcast Feedback Loop (V0.01)" and fb.incidents == 1
    assert fb.arrival_date == "Tue, 7 May 2024 10:00:00 -0400" and fb.original.message_id == MID


def test_not_spam_is_parsed_but_not_a_complaint() -> None:
    """Feedback-Type not-spam (and other types) are kept, lower-cased, and do not count as complaints."""
    fb = arf(R.yahoo_arf("c@yahoo.example", ORIG, mail_from=VERP, feedback_type="Not-Spam"))
    assert fb.feedback_type == "not-spam" and not fb.is_complaint


def test_dsn_and_reports_without_feedback_type_are_not_arf() -> None:
    """A DSN is not ARF; an ARF without its required Feedback-Type (RFC 5965 §3.1) is refused as ARF."""
    assert arf(R.postfix_dsn("gone@example.net", ORIG)) is None
    broken = R.comcast_arf("c@comcast.example", ORIG, mail_from=VERP).replace(b"Feedback-Type: abuse\r\n", b"")
    assert arf(broken) is None
