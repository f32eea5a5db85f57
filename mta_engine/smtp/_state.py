"""Client states and the one transition table: the only place SMTP legality lives (h11 style).

Contract: ``SEND`` says which command may be sent in which state and where it leads;
``ON_REPLY`` says where the reply to a command leads, by reply kind. Anything not in ``SEND``
is illegal and ``next_state_on_send`` raises ``LocalProtocolError``. The send transitions are
optimistic (they assume success, so a pipelined group can be checked before any reply);
replies then correct the state. ``LMTP_SEND`` is the same table for LMTP (RFC 2033), and
``PER_RECIPIENT_REPLIES`` names the commands LMTP answers once per accepted recipient. Pure: no I/O.
"""

from __future__ import annotations

import enum
from typing import Final

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp.events import (
    AuthLogin,
    AuthPlain,
    AuthResponse,
    Bdat,
    BdatLast,
    Command,
    Data,
    Ehlo,
    Helo,
    Lhlo,
    MailFrom,
    Noop,
    Payload,
    Quit,
    RcptTo,
    Rset,
    StartTls,
)
from mta_engine.smtp.reply import Reply

__all__ = [
    "GROUP_MAY_CONTINUE",
    "LMTP_SEND",
    "ON_REPLY",
    "PER_RECIPIENT_REPLIES",
    "SEND",
    "ReplyKind",
    "State",
    "next_state_on_reply",
    "next_state_on_send",
    "reply_kind",
]


class State(enum.Enum):
    """Where the client stands in the session (RFC 5321 §3, §4.1.4 command order)."""

    CONNECTED = "connected"  # TCP up, waiting for the greeting; nothing may be sent (§3.1)
    GREETED = "greeted"  # 220 greeting (or STARTTLS 220): EHLO/HELO next
    REFUSED = "refused"  # greeting or EHLO/HELO refused; only QUIT is left (§3.1, §4.1.1.1)
    EHLO_SENT = "ehlo_sent"
    READY = "ready"  # EHLO/HELO accepted, no transaction open
    STARTTLS_SENT = "starttls_sent"
    AUTH_SENT = "auth_sent"  # AUTH or a challenge response sent, waiting for 334/235/5xx (RFC 4954 §4)
    AUTH_CONTINUE = "auth_continue"  # 334 received: only an AuthResponse may follow
    MAIL_SENT = "mail_sent"
    RCPT_SENT = "rcpt_sent"
    DATA_SENT = "data_sent"
    DATA_READY = "data_ready"  # 354 received: the payload goes next (§4.1.1.4)
    BDAT_SENT = "bdat_sent"  # a non-last BDAT chunk went out; more chunks follow (RFC 3030 §2)
    PAYLOAD_SENT = "payload_sent"  # final dot or BDAT LAST sent: waiting for the final reply (§4.5.3.2.6)
    QUIT_SENT = "quit_sent"
    CLOSED = "closed"  # 421, 221 or EOF: the channel is gone (§3.8)
    ERROR = "error"  # the peer broke the protocol; the session must be dropped


class ReplyKind(enum.Enum):
    """How a reply moves the state (RFC 5321 §4.2.1 classes, with the codes §4.2.2 singles out)."""

    SUCCESS = "success"  # 2yz
    INTERMEDIATE = "intermediate"  # 3yz
    NOT_IMPLEMENTED = "not_implemented"  # 500/502: command unknown; EHLO falls back to HELO (§4.1.1.1)
    FAILURE = "failure"  # any other 4yz/5yz
    CLOSING = "closing"  # 421: service closing the transmission channel (§3.8)


# RFC 5321 §4.2.2 / §4.2.3 codes with a special meaning for the state machine.
CODE_CLOSING = 421  # §3.8: server is shutting the connection
CODES_NOT_IMPLEMENTED = frozenset({500, 502})  # §4.1.1.1: EHLO unknown → HELO


def reply_kind(reply: Reply) -> ReplyKind:
    """Classify ``reply`` for the transition table."""
    code = reply.code
    if code < 300:
        return ReplyKind.SUCCESS
    if code < 400:
        return ReplyKind.INTERMEDIATE
    if code == CODE_CLOSING:
        return ReplyKind.CLOSING
    if code in CODES_NOT_IMPLEMENTED:
        return ReplyKind.NOT_IMPLEMENTED
    return ReplyKind.FAILURE


_HELLO = (Ehlo, Helo, Lhlo)
_SMTP_HELLO = (Ehlo, Helo)

