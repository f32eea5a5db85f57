"""Per-recipient outcomes of a transaction, each with the right scope."""

from __future__ import annotations

from dataclasses import dataclass, field

from mta_engine.delivery.outcome import grouped, transaction_outcomes
from mta_engine.smtp.reply import Reply


def R(code: int, text: str = "", enhanced: str | None = None) -> Reply:
    return Reply(code=code, lines=(f"{enhanced} {text}".strip() if enhanced else text,), enhanced=enhanced)


@dataclass
class Result:
    mail: Reply | None
    rcpts: list = field(default_factory=list)
    data: Reply | None = None
    error: Exception | None = None
    phase: str = "data"


def codes(out):
    return {o[0]: (o[1], o[4], o[5]) for o in out}


def test_rcpt_rejections_are_per_recipient() -> None:
    """550 on one RCPT bounces that one; the rest share the final reply."""
    out, again = transaction_outcomes([0, 1, 2], Result(R(250), [R(250), R(550, "no", "5.1.1"), R(250)], R(250)))
    assert codes(out) == {0: (250, "data", False), 1: (550, "rcpt", False), 2: (250, "data", False)}
    assert again == []


def test_452_after_some_accepted_asks_for_new_transaction() -> None:
    """452 after others were accepted: those recipients go in a new transaction (RFC 5321 §4.5.3.1.10)."""
    out, again = transaction_outcomes([0, 1, 2], Result(R(250), [R(250), R(452, "too many"), R(452)], R(250)))
    assert again == [1, 2]
    assert codes(out) == {0: (250, "data", False)}


def test_452_with_none_accepted_is_a_deferral() -> None:
    """452 on every RCPT is a real temporary failure, not a split."""
    out, again = transaction_outcomes([0, 1], Result(R(250), [R(452), R(452)], R(503)))
    assert again == [] and codes(out) == {0: (452, "rcpt", False), 1: (452, "rcpt", False)}


def test_552_too_many_recipients_is_treated_like_452() -> None:
    """552 'too many recipients' is the RFC 821 mistake for 452 (RFC 5321 §4.5.3.1.10)."""
    out, again = transaction_outcomes([0, 1], Result(R(250), [R(250), R(552, "Too many recipients")], R(250)))
    assert again == [1]


def test_mail_rejection_applies_to_all() -> None:
    """A 5xx to MAIL FROM is the message's scope: every recipient gets it."""
    out, _ = transaction_outcomes([0, 1], Result(R(553, "sender refused", "5.7.1")))
    assert codes(out) == {0: (553, "mail", False), 1: (553, "mail", False)}


def test_421_mid_transaction_defers_everyone_open() -> None:
    """421 on a RCPT closes the session: that and every later recipient is deferred with the 421."""
    out, _ = transaction_outcomes([0, 1, 2], Result(R(250), [R(250), R(421, "bye", "4.7.0"), None], None,
                                                    ConnectionResetError(), "rcpt"))
    assert codes(out) == {0: (421, "data", False), 1: (421, "rcpt", False), 2: (421, "rcpt", False)}


def test_connection_lost_after_final_dot_is_unknown() -> None:
    """No reply after the final dot: transient and flagged UNKNOWN (may have been delivered)."""
    out, _ = transaction_outcomes([0], Result(R(250), [R(250)], R(354), TimeoutError("final"), "payload"))
    ((idx, code, enh, text, phase, unknown),) = out
    assert (code, enh, phase, unknown) == (451, "4.4.2", "data", True)
    assert "unknown" in text


def test_data_rejection_applies_to_accepted_only() -> None:
    """554 after the final dot applies to the accepted recipients; RCPT-refused keep their own reply."""
    out, _ = transaction_outcomes([0, 1], Result(R(250), [R(250), R(550)], R(554, "spam", "5.7.1")))
    assert codes(out) == {0: (554, "data", False), 1: (550, "rcpt", False)}


def test_grouped_joins_consecutive_outcomes_with_the_same_reply_only() -> None:
    """A report's IPC form: one entry per run of equal replies, indexes in order; a reply that
    comes back later is a new entry, and any differing field (here ``unknown``) splits."""
    out = [(0, 250, "2.0.0", "ok", "data", False), (1, 250, "2.0.0", "ok", "data", False),
           (2, 550, "5.1.1", "no such user", "rcpt", False), (3, 250, "2.0.0", "ok", "data", False),
           (4, 250, "2.0.0", "ok", "data", True), (5, 250, "2.0.0", "ok", "data", True)]
    assert grouped(out) == [([0, 1], 250, "2.0.0", "ok", "data", False),
                            ([2], 550, "5.1.1", "no such user", "rcpt", False),
                            ([3], 250, "2.0.0", "ok", "data", False),
                            ([4, 5], 250, "2.0.0", "ok", "data", True)]
    assert grouped([]) == []


def test_a_shared_data_reply_is_one_entry_for_every_accepted_recipient() -> None:
    """100 recipients, one refused at RCPT: the data reply's 99 make one entry, between nothing."""
    rcpts = [R(250, "ok")] * 100
    rcpts[40] = R(550, "no such user", "5.1.1")
    out, _ = transaction_outcomes(list(range(100)), Result(R(250), rcpts, R(250, "queued", "2.0.0")))
    entries = grouped(out)
    assert [(e[0] if len(e[0]) < 3 else len(e[0]), e[1]) for e in entries] == [([40], 550), (99, 250)]
