"""ClientConnection driven by a ScriptedServer: ordering, pipelining, fallbacks and legality."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scripted import ScriptedServer, send_from

from mta_engine.errors import LocalProtocolError, RemoteProtocolError
from mta_engine.smtp._state import SEND, State
from mta_engine.smtp.body import data_payload
from mta_engine.smtp.connection import ClientConnection
from mta_engine.smtp.events import (
    NEED_DATA,
    Closed,
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
    Replied,
    Rset,
    StartTls,
)
from mta_engine.smtp.reply import Reply

# One sample value of every command type, for table-driven tests.
SAMPLES: list[Command] = [
    Ehlo("client.example"),
    Helo("client.example"),
    Lhlo("client.example"),
    MailFrom("a@example.com"),
    RcptTo("b@example.net"),
    Data(),
    Payload(data_payload(b"hi")),
    Rset(),
    Noop(),
    Quit(),
    StartTls(),
]
TRANSACTION = [MailFrom("a@example.com"), RcptTo("b@example.net"), RcptTo("c@example.net"), Data()]


def test_greeting_is_the_first_reply() -> None:
    """The first reply is the greeting, reported with command None, and moves to GREETED."""
    server = ScriptedServer()
    (event,) = server.reply(b"220 mx.example ESMTP\r\n")
    assert event == Replied(None, Reply(220, ("mx.example ESMTP",)))
    assert server.conn.state is State.GREETED


def test_nothing_is_sent_before_the_greeting() -> None:
    """EHLO before the 220 is our bug (S01)."""
    with pytest.raises(LocalProtocolError):
        ClientConnection().send(Ehlo("client.example"))


@pytest.mark.parametrize("code", [500, 502])
def test_ehlo_falls_back_to_helo(code: int) -> None:
    """500/502 to EHLO allows HELO on the same connection, and HELO's 250 makes it READY (S02)."""
    server = ScriptedServer()
    server.reply(b"220 mx\r\n")
    server.send(Ehlo("client.example"))
    server.reply(b"%d 5.5.1 command not recognized\r\n" % code)
    assert server.conn.state is State.GREETED
    server.send(Helo("client.example"))
    assert server.wire == b"EHLO client.example\r\nHELO client.example\r\n"
    assert server.replies(b"250 mx\r\n") == [("Helo", 250)]
    assert server.conn.state is State.READY
    assert server.conn.extensions == {}


@pytest.mark.parametrize("data", [b"554 5.7.1 go away\r\n", b"451 try later\r\n"])
def test_ehlo_refusal_leaves_only_quit(data: bytes) -> None:
    """A non-500/502 EHLO refusal forbids HELO and MAIL; QUIT is still allowed (S03)."""
    server = ScriptedServer()
    server.reply(b"220 mx\r\n")
    server.send(Ehlo("client.example"))
    server.reply(data)
    assert server.conn.state is State.REFUSED
    for command in (Helo("client.example"), MailFrom("a@example.com")):
        with pytest.raises(LocalProtocolError):
            server.send(command)
    assert server.send(Quit()) == b"QUIT\r\n"


def test_554_greeting_allows_only_quit() -> None:
    """A 554 greeting leaves the connection REFUSED: QUIT but no EHLO (S01)."""
    server = ScriptedServer()
    server.reply(b"554 5.7.1 no service\r\n")
    assert server.conn.state is State.REFUSED
    with pytest.raises(LocalProtocolError):
        server.send(Ehlo("client.example"))
    server.send(Quit())
    assert server.replies(b"221 bye\r\n") == [("Quit", 221)]
    assert server.conn.state is State.CLOSED


def test_multiline_ehlo_byte_by_byte() -> None:
    """A multi-line EHLO reply fed one byte at a time yields one event and all extensions."""
    server = ScriptedServer()
    server.reply(b"220 mx\r\n")
    server.send(Ehlo("client.example"))
    data = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250 8BITMIME\r\n"
    events = server.reply(data, chunks=[1] * len(data))
    assert len(events) == 1
    assert server.conn.extensions == {"PIPELINING": "", "SIZE": "35882577", "8BITMIME": ""}


