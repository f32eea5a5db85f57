"""``ClientConnection``: the sans-IO SMTP client (h11 style).

Contract: the caller writes what ``send``/``send_pipelined`` return, feeds what it reads to
``receive_data`` (``b""`` at end of file) and loops on ``next_event`` until ``NEED_DATA``. Each
reply is matched, in order, to the command it answers; the first reply is the greeting
(command ``None``). With PIPELINING the next transaction may be sent while the reply to the
previous one's final dot or BDAT LAST is still pending (RFC 2920 §3.1); ``pending`` then spans
both transactions and the state follows the last command sent until its reply arrives. It never does I/O, never reads a clock and never decides what a rejection
means. It fails two ways: ``LocalProtocolError`` when the caller asks for something the state
table (``_state.py``) or RFC 2920 pipelining rules forbid, and ``RemoteProtocolError`` when
the server sends something that is not SMTP (after which the connection is in ``ERROR``).
``LmtpConnection`` is the same for LMTP (RFC 2033): LHLO, and one reply per accepted recipient
after the data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import repeat

from mta_engine.errors import LocalProtocolError, RemoteProtocolError
from mta_engine.smtp._state import (
    GROUP_MAY_CONTINUE,
    LMTP_SEND,
    PER_RECIPIENT_REPLIES,
    SEND,
    State,
    next_state_on_reply,
    next_state_on_send,
)
from mta_engine.smtp.events import (
    NEED_DATA,
    AuthLogin,
    AuthPlain,
    AuthResponse,
    Closed,
    Command,
    Ehlo,
    Event,
    Helo,
    Lhlo,
    MailFrom,
    RcptTo,
    Replied,
    Rset,
    StartTls,
)
from mta_engine.smtp.reply import Reply, ReplyParser

__all__ = ["ClientConnection", "LmtpConnection", "parse_extensions", "parse_size_limit"]

_PIPELINING = "PIPELINING"  # RFC 2920 §3: EHLO keyword that allows command groups
_SIZE = "SIZE"  # RFC 1870 §3
# RFC 4954 §4: the AUTH exchange is lock-step; it is never part of a pipelined group.
_AUTH_COMMANDS = (AuthPlain, AuthLogin, AuthResponse)
# Commands whose reply, when more commands are still pending, changes nothing but the queue.
_NOT_LAST_FAST = frozenset({MailFrom, RcptTo, Rset})


def parse_size_limit(params: str) -> int | None:
    """The fixed maximum of an RFC 1870 ``SIZE`` keyword's parameter; None = no known limit.

    RFC 1870 §3(3), §7: ``SIZE`` alone gives no information and ``SIZE 0`` means no fixed
    maximum; anything that is not a decimal number is treated like "no information".
    """
    text = params.strip()
    if not text.isdigit() or not text.isascii():
        return None
    limit = int(text)
    return limit if limit > 0 else None


def parse_extensions(reply: Reply) -> dict[str, str]:
    """Map each EHLO keyword (upper-cased) to its parameters (RFC 5321 §4.1.1.1)."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:  # the first line is the server's domain and greeting
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