# (state, command type) -> state after sending, for SMTP. Absent = illegal (LocalProtocolError).
SEND: Final[dict[tuple[State, type[Command]], State]] = {
    **{(State.GREETED, c): State.EHLO_SENT for c in _SMTP_HELLO},
    (State.GREETED, Noop): State.GREETED,
    (State.GREETED, Quit): State.QUIT_SENT,
    (State.REFUSED, Quit): State.QUIT_SENT,
    **{(State.READY, c): State.EHLO_SENT for c in _SMTP_HELLO},
    (State.READY, MailFrom): State.MAIL_SENT,
    (State.READY, Rset): State.READY,
    (State.READY, Noop): State.READY,
    (State.READY, StartTls): State.STARTTLS_SENT,
    (State.READY, Quit): State.QUIT_SENT,
    # RFC 4954 §4: AUTH after EHLO, outside a transaction; never pipelined (lock-step exchange).
    (State.READY, AuthPlain): State.AUTH_SENT,
    (State.READY, AuthLogin): State.AUTH_SENT,
    (State.AUTH_CONTINUE, AuthResponse): State.AUTH_SENT,
    (State.MAIL_SENT, RcptTo): State.RCPT_SENT,
    (State.MAIL_SENT, Rset): State.READY,
    (State.MAIL_SENT, Noop): State.MAIL_SENT,
    (State.MAIL_SENT, Quit): State.QUIT_SENT,
    (State.RCPT_SENT, RcptTo): State.RCPT_SENT,
    (State.RCPT_SENT, Data): State.DATA_SENT,
    (State.RCPT_SENT, Rset): State.READY,
    (State.RCPT_SENT, Noop): State.RCPT_SENT,
    (State.RCPT_SENT, Quit): State.QUIT_SENT,
    (State.DATA_READY, Payload): State.PAYLOAD_SENT,
    # RFC 2920 §3.1: message content may be the first "command" of a group, and RSET and MAIL may
    # appear anywhere in one: the next transaction may follow the final dot or BDAT LAST before
    # their reply (only with PIPELINING, checked by the connection; replies are matched in order).
    (State.PAYLOAD_SENT, MailFrom): State.MAIL_SENT,
    (State.PAYLOAD_SENT, Rset): State.READY,
    # RFC 3030 §2-§3: BDAT replaces DATA after the RCPTs; DATA and BDAT never mix in one
    # transaction, so BDAT_SENT allows only more BDAT (and no DATA, RSET or QUIT mid-chunk).
    (State.RCPT_SENT, Bdat): State.BDAT_SENT,
    (State.RCPT_SENT, BdatLast): State.PAYLOAD_SENT,
    (State.BDAT_SENT, Bdat): State.BDAT_SENT,
    (State.BDAT_SENT, BdatLast): State.PAYLOAD_SENT,
}

# The same table for LMTP: LHLO replaces EHLO and HELO, which are not LMTP commands (RFC 2033 §4.1);
# everything else is SMTP's (RFC 2033 §4: LMTP uses the syntax and semantics of ESMTP).
LMTP_SEND: Final[dict[tuple[State, type[Command]], State]] = {
    **{key: state for key, state in SEND.items() if key[1] not in _SMTP_HELLO},
    (State.GREETED, Lhlo): State.EHLO_SENT,
    (State.READY, Lhlo): State.EHLO_SENT,
}

# LMTP: the end of the data (the final dot, or BDAT LAST, which ends the data the same way, RFC 3030
# §2) is answered once per RCPT that was accepted, in RCPT order (RFC 2033 §4.2); once when none was.
# The state moves only with the last of those replies (the ON_REPLY row of the command).
PER_RECIPIENT_REPLIES: Final[frozenset[type[Command]]] = frozenset({Payload, BdatLast})

