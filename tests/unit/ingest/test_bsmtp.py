"""Batch-SMTP parsing: transactions in, Submissions out; any bad line rejects the whole file."""

from __future__ import annotations

import pytest

from mta_engine.errors import InjectError
from mta_engine.ingest.bsmtp import (BsmtpError, EnvelopeRefused, header_value, ingest_bsmtp, parse_bsmtp, parse_mail,
                                     parse_rcpt)

GOOD = """HELO batch.test
MAIL FROM:<a@sender.test> RET=FULL ENVID=x+2By
RCPT TO:<b@rcpt.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+40old.test
RCPT TO:<c@rcpt.test>
DATA
From: a@sender.test
X-Campaign: spring
 sale

one
.

RSET
MAIL FROM:<>
RCPT TO:<d@rcpt.test>
DATA
From: mailer@sender.test

two
.
QUIT
"""


def test_good_file_yields_one_submission_per_transaction() -> None:
    """Each MAIL..DATA..'.' block becomes a raw, non-template Submission with its envelope and DSN params."""
    first, second = parse_bsmtp(GOOD)
    assert first.sender == "a@sender.test" and second.sender == ""
    assert [r[0] for r in first.recipients] == ["b@rcpt.test", "c@rcpt.test"]
    assert first.dsn_params == [("FAILURE,DELAY", "rfc822;b@old.test"), (None, None)]
    assert (first.ret, first.envid, first.campaign) == ("FULL", "x+y", "spring sale")
    assert first.spec == {"raw": "From: a@sender.test\r\nX-Campaign: spring\r\n sale\r\n\r\none\r\n",
                          "template": False}
    assert second.dsn_params is None and second.campaign is None and not second.template


def test_crlf_and_lf_files_parse_alike() -> None:
    """Line endings do not matter: a CRLF file gives the same Submissions as an LF file."""
    assert parse_bsmtp(GOOD.replace("\n", "\r\n")) == parse_bsmtp(GOOD)


def test_dot_stuffed_lines_are_unstuffed() -> None:
    """A leading '.' is removed (RFC 5321 §4.5.2): '..x' is '.x' and '..' is '.', and only '.' ends DATA."""
    text = "MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nDATA\nFrom: a@s.test\n\n..x\n..\n...\n.\n"
    (sub,) = parse_bsmtp(text)
    assert sub.spec["raw"] == "From: a@s.test\r\n\r\n.x\r\n.\r\n..\r\n"


def test_template_syntax_is_kept_literally() -> None:
    """Batch messages are never templates, even with Jinja-looking text."""
    (sub,) = parse_bsmtp("MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nDATA\nFrom: a@s.test\n\n{{ x }} {% if %}\n.\n")
    assert not sub.template and "{% if %}" in sub.spec["raw"]


@pytest.mark.parametrize("text, line, words", [
    ("MAIL FROM:<a@s.test>\nRCPT TO:<nope>\nDATA\nFrom: a\n\nx\n.\n", 2, "RCPT"),
    ("MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nDATA\nFrom: a@s.test\n\nx\n", 3, "not ended"),
    ("MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\n", 1, "no DATA"),
    ("RCPT TO:<b@r.test>\n", 1, "without MAIL"),
    ("MAIL FROM:<a@s.test>\nDATA\nFrom: a@s.test\n\nx\n.\n", 2, "without an accepted RCPT"),
    ("MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nDATA\nSubject: no from\n\nx\n.\n", 3, "From:"),
    ("MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nDATA\nFrom: a@s.test\n\n" + "x" * 999 + "\n.\n", 6, "998"),
    ("MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nRSET\n", 3, "RSET inside"),
    ("MAIL FROM:<a@s.test> BODY=9BIT\nRCPT TO:<b@r.test>\nDATA\nFrom: a@s.test\n\nx\n.\n", 1, "BODY"),
    ("QUIT\nMAIL FROM:<a@s.test>\n", 2, "after QUIT"),
    ("VRFY x\n", 1, "unknown command"),
    ("\n\n", 1, "no transaction"),
])
def test_malformed_file_names_the_line(text: str, line: int, words: str) -> None:
    """A malformed block raises BsmtpError whose first problem is on the offending line."""
    with pytest.raises(BsmtpError) as info:
        parse_bsmtp(text)
    assert info.value.line == line and words in info.value.reason, info.value.problems
    assert isinstance(info.value, InjectError) and f"line {line}" in info.value.errors