class ClientConnection:
    """One SMTP client session's protocol state, fed and drained by an I/O driver."""

    __slots__ = ("state", "extensions", "pending", "authenticated", "_parser", "_eof")
    _send_table = SEND  # the legal moves (LmtpConnection: LMTP_SEND)
    _may_continue = GROUP_MAY_CONTINUE  # commands a group (or a new group) may follow unanswered

    def __init__(self) -> None:
        self.state: State = State.CONNECTED
        self.extensions: dict[str, str] = {}
        self.pending: deque[Command] = deque()
        self.authenticated = False  # a 235 ended an AUTH exchange (RFC 4954 §4)
        self._parser = ReplyParser()
        self._eof = False

    def __repr__(self) -> str:
        ext = ",".join(sorted(self.extensions))
        return f"<ClientConnection state={self.state.name} pending={len(self.pending)} extensions=[{ext}]>"

    def supports(self, keyword: str) -> bool:
        """True if the last EHLO reply advertised ``keyword`` (case-insensitive)."""
        return keyword.upper() in self.extensions

    @property
    def size_limit(self) -> int | None:
        """The positive SIZE limit advertised by the last EHLO, or None (RFC 1870 §3, §7)."""
        params = self.extensions.get(_SIZE)
        return None if params is None else parse_size_limit(params)

    def _may_send(self) -> None:
        """Raise unless a new command may go out now (X03 lock-step / RFC 2920 §3.1 groups)."""
        if not self.pending:
            return
        if not self.supports(_PIPELINING):
            raise LocalProtocolError(
                f"a reply is still pending and the server did not advertise {_PIPELINING}"
            )
        if type(self.pending[-1]) not in self._may_continue:
            raise LocalProtocolError(
                f"{type(self.pending[-1]).__name__} must be answered before the next command (RFC 2920 §3.1)"
            )

    def _apply_send(self, command: Command) -> bytes:
        wire = command.to_bytes()
        self.state = next_state_on_send(self.state, command, self._send_table)
        self.pending.append(command)
        if type(command) in (Ehlo, Helo, Lhlo):
            self.extensions = {}  # a new EHLO replaces everything we knew (RFC 5321 §4.1.1.1)
        return wire

    def _check_auth(self, command: Command) -> None:
        if not isinstance(command, _AUTH_COMMANDS):
            return
        if self.pending:
            raise LocalProtocolError("AUTH is never pipelined: a reply is still pending (RFC 4954 §4)")
        if self.authenticated and not isinstance(command, AuthResponse):
            raise LocalProtocolError("already authenticated: a second AUTH is refused (RFC 4954 §4)")

    def send(self, command: Command) -> bytes:
        """Record ``command`` as sent and return its wire bytes."""
        self._check_auth(command)
        self._may_send()
        return self._apply_send(command)

    def send_pipelined(self, commands: Sequence[Command]) -> bytes:
        """Record a pipelined command group (RFC 2920) and return its bytes, for one write.

        Only MAIL, RCPT, RSET, a non-last BDAT and the end of the data (the content after a 354,
        or BDAT LAST) may be followed by another command in the group; the state table says
        which (after the end of the data: the next transaction's RSET or MAIL, RFC 2920 §3.1).
        The group is checked as a whole before any state changes.
        """
        if not commands:
            raise LocalProtocolError("empty command group")
        if any(isinstance(command, _AUTH_COMMANDS) for command in commands):
            if len(commands) > 1:
                raise LocalProtocolError("AUTH is never pipelined (RFC 4954 §4); send it alone")
            self._check_auth(commands[0])
        if len(commands) > 1 and not self.supports(_PIPELINING):
            raise LocalProtocolError(f"the server did not advertise {_PIPELINING}")
        for command in commands[:-1]:
            if type(command) not in self._may_continue:
                raise LocalProtocolError(
                    f"{type(command).__name__} must be the last command of a group (RFC 2920 §3.1)"
                )
        self._may_send()
        state, table = self.state, self._send_table
        for command in commands:  # dry run: all-or-nothing
            state = next_state_on_send(state, command, table)
        return b"".join([self._apply_send(command) for command in commands])

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the server; ``b""`` means the server closed the connection."""
        if data:
            self._parser.receive(data)
        else:
            self._eof = True

    def next_event(self) -> Event:
        """Return the next ``Replied``, ``Closed`` at end of file, or ``NEED_DATA``."""
        if self.state is State.ERROR:
            raise RemoteProtocolError("the connection already failed")
        try:
            reply = self._parser.next_reply()
        except RemoteProtocolError:
            self.state = State.ERROR
            raise
        if reply is None:
            if self._eof:
                self.state = State.CLOSED
                return Closed()
            return NEED_DATA
        return self._match(reply)

    def _match(self, reply: Reply) -> Replied:
        pending = self.pending
        if len(pending) > 1 and reply.code != 421 and type(pending[0]) in _NOT_LAST_FAST \
                and self.state is not State.CONNECTED:
            # a reply to MAIL, RCPT or RSET with more commands pending (a pipelined group): the
            # state stays as it is (``next_state_on_reply`` with last=False), nothing else to note
            return Replied(pending.popleft(), reply)
        if self.state is State.CONNECTED:
            command = None
        elif self.pending:
            command = self.pending.popleft()
        elif reply.code == 421:  # §3.8: a server may announce shutdown at any time
            command = None
        else:
            self.state = State.ERROR
            raise RemoteProtocolError(f"unsolicited reply {reply}")
        self.state = next_state_on_reply(self.state, command, reply, last=not self.pending)
        if self.state is State.CLOSED:
            self.pending.clear()  # §3.8 / R08: nothing more will be answered
        elif type(command) is StartTls and reply.is_success:
            if self._parser.buffered:
                # RFC 3207 §4.2 / §6 (STANDARDS L03): bytes before the handshake are an injection.
                self.state = State.ERROR
                raise RemoteProtocolError("data received after the STARTTLS 220, before TLS")
            self.extensions = {}  # RFC 3207 §4.2: forget everything learnt before TLS
            self.authenticated = False
        elif isinstance(command, _AUTH_COMMANDS) and reply.code == 235:
            self.authenticated = True  # RFC 4954 §6: 235 2.7.0 Authentication successful
        elif type(command) in (Ehlo, Lhlo) and reply.is_success:
            self.extensions = parse_extensions(reply)
        return Replied(command, reply)


class LmtpConnection(ClientConnection):
    """One LMTP client session (RFC 2033): ``LMTP_SEND`` legality (LHLO, never EHLO or HELO) and,
    after the final dot or BDAT LAST, one reply per RCPT accepted in that transaction, in RCPT
    order (§4.2), each reported as ``Replied`` for the payload command; the state leaves
    ``PAYLOAD_SENT`` with the last of them. A 421 among them closes the session as in SMTP. The
    SMTP class runs none of this.
    """

    __slots__ = ("rcpts_accepted",)
    _send_table = LMTP_SEND
    # Nothing follows the end of the data before all its replies: how many there are is only
    # known from the RCPT replies (RFC 2033 §4.2).
    _may_continue = GROUP_MAY_CONTINUE - PER_RECIPIENT_REPLIES

    def __init__(self) -> None:
        super().__init__()
        self.rcpts_accepted = 0  # RCPTs accepted so far in the current transaction

    def __repr__(self) -> str:
        return "<Lmtp" + super().__repr__()[len("<Client"):]

    def _match(self, reply: Reply) -> Replied:
        pending = self.pending
        if pending and self.state is not State.CONNECTED:
            answered = type(pending[0])
            if answered is RcptTo:
                if reply.is_success:
                    self.rcpts_accepted += 1
            elif answered is MailFrom:
                self.rcpts_accepted = 0  # a new transaction (RFC 5321 §4.1.1.2)
            elif answered in PER_RECIPIENT_REPLIES:
                # The first of the per-recipient replies (RFC 2033 §4.2): from now on the command
                # is pending once per reply still due, so ordering, "last" and the state table
                # work exactly as for distinct commands.
                extra = self.rcpts_accepted - 1
                self.rcpts_accepted = 0
                if extra > 0:
                    pending.extendleft(repeat(pending[0], extra))
        return super()._match(reply)