def test_extensions_are_case_insensitive_and_wiped_by_new_ehlo() -> None:
    """Keywords are upper-cased; a new EHLO forgets them until its own reply arrives (S05)."""
    server = ScriptedServer().ready("pipelining", "Size 1000", "auth PLAIN login")
    assert server.conn.extensions == {"PIPELINING": "", "SIZE": "1000", "AUTH": "PLAIN login"}
    assert server.conn.supports("Pipelining")
    server.send(Ehlo("client.example"))
    assert server.conn.extensions == {}
    server.reply(b"250-mx\r\n250 chunking\r\n")
    assert server.conn.extensions == {"CHUNKING": ""}
    assert not server.conn.supports("PIPELINING")


def test_lockstep_transaction() -> None:
    """Without PIPELINING each command waits for its reply and the wire is exact."""
    server = ScriptedServer().ready("SIZE 1000")
    server.send(MailFrom("a@example.com", ("SIZE=5",)))
    with pytest.raises(LocalProtocolError):
        server.send(RcptTo("b@example.net"))  # X03: MAIL is unanswered
    assert server.replies(b"250 2.1.0 ok\r\n") == [("MailFrom", 250)]
    server.send(RcptTo("b@example.net"))
    assert server.replies(b"250 2.1.5 ok\r\n") == [("RcptTo", 250)]
    server.send(Data())
    assert server.replies(b"354 go\r\n") == [("Data", 354)]
    server.send(Payload(data_payload(b"hello")))
    assert server.replies(b"250 2.0.0 queued\r\n") == [("Payload", 250)]
    assert server.conn.state is State.READY
    assert bytes(server.wire) == (
        b"MAIL FROM:<a@example.com> SIZE=5\r\nRCPT TO:<b@example.net>\r\nDATA\r\nhello\r\n.\r\n"
    )


PIPELINED_REPLIES = (
    b"250 reset\r\n250 2.1.0 ok\r\n250-2.1.5 ok\r\n250 2.1.5 still ok\r\n452 4.5.3 too many\r\n354 go\r\n"
)


@given(cuts=st.lists(st.integers(1, 25), max_size=40))
def test_pipelined_replies_in_any_chunking(cuts: list[int]) -> None:
    """Replies to a pipelined group match their commands in order whatever the chunking."""
    server = ScriptedServer().ready("PIPELINING")
    server.send_pipelined([Rset(), *TRANSACTION])
    assert server.replies(PIPELINED_REPLIES, chunks=cuts) == [
        ("Rset", 250),
        ("MailFrom", 250),
        ("RcptTo", 250),
        ("RcptTo", 452),
        ("Data", 354),
    ]
    assert server.conn.state is State.DATA_READY
    assert not server.conn.pending


def test_452_on_one_rcpt_is_just_that_rcpt() -> None:
    """A 452 answers its own RCPT; the transaction continues to DATA (T05, T06)."""
    server = ScriptedServer().ready("PIPELINING")
    server.send_pipelined(TRANSACTION)
    events = server.reply(b"250 ok\r\n452 4.5.3 too many recipients\r\n250 ok\r\n354 go\r\n")
    assert [(e.command, e.reply.code) for e in events if isinstance(e, Replied)] == [
        (TRANSACTION[0], 250),
        (TRANSACTION[1], 452),
        (TRANSACTION[2], 250),
        (TRANSACTION[3], 354),
    ]
    assert server.conn.state is State.DATA_READY


def test_failed_mail_in_group_ends_ready() -> None:
    """MAIL 550 then 503s for RCPT and DATA leave the connection READY, no payload allowed."""
    server = ScriptedServer().ready("PIPELINING")
    server.send_pipelined(TRANSACTION)
    server.reply(b"550 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 RCPT first\r\n")
    assert server.conn.state is State.READY
    with pytest.raises(LocalProtocolError):
        server.send(Payload(data_payload(b"x")))