def test_every_bad_block_is_reported_without_cascades() -> None:
    """Problems in two blocks are both reported; the message lines of a bad block are not read as commands."""
    text = ("MAIL FROM:<a@s.test>\nRCPT TO:<bad>\nDATA\nFrom: a@s.test\n\nMAIL FROM:<looks like a command>\n.\n"
            "MAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nDATA\nno header\n.\n")
    with pytest.raises(BsmtpError) as info:
        parse_bsmtp(text)
    assert [n for n, _ in info.value.problems] == [2, 10]


class RecordingCommitter:
    def __init__(self) -> None:
        self.submitted: list[object] = []

    async def submit(self, sub: object) -> int:
        self.submitted.append(sub)
        return len(self.submitted)


def test_nothing_is_submitted_from_a_rejected_file() -> None:
    """ingest_bsmtp parses the whole file before the first submit: a bad last block stops the good first one."""
    committer = RecordingCommitter()
    bad = GOOD.replace("RCPT TO:<d@rcpt.test>", "RCPT TO:<d@>")
    coro = ingest_bsmtp(committer, bad, tenant="acme")
    with pytest.raises(BsmtpError):
        coro.send(None)  # the parse error surfaces before any await: no event loop needed
    assert committer.submitted == []


@pytest.mark.parametrize("arg, code, enhanced", [
    ("FROM:a@s.test", 501, "5.5.4"),
    ("FROM:<a@s.test> SIZE=abc", 501, "5.5.4"),
    ("FROM:<a@s.test> SIZE=999999", 552, "5.3.4"),
    ("FROM:<a@s.test> RET=ALL", 501, "5.5.4"),
    ("FROM:<a@s.test> ENVID=bad=x", 501, "5.5.4"),
    ("FROM:<a@s.test> XYZZY", 555, "5.5.4"),
    ("FROM:<a@@s.test>", 553, "5.1.7"),
    ("FROM:<jörg@s.test>", 553, "5.6.7"),
])
def test_mail_argument_refusals(arg: str, code: int, enhanced: str) -> None:
    """Each malformed MAIL argument maps to its reply code and RFC 3463 status."""
    with pytest.raises(EnvelopeRefused) as info:
        parse_mail(arg, max_size_bytes=1000)
    assert (info.value.code, info.value.enhanced) == (code, enhanced)


def test_mail_and_rcpt_values() -> None:
    """Parameters are case-insensitive keywords; ENVID/ORCPT values keep their case and are xtext-decoded."""
    mail = parse_mail("from: <@relay.test:a@s.test> body=8bitmime SMTPUTF8 SIZE=10 ENVID=AbC+2B")
    assert (mail.sender, mail.body, mail.smtputf8, mail.size, mail.envid) == ("a@s.test", "8BITMIME", True, 10, "AbC+")
    rcpt = parse_rcpt("TO:<zoë@r.test> notify=never ORCPT=utf-8;Zo+C3+AB@r.test", smtputf8=True)
    assert (rcpt.address, rcpt.notify, rcpt.orcpt) == ("zoë@r.test", "NEVER", "utf-8;Zoë@r.test")


def test_header_value_unfolds_and_stops_at_the_body() -> None:
    """Only the header section is searched; folded values are joined with one space."""
    msg = "From: a\r\nX-Campaign: a\r\n\tb\r\n\r\nX-Campaign: body"
    assert header_value(msg, "x-campaign") == "a b"
    assert header_value("From: a\n\nX-Campaign: body\n", "X-Campaign") is None
