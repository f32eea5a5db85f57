"""LMTP in the sans-IO core: LHLO only, and one reply per accepted RCPT after the data (RFC 2033)."""

from __future__ import annotations

import pytest
from scripted import ScriptedServer, send_from

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp._state import LMTP_SEND, SEND, State
from mta_engine.smtp.body import data_payload
from mta_engine.smtp.connection import ClientConnection, LmtpConnection
from mta_engine.smtp.events import (
    Bdat,
    BdatLast,
    Command,
    Data,
    Ehlo,
    Helo,
    Lhlo,
    MailFrom,
    Payload,
    Quit,
    RcptTo,
    Replied,
    Rset,
)

HELLOS: list[Command] = [Lhlo("client.example"), Ehlo("client.example"), Helo("client.example")]
_CASES = [(state, command) for state in State for command in HELLOS]
BODY = Payload(data_payload(b"Subject: hi\r\n\r\nhi\r\n"))


def lmtp_ready(*keywords: str) -> ScriptedServer:
    """An LmtpConnection greeted and answered LHLO advertising ``keywords``; ends READY."""
    server = ScriptedServer(LmtpConnection())
    server.reply(b"220 lmtp.example LMTP\r\n")
    server.send(Lhlo("client.example"))
    lines = [b"lmtp.example", *(k.encode() for k in keywords)]
    server.reply(b"".join(b"250-" + line + b"\r\n" for line in lines[:-1]) + b"250 " + lines[-1] + b"\r\n")
    server.wire.clear()
    return server


def open_data(server: ScriptedServer, rcpt_codes: list[int]) -> None:
    """Lock-step MAIL, one RCPT per code (answered with it), DATA 354, then the payload."""
    server.send(MailFrom("a@x.example"))
    server.reply(b"250 ok\r\n")
    for n, code in enumerate(rcpt_codes):
        server.send(RcptTo(f"r{n}@y.example"))
        server.reply(b"%d rcpt\r\n" % code)
    server.send(Data())
    server.reply(b"354 go\r\n")
    server.send(BODY)


@pytest.mark.parametrize(("state", "command"), _CASES, ids=[f"{s.name}-{type(c).__name__}" for s, c in _CASES])
def test_lmtp_hello_table(state: State, command: Command) -> None:
    """On an LMTP connection only LHLO greets: every pair outside LMTP_SEND raises (RFC 2033 §4.1)."""
    conn = LmtpConnection()
    if send_from(conn, state, command, LMTP_SEND) is None:
        assert conn.state is state and not conn.pending
    else:
        assert isinstance(command, Lhlo)


def test_lmtp_table_is_smtp_apart_from_the_greeting() -> None:
    """Apart from LHLO replacing EHLO/HELO, LMTP_SEND is SEND (RFC 2033 §4: ESMTP semantics)."""
    hellos = (Ehlo, Helo, Lhlo)
    assert {k: v for k, v in LMTP_SEND.items() if k[1] not in hellos} == {
        k: v for k, v in SEND.items() if k[1] not in hellos}
    assert not any(k[1] is Lhlo for k in SEND)
    with pytest.raises(LocalProtocolError):
        ScriptedServer().ready().send(Lhlo("client.example"))


def test_lhlo_reply_gives_extensions() -> None:
    """A 250 to LHLO makes the session READY with the advertised keywords."""
    server = lmtp_ready("PIPELINING", "8BITMIME", "CHUNKING")
    assert server.conn.state is State.READY
    assert server.conn.supports("PIPELINING") and server.conn.supports("CHUNKING")


@pytest.mark.parametrize("code", [500, 502, 554])
def test_refused_lhlo_has_no_helo_fallback(code: int) -> None:
    """Any LHLO refusal is final: no HELO after it, only QUIT (RFC 2033 §4.1)."""
    server = ScriptedServer(LmtpConnection())
    server.reply(b"220 lmtp\r\n")
    server.send(Lhlo("client.example"))
    server.reply(b"%d no\r\n" % code)
    assert server.conn.state is State.REFUSED
    for command in (Helo("client.example"), Lhlo("client.example")):
        with pytest.raises(LocalProtocolError):
            server.send(command)
    server.send(Quit())


def test_one_reply_per_accepted_rcpt_after_the_dot() -> None:
    """Two of three RCPTs accepted: two replies to the dot, in RCPT order; READY after the last."""
    server = lmtp_ready("8BITMIME")
    open_data(server, [250, 550, 250])
    events = server.reply(b"250 2.0.0 r0 delivered\r\n")
    assert events == [Replied(BODY, events[0].reply)] and events[0].reply.code == 250  # type: ignore[union-attr]
    assert server.conn.state is State.PAYLOAD_SENT and len(server.conn.pending) == 1
    assert server.replies(b"452 4.2.2 r2 over quota\r\n") == [("Payload", 452)]
    assert server.conn.state is State.READY and not server.conn.pending


