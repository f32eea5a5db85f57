"""A pipelined BDAT LAST carries the content before MAIL and RCPT are answered (RFC 3030 §4.2):
a reply that never comes then leaves the message UNKNOWN, unless a 421 said the server took nothing."""

from __future__ import annotations

from functools import partial

from mta_engine.delivery.outcome import transaction_outcomes
from mta_engine.errors import NetworkError
from mta_engine.smtp.reply import Reply
from tests.unit.delivery.test_outcome import Result as _Result

Result = partial(_Result, phase="payload")  # the content went out before these replies came


def flags(out):
    return {o[0]: (o[1], o[4], o[5]) for o in out}


def test_no_mail_reply_after_content_sent_is_unknown() -> None:
    out, _ = transaction_outcomes([0, 1], Result(None, [None, None], error=NetworkError("reset")))
    assert flags(out) == {0: (451, "data", True), 1: (451, "data", True)}
    assert "unknown" in out[0][3]


def test_no_rcpt_reply_after_content_sent_is_unknown() -> None:
    out, _ = transaction_outcomes([0], Result(Reply(250, ("ok",)), [None], error=NetworkError("reset")))
    assert flags(out) == {0: (451, "data", True)}


def test_421_before_the_end_of_data_is_not_unknown() -> None:
    """The server said 421 to the RCPT: it closed and processed nothing after (RFC 5321 §3.8)."""
    out, _ = transaction_outcomes([0, 1], Result(Reply(250, ("ok",)), [Reply(421, ("4.3.2 bye",)), None],
                                                 error=NetworkError("closing")))
    assert flags(out) == {0: (421, "rcpt", False), 1: (421, "rcpt", False)}


def test_without_content_sent_a_missing_mail_reply_is_not_attempted() -> None:
    out, _ = transaction_outcomes([0], Result(None, [None], error=NetworkError("not attempted: x"), phase="mail"))
    assert flags(out) == {0: (451, "mail", False)}
    assert "not attempted" in out[0][3]