# (command type or None for the greeting, reply kind) -> state, applied when the reply answers the
# last pending command (earlier replies of a pipelined group do not move the optimistic state).
# Absent = the state stays as it is. CLOSING always leads to CLOSED (§3.8).
ON_REPLY: Final[dict[tuple[type[Command] | None, ReplyKind], State]] = {
    (None, ReplyKind.SUCCESS): State.GREETED,
    (None, ReplyKind.INTERMEDIATE): State.REFUSED,
    (None, ReplyKind.NOT_IMPLEMENTED): State.REFUSED,
    (None, ReplyKind.FAILURE): State.REFUSED,  # 554 greeting: QUIT and go (§3.1)
    **{(c, ReplyKind.SUCCESS): State.READY for c in _HELLO},
    (Ehlo, ReplyKind.NOT_IMPLEMENTED): State.GREETED,  # fall back to HELO (§4.1.1.1, S02)
    (Ehlo, ReplyKind.INTERMEDIATE): State.REFUSED,
    (Ehlo, ReplyKind.FAILURE): State.REFUSED,  # S03: no HELO after a "go away"
    **{(c, k): State.REFUSED for c in (Helo, Lhlo) for k in ReplyKind if k is not ReplyKind.SUCCESS},
    (MailFrom, ReplyKind.INTERMEDIATE): State.READY,
    (MailFrom, ReplyKind.NOT_IMPLEMENTED): State.READY,
    (MailFrom, ReplyKind.FAILURE): State.READY,
    (Data, ReplyKind.SUCCESS): State.READY,  # bogus 2yz to DATA: no data phase opened
    (Data, ReplyKind.INTERMEDIATE): State.DATA_READY,  # 354 (§4.1.1.4)
    (Data, ReplyKind.NOT_IMPLEMENTED): State.READY,
    (Data, ReplyKind.FAILURE): State.READY,
    **{(Payload, k): State.READY for k in ReplyKind},
    # RFC 3030 §2: a failed chunk fails the transaction; no more chunks, RSET before the next one.
    (Bdat, ReplyKind.INTERMEDIATE): State.READY,
    (Bdat, ReplyKind.NOT_IMPLEMENTED): State.READY,
    (Bdat, ReplyKind.FAILURE): State.READY,
    **{(BdatLast, k): State.READY for k in ReplyKind},
    (Rset, ReplyKind.SUCCESS): State.READY,
    (Rset, ReplyKind.INTERMEDIATE): State.REFUSED,
    (Rset, ReplyKind.NOT_IMPLEMENTED): State.REFUSED,  # a server that cannot RSET cannot be reused
    (Rset, ReplyKind.FAILURE): State.REFUSED,
    **{(Quit, k): State.CLOSED for k in ReplyKind},
    # RFC 4954 §4, §6: 235 = authenticated, 334 = send the next response, 5xx (535, 534, 538,
    # 504...) = not authenticated, back in READY (the session refuses to use it).
    **{(c, ReplyKind.SUCCESS): State.READY for c in (AuthPlain, AuthLogin, AuthResponse)},
    **{(c, ReplyKind.INTERMEDIATE): State.AUTH_CONTINUE for c in (AuthPlain, AuthLogin, AuthResponse)},
    **{(c, ReplyKind.NOT_IMPLEMENTED): State.READY for c in (AuthPlain, AuthLogin, AuthResponse)},
    **{(c, ReplyKind.FAILURE): State.READY for c in (AuthPlain, AuthLogin, AuthResponse)},
    (StartTls, ReplyKind.SUCCESS): State.GREETED,  # handshake, then EHLO again (RFC 3207 §4.2)
    (StartTls, ReplyKind.INTERMEDIATE): State.READY,
    (StartTls, ReplyKind.NOT_IMPLEMENTED): State.READY,
    (StartTls, ReplyKind.FAILURE): State.READY,  # 454: carry on in plaintext (RFC 3207 §4)
}

# RFC 2920 §3.1: only these may be followed by more commands in the same pipelined group (or by
# a new group before their reply); EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP end a group;
# STARTTLS too (RFC 3207 §4.2). Non-last BDAT chunks may be pipelined (RFC 3030 §4.2). The end of
# the data (the content after a 354, or BDAT LAST) may be followed only by the next transaction's
# RSET or MAIL: SEND has no other row from PAYLOAD_SENT.
GROUP_MAY_CONTINUE: Final[frozenset[type[Command]]] = frozenset(
    {MailFrom, RcptTo, Rset, Bdat, Payload, BdatLast}
)


def next_state_on_send(
    state: State, command: Command, table: dict[tuple[State, type[Command]], State] = SEND
) -> State:
    """Return the state after sending ``command`` in ``state``; raise if that is illegal.

    ``table`` is ``SEND`` (SMTP) or ``LMTP_SEND``.
    """
    try:
        return table[(state, type(command))]
    except KeyError:
        raise LocalProtocolError(f"cannot send {type(command).__name__} in state {state.name}") from None


def next_state_on_reply(state: State, command: Command | None, reply: Reply, *, last: bool) -> State:
    """Return the state after ``reply`` to ``command``; ``last`` = no other command is pending."""
    kind = reply_kind(reply)
    if kind is ReplyKind.CLOSING:
        return State.CLOSED
    if not last:
        return state
    return ON_REPLY.get((type(command) if command is not None else None, kind), state)
