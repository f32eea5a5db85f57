"""Turn what happened in a session into one outcome per recipient, each with its scope.

Contract: pure (no asyncio, no sockets). Decides nothing about fate (the manager does): it only
says, per recipient, which reply applies to it. Scope rules (ARCHITECTURE invariant 4):

- recipient: a RCPT reply applies to that recipient only; 452 (and 552 "too many recipients",
  RFC 5321 §4.5.3.1.10) asks for a new transaction when others were accepted (§4.5.3.1.8);
- message: a MAIL reply, a DATA reply or the final reply applies to every recipient still open;
- session: a 421 (§3.8) or a lost/timed-out connection (treated as 451, §3.8) applies to every
  recipient not yet finally answered. A connection lost after the final dot is UNKNOWN: the
  message may have been delivered (§4.5.3.2.6, §6.1). So is a lost connection after a pipelined
  BDAT LAST whose MAIL or RCPT replies never came (``phase`` "payload", RFC 3030 §4.2).
- LMTP (RFC 2033 §4.2): after the data each accepted recipient has its own reply
  (``result.data_rcpts``), which applies to that recipient only; one never answered because the
  connection went is UNKNOWN, as above.

An outcome tuple is ``(index, code, enhanced, text, phase, unknown)``. A worker reports them
``grouped``: consecutive outcomes with the same reply become one, whose first item is the list of
their indexes (the 250 after the data of a 100-recipient transaction is one entry, not 100).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

Outcome = tuple[int, int, "str | None", str, str, bool]

_TOO_MANY = re.compile(r"too many recipients", re.I)


GroupedOutcome = tuple[list[int], int, "str | None", str, str, bool]


def grouped(outcomes: Sequence[Outcome]) -> list[GroupedOutcome]:
    """Consecutive outcomes with the same (code, enhanced, text, phase, unknown) as one entry with
    the list of their indexes, in order: the form a worker reports to the manager."""
    out: list[GroupedOutcome] = []
    last: tuple[Any, ...] | None = None
    indexes: list[int] = []
    for o in outcomes:
        reply = o[1:]
        if reply != last:
            indexes = [o[0]]
            out.append((indexes, *reply))  # type: ignore[arg-type]
            last = reply
        else:
            indexes.append(o[0])
    return out


def local_failure(indexes: Sequence[int], code: int, enhanced: str, text: str, phase: str) -> list[Outcome]:
    """The same locally made outcome for every recipient (connect failure, DNS, refusal)."""
    return [(i, code, enhanced, text, phase, False) for i in indexes]


def error_text(error: BaseException | None) -> str:
    if error is None:
        return "connection closed by the server"
    msg = str(error)
    return f"{type(error).__name__}: {msg}" if msg else type(error).__name__


def is_too_many_recipients(reply: Any) -> bool:
    """452 on RCPT, or 552 that means "too many recipients" (RFC 5321 §4.5.3.1.10)."""
    if reply.code == 452:
        return True
    return reply.code == 552 and (reply.enhanced == "5.5.3" or bool(_TOO_MANY.search(reply.text)))


def _reply_outcome(index: int, reply: Any, phase: str) -> Outcome:
    return (index, reply.code, reply.enhanced, reply.text, phase, False)


def transaction_outcomes(indexes: Sequence[int], result: Any) -> tuple[list[Outcome], list[int]]:
    """Outcomes of one transaction, and the indexes to send again in a new transaction (452)."""
    closing = None
    for r in (result.mail, *result.rcpts, result.data):
        if r is not None and r.code == 421:
            closing = r
            break

    def lost(index: int, phase: str, unknown: bool = False) -> Outcome:
        if closing is not None:
            return (index, closing.code, closing.enhanced, closing.text, phase, unknown)
        text = error_text(result.error)
        if unknown:
            text = f"connection lost after the final dot, delivery status unknown: {text}"
        return (index, 451, "4.4.2", text, phase, unknown)

    # The content went out before MAIL/RCPT were answered (a pipelined BDAT LAST, RFC 3030 §4.2)
    # and the connection was lost: the server may have taken it, so an unanswered recipient is
    # UNKNOWN, not merely deferred (a 421 says the server took nothing more: §3.8).
    sent_blind = result.phase == "payload" and closing is None
    mail = result.mail
    if mail is None or not 200 <= mail.code < 300:
        if mail is None or mail.code == 421:
            return [lost(i, "data" if sent_blind else "mail", sent_blind) for i in indexes], []
        return [_reply_outcome(i, mail, "mail") for i in indexes], []
    out: list[Outcome] = []
    accepted: list[int] = []
    again: list[int] = []
    for n, index in enumerate(indexes):
        reply = result.rcpts[n] if n < len(result.rcpts) else None
        if reply is None and sent_blind:
            out.append(lost(index, "data", True))
        elif reply is None or reply.code == 421:
            out.append(lost(index, "rcpt"))
        elif 200 <= reply.code < 300:
            accepted.append(index)
        elif is_too_many_recipients(reply):
            again.append(index)
            out.append(_reply_outcome(index, reply, "rcpt"))
        else:
            out.append(_reply_outcome(index, reply, "rcpt"))
    if accepted and again:
        # the server took some: the rest go in a new transaction; drop their provisional outcome
        out = [o for o in out if o[0] not in again]
    else:
        again = []
    data = result.data
    try:
        per_rcpt = result.data_rcpts  # LMTP only; None for SMTP
    except AttributeError:  # a result value without the field (SMTP)
        per_rcpt = None
    if per_rcpt is not None and result.phase == "payload":
        _lmtp_outcomes(indexes, result.rcpts, per_rcpt, out, lost)
        return out, again
    for index in accepted:
        if data is None or data.code in (354, 421):
            unknown = result.phase == "payload" and (data is None or data.code == 354)
            out.append(lost(index, "data", unknown))
        else:
            out.append(_reply_outcome(index, data, "data"))
    return out, again


def _lmtp_outcomes(indexes: Sequence[int], rcpts: Sequence[Any], replies: Sequence[Any], out: list[Outcome],
                   lost: Any) -> None:
    """Each accepted recipient's own reply after the data (RFC 2033 §4.2); none = unknown."""
    for n, index in enumerate(indexes):
        rcpt = rcpts[n] if n < len(rcpts) else None
        if rcpt is None or not 200 <= rcpt.code < 300:
            continue
        reply = replies[n] if n < len(replies) else None
        if reply is None:
            out.append(lost(index, "data", True))
        else:
            out.append(_reply_outcome(index, reply, "data"))
