"""LMTP outcomes: each accepted recipient gets its own reply after the data (RFC 2033 §4.2)."""

from __future__ import annotations

from mta_engine.delivery.outcome import transaction_outcomes
from mta_engine.delivery.session import TransactionResult
from mta_engine.errors import NetworkError
from mta_engine.smtp.reply import Reply

OK = Reply(250, ("2.1.5 ok",))


def R(code: int, text: str) -> Reply:
    return Reply(code, (text,))


def by_index(out: list) -> dict[int, tuple]:
    return {o[0]: (o[1], o[2], o[4], o[5]) for o in out}


def lmtp(rcpts: list, data_rcpts: list, *, data: Reply | None = None, error: Exception | None = None,
         phase: str = "payload") -> TransactionResult:
    first = next((r for r in data_rcpts if r is not None), None)
    return TransactionResult(OK, rcpts, data if data is not None else first, error, phase, data_rcpts=data_rcpts)


def test_each_recipient_gets_its_own_reply_after_the_dot() -> None:
    """250, 550 and 452 after the dot deliver, bounce and defer those recipients only."""
    result = lmtp([OK, OK, OK], [R(250, "2.0.0 saved"), R(550, "5.1.1 no such user"), R(452, "4.2.2 over quota")])
    out, again = transaction_outcomes([7, 8, 9], result)
    assert again == []
    assert by_index(out) == {7: (250, "2.0.0", "data", False), 8: (550, "5.1.1", "data", False),
                             9: (452, "4.2.2", "data", False)}


def test_rcpt_refusals_still_apply_at_rcpt() -> None:
    """A recipient refused at RCPT keeps that reply; the data replies go to the accepted ones in order."""
    result = lmtp([OK, R(550, "5.1.1 unknown"), OK], [R(250, "2.0.0 a"), None, R(554, "5.6.0 c refused")])
    out, _ = transaction_outcomes([0, 1, 2], result)
    assert by_index(out) == {0: (250, "2.0.0", "data", False), 1: (550, "5.1.1", "rcpt", False),
                             2: (554, "5.6.0", "data", False)}


def test_connection_lost_among_the_replies_keeps_the_answered_ones() -> None:
    """Lost after the first recipient's reply: it keeps its reply; the rest are unknown (451 4.4.2)."""
    result = lmtp([OK, OK, OK], [R(250, "2.0.0 a"), None, None], error=NetworkError("connection lost"))
    out, _ = transaction_outcomes([0, 1, 2], result)
    assert by_index(out) == {0: (250, "2.0.0", "data", False), 1: (451, "4.4.2", "data", True),
                             2: (451, "4.4.2", "data", True)}
    assert "unknown" in out[1][3]


def test_421_among_the_replies() -> None:
    """A 421 answers its recipient (deferred, known); the recipients after it are unknown."""
    closing = R(421, "4.3.2 shutting down")
    result = lmtp([OK, OK, OK], [R(250, "2.0.0 a"), closing, None], data=closing)
    out, _ = transaction_outcomes([0, 1, 2], result)
    assert by_index(out) == {0: (250, "2.0.0", "data", False), 1: (421, "4.3.2", "data", False),
                             2: (421, "4.3.2", "data", True)}


def test_data_refused_before_the_payload_applies_to_all() -> None:
    """A refusal of DATA itself (not after the dot) is one reply for every accepted recipient."""
    result = TransactionResult(OK, [OK, OK], R(554, "5.3.4 no"), None, "data", data_rcpts=[None, None])
    out, _ = transaction_outcomes([0, 1], result)
    assert by_index(out) == {0: (554, "5.3.4", "data", False), 1: (554, "5.3.4", "data", False)}


def test_smtp_result_is_unchanged() -> None:
    """Without data_rcpts (SMTP) the one final reply applies to every accepted recipient."""
    result = TransactionResult(OK, [OK, OK], R(550, "5.7.1 spam"), None, "payload")
    out, _ = transaction_outcomes([0, 1], result)
    assert by_index(out) == {0: (550, "5.7.1", "data", False), 1: (550, "5.7.1", "data", False)}