def test_nothing_is_sent_until_every_recipient_is_answered() -> None:
    """While per-recipient replies are due no command may go out, pipelined or not."""
    server = lmtp_ready("PIPELINING")
    open_data(server, [250, 250, 250])
    server.reply(b"250 ok\r\n")
    for command in (Rset(), MailFrom("a@x.example"), Quit()):
        with pytest.raises(LocalProtocolError):
            server.send(command)
    assert server.replies(b"250 ok\r\n550 5.1.1 gone\r\n") == [("Payload", 250), ("Payload", 550)]
    server.send(Rset())


def test_pipelined_bdat_last_gets_per_recipient_replies() -> None:
    """MAIL, RCPTs and BDAT LAST in one group; the RCPT replies decide how many replies BDAT LAST gets."""
    server = lmtp_ready("PIPELINING", "CHUNKING")
    group: list[Command] = [MailFrom("a@x.example"), *(RcptTo(f"r{n}@y.example") for n in range(3)),
                            Bdat(b"ab"), BdatLast(b"c\r\n")]
    server.send_pipelined(group)
    replies = server.replies(b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n250 2 octets\r\n"
                             b"250 r0 ok\r\n451 4.3.0 r2 later\r\n")
    assert replies == [("MailFrom", 250), ("RcptTo", 250), ("RcptTo", 550), ("RcptTo", 250), ("Bdat", 250),
                       ("BdatLast", 250), ("BdatLast", 451)]
    assert server.conn.state is State.READY and not server.conn.pending


def test_no_accepted_rcpt_means_one_reply() -> None:
    """BDAT LAST pipelined after RCPTs that all failed is answered once."""
    server = lmtp_ready("PIPELINING", "CHUNKING")
    server.send_pipelined([MailFrom("a@x.example"), RcptTo("r@y.example"), BdatLast(b"x\r\n")])
    assert server.replies(b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n") == [
        ("MailFrom", 250), ("RcptTo", 550), ("BdatLast", 554)]
    assert server.conn.state is State.READY and not server.conn.pending


def test_each_transaction_counts_its_own_recipients() -> None:
    """A second transaction on the session expects replies for its own accepted RCPTs only."""
    server = lmtp_ready("PIPELINING")
    open_data(server, [250, 250, 250])
    server.reply(b"250 a\r\n250 b\r\n250 c\r\n")
    server.send_pipelined([Rset(), MailFrom("a@x.example"), RcptTo("r@y.example"), Data()])
    server.reply(b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    server.send(BODY)
    assert server.replies(b"250 only one\r\n") == [("Payload", 250)]
    assert server.conn.state is State.READY and not server.conn.pending


def test_replies_split_anywhere_are_matched_in_order() -> None:
    """Per-recipient replies arriving one byte at a time are matched exactly as a whole write."""
    server = lmtp_ready()
    open_data(server, [250, 250])
    data = b"250-r0 first line\r\n250 r0 delivered\r\n550 5.2.1 r1 mailbox disabled\r\n"
    assert server.replies(data, chunks=[1] * len(data)) == [("Payload", 250), ("Payload", 550)]
    assert server.conn.state is State.READY


def test_421_among_the_replies_closes_the_session() -> None:
    """A 421 in place of a recipient's reply closes the session; nothing more is pending (§3.8)."""
    server = lmtp_ready()
    open_data(server, [250, 250, 250])
    assert server.replies(b"250 ok\r\n421 4.3.2 shutting down\r\n") == [("Payload", 250), ("Payload", 421)]
    assert server.conn.state is State.CLOSED and not server.conn.pending


def test_smtp_connection_takes_one_reply_after_the_dot() -> None:
    """Control: the SMTP class answers the dot once whatever the number of recipients."""
    server = ScriptedServer(ClientConnection()).ready()
    open_data(server, [250, 250])
    assert server.replies(b"250 queued\r\n") == [("Payload", 250)]
    assert server.conn.state is State.READY


def test_repr_names_lmtp() -> None:
    """repr tells an LMTP connection from an SMTP one."""
    server = lmtp_ready("PIPELINING")
    assert repr(server.conn) == "<LmtpConnection state=READY pending=0 extensions=[PIPELINING]>"