def test_data_rejected_means_no_payload() -> None:
    """A non-354 DATA reply forbids sending content (D07, X02)."""
    server = ScriptedServer().ready()
    server.send(MailFrom("a@example.com"))
    server.reply(b"250 ok\r\n")
    server.send(RcptTo("b@example.net"))
    server.reply(b"250 ok\r\n")
    server.send(Data())
    server.reply(b"554 5.5.1 no valid recipients\r\n")
    assert server.conn.state is State.READY
    with pytest.raises(LocalProtocolError):
        server.send(Payload(data_payload(b"x")))


def _at_greeting() -> ScriptedServer:
    return ScriptedServer()


def _at_mail() -> ScriptedServer:
    server = ScriptedServer().ready()
    server.send(MailFrom("a@example.com"))
    return server


def _at_rcpt() -> ScriptedServer:
    server = ScriptedServer().ready("PIPELINING")
    server.send_pipelined(TRANSACTION)
    server.reply(b"250 ok\r\n")  # MAIL answered; two RCPTs and DATA pending
    return server


def _at_data() -> ScriptedServer:
    server = ScriptedServer().ready("PIPELINING")
    server.send_pipelined(TRANSACTION)
    server.reply(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    return server


def _after_payload() -> ScriptedServer:
    server = _at_data()
    server.reply(b"354 go\r\n")
    server.send(Payload(data_payload(b"hi")))
    return server


@pytest.mark.parametrize("setup", [_at_greeting, _at_mail, _at_rcpt, _at_data, _after_payload])
def test_421_anywhere_closes(setup: Callable[[], ScriptedServer]) -> None:
    """A 421 is matched like any reply, then the connection is CLOSED and nothing else pends (R08)."""
    server = setup()
    events = server.reply(b"421 4.3.2 shutting down\r\n")
    assert len(events) == 1 and isinstance(events[0], Replied)
    assert events[0].reply.code == 421
    assert server.conn.state is State.CLOSED
    assert not server.conn.pending
    for command in (Quit(), Rset(), MailFrom("a@example.com")):
        with pytest.raises(LocalProtocolError):
            server.send(command)


def test_unsolicited_421_while_idle() -> None:
    """An idle connection may receive a 421 with no command pending; it is reported, then CLOSED."""
    server = ScriptedServer().ready()
    assert server.reply(b"421 4.4.2 idle timeout\r\n") == [Replied(None, Reply(421, ("4.4.2 idle timeout",)))]
    assert server.conn.state is State.CLOSED


def test_unsolicited_reply_is_a_remote_error() -> None:
    """A non-421 reply with nothing pending is the server's protocol error; the connection is dead."""
    server = ScriptedServer().ready()
    with pytest.raises(RemoteProtocolError):
        server.reply(b"250 surprise\r\n")
    assert server.conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        server.conn.next_event()


def test_garbage_reply_is_a_remote_error() -> None:
    """A malformed reply raises RemoteProtocolError and moves to ERROR (R02)."""
    server = ScriptedServer().ready()
    server.send(Noop())
    with pytest.raises(RemoteProtocolError):
        server.reply(b"HTTP/1.1 400 Bad Request\r\n")
    assert server.conn.state is State.ERROR


def test_eof_after_buffered_replies() -> None:
    """Replies received before EOF are delivered first, then Closed."""
    server = ScriptedServer().ready()
    server.send(Quit())
    server.conn.receive_data(b"221 bye\r\n")
    server.conn.receive_data(b"")
    assert isinstance(server.conn.next_event(), Replied)
    assert server.conn.next_event() == Closed()
    assert server.conn.state is State.CLOSED


def test_need_data_until_a_reply_is_complete() -> None:
    """next_event returns NEED_DATA while a reply is incomplete."""
    server = ScriptedServer().ready()
    server.send(Noop())
    server.conn.receive_data(b"250 o")
    assert server.conn.next_event() is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"


def test_starttls_wipes_extensions_and_requires_ehlo() -> None:
    """A 220 to STARTTLS forgets the extensions and only EHLO may follow (RFC 3207 §4.2, L02)."""
    server = ScriptedServer().ready("STARTTLS", "PIPELINING")
    server.send(StartTls())
    server.reply(b"220 2.0.0 ready\r\n")
    assert server.conn.state is State.GREETED
    assert server.conn.extensions == {}
    with pytest.raises(LocalProtocolError):
        server.send(MailFrom("a@example.com"))


def test_starttls_injection_is_refused() -> None:
    """Bytes after the STARTTLS 220, before the handshake, are an attack (L03)."""
    server = ScriptedServer().ready("STARTTLS")
    server.send(StartTls())
    with pytest.raises(RemoteProtocolError, match="STARTTLS"):
        server.reply(b"220 ready\r\n250 injected\r\n")
    assert server.conn.state is State.ERROR


def test_starttls_454_continues_in_plaintext() -> None:
    """A 454 to STARTTLS leaves the session READY with its extensions (L01)."""
    server = ScriptedServer().ready("STARTTLS")
    server.send(StartTls())
    server.reply(b"454 4.7.0 TLS not available\r\n")
    assert server.conn.state is State.READY
    assert server.conn.supports("STARTTLS")


def test_pipelining_requires_the_extension() -> None:
    """A group of more than one command needs PIPELINING (X01)."""
    server = ScriptedServer().ready()
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        server.send_pipelined(TRANSACTION)
    assert server.conn.state is State.READY and not server.conn.pending


@pytest.mark.parametrize(
    "group",
    [
        [Data(), MailFrom("a@example.com")],
        [Noop(), MailFrom("a@example.com")],
        [Ehlo("client.example"), MailFrom("a@example.com")],
        [StartTls(), Ehlo("client.example")],
        [Quit(), Rset()],
    ],
)
def test_group_enders_must_be_last(group: list[Command]) -> None:
    """EHLO, DATA, NOOP, QUIT and STARTTLS end a group (RFC 2920 §3.1); the group is refused whole."""
    server = ScriptedServer().ready("PIPELINING")
    with pytest.raises(LocalProtocolError):
        server.send_pipelined(group)
    assert server.conn.state is State.READY and not server.conn.pending and not server.wire


def test_illegal_group_changes_nothing() -> None:
    """A group that is illegal in the current state is rejected before any state change."""
    server = ScriptedServer().ready("PIPELINING")
    with pytest.raises(LocalProtocolError):
        server.send_pipelined([MailFrom("a@example.com"), Data()])  # DATA before any RCPT
    assert server.conn.state is State.READY and not server.conn.pending


def test_no_command_after_a_group_ender_until_answered() -> None:
    """After DATA in flight nothing else may be sent, even with PIPELINING."""
    server = ScriptedServer().ready("PIPELINING")
    server.send_pipelined(TRANSACTION)
    with pytest.raises(LocalProtocolError):
        server.send(Rset())


def test_group_may_continue_after_rcpt() -> None:
    """With PIPELINING a new group may follow an unanswered RCPT."""
    server = ScriptedServer().ready("PIPELINING")
    server.send_pipelined([MailFrom("a@example.com"), RcptTo("b@example.net")])
    server.send_pipelined([RcptTo("c@example.net"), Data()])
    assert len(server.conn.pending) == 4


_TABLE_CASES = [(state, command) for state in State for command in SAMPLES]


@pytest.mark.parametrize(
    ("state", "command"), _TABLE_CASES, ids=[f"{s.name}-{type(c).__name__}" for s, c in _TABLE_CASES]
)
def test_transition_table(state: State, command: Command) -> None:
    """Every (state, command) pair outside the SEND table raises; every pair inside lands where it says."""
    conn = ClientConnection()
    sent = send_from(conn, state, command, SEND)
    if sent is None:
        assert conn.state is state and not conn.pending
    else:
        assert sent == command.to_bytes()
        assert list(conn.pending) == [command]


def test_repr_shows_state_pending_and_extensions() -> None:
    """repr names the state, the number of pending commands and the extension keywords."""
    server = ScriptedServer().ready("SIZE 10", "PIPELINING")
    server.send_pipelined(TRANSACTION)
    assert repr(server.conn) == "<ClientConnection state=DATA_SENT pending=4 extensions=[PIPELINING,SIZE]>"


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (MailFrom(""), b"MAIL FROM:<>\r\n"),
        (
            MailFrom("a@example.com", ("SIZE=10", "BODY=8BITMIME")),
            b"MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME\r\n",
        ),
        (RcptTo("b@example.net", ("NOTIFY=NEVER",)), b"RCPT TO:<b@example.net> NOTIFY=NEVER\r\n"),
        (Lhlo("client.example"), b"LHLO client.example\r\n"),
        (Rset(), b"RSET\r\n"),
        (StartTls(), b"STARTTLS\r\n"),
    ],
)
def test_command_wire_form(command: Command, wire: bytes) -> None:
    """Each command renders its exact RFC 5321 wire form."""
    assert command.to_bytes() == wire


@pytest.mark.parametrize(
    "make",
    [
        lambda: MailFrom("a@example.com\r\nRCPT TO:<x@evil>"),
        lambda: RcptTo("b@example.net\n"),
        lambda: RcptTo(""),
        lambda: MailFrom("a@example.com", ("SIZE=1\r\nDATA",)),
        lambda: MailFrom("a@example.com", ("",)),
        lambda: Ehlo("bad name"),
        lambda: Ehlo("evil\rname"),
        lambda: RcptTo("x" * 500 + "@example.net"),
        lambda: Payload(b"a\n.\r\n"),
        lambda: Payload(b"a\r\n.\r\nb\r\n.\r\n"),
        lambda: Payload(b"no terminator\r\n"),
        lambda: Payload(b".\r\nrest\r\n.\r\n"),
    ],
)
def test_unsafe_commands_are_refused(make: Callable[[], object]) -> None:
    """CR/LF injection, oversize lines and unprepared payloads raise LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        make()


def test_command_line_limit_is_512_octets() -> None:
    """A 512-octet command line is allowed and 513 is not (RFC 5321 §4.5.3.1.4)."""
    fixed = len(b"RCPT TO:<>\r\n")
    assert len(RcptTo("x" * (512 - fixed)).to_bytes()) == 512
    with pytest.raises(LocalProtocolError):
        RcptTo("x" * (513 - fixed))


def test_pipelined_replies_keep_the_state_until_the_last_one() -> None:
    """The replies to MAIL and RCPT of a pipelined group, a refusal among them, leave the state
    where the group put it; the last reply (to DATA) moves it; each is matched to its command."""
    server = ScriptedServer().ready("PIPELINING")
    group = [MailFrom("a@example.com"), RcptTo("b@example.net"), RcptTo("c@example.net"),
             RcptTo("d@example.net"), Data()]
    server.send_pipelined(group)
    sent_state = server.conn.state
    seen = []
    for line in (b"250 ok\r\n", b"250 ok\r\n", b"550 5.1.1 no such user\r\n", b"250 ok\r\n"):
        (event,) = server.reply(line)
        seen.append((type(event.command).__name__, event.reply.code))
        assert server.conn.state is sent_state
    assert seen == [("MailFrom", 250), ("RcptTo", 250), ("RcptTo", 550), ("RcptTo", 250)]
    (event,) = server.reply(b"354 go\r\n")
    assert type(event.command) is Data and server.conn.state is State.DATA_READY
    assert not server.conn.pending
