"""BDAT in the state table: after RCPT only, never mixed with DATA, pipelinable until LAST (RFC 3030)."""

from __future__ import annotations

import pytest
from scripted import ScriptedServer, send_from

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp._state import SEND, State
from mta_engine.smtp.connection import ClientConnection, parse_size_limit
from mta_engine.smtp.events import Bdat, BdatLast, Command, Data, MailFrom, Payload, RcptTo

SAMPLES: list[Command] = [Bdat(b"abc"), BdatLast(b"")]
_CASES = [(state, command) for state in State for command in SAMPLES]


@pytest.mark.parametrize(("state", "command"), _CASES, ids=[f"{s.name}-{type(c).__name__}" for s, c in _CASES])
def test_bdat_transition_table(state: State, command: Command) -> None:
    """Every (state, BDAT) pair outside the SEND table raises; every pair inside lands where it says."""
    send_from(ClientConnection(), state, command, SEND)


def test_bdat_wire_form() -> None:
    """BDAT carries the exact octet count and raw content; LAST marks the end (RFC 3030 §2)."""
    assert Bdat(b"a.\r\n").to_bytes() == b"BDAT 4\r\na.\r\n"
    assert BdatLast(b"").to_bytes() == b"BDAT 0 LAST\r\n"
    assert repr(BdatLast(b"xy")) == "BdatLast(<2 octets>)"


def test_pipelined_bdat_transaction() -> None:
    """MAIL, RCPT and BDAT chunks go in one group; the LAST chunk's reply ends the transaction."""
    server = ScriptedServer().ready("PIPELINING", "CHUNKING")
    server.send_pipelined([MailFrom("a@x"), RcptTo("b@y"), Bdat(b"ab"), BdatLast(b"c\r\n")])
    assert server.conn.state is State.PAYLOAD_SENT
    replies = server.replies(b"250 ok\r\n250 ok\r\n250 2 octets\r\n250 queued\r\n")
    assert replies == [("MailFrom", 250), ("RcptTo", 250), ("Bdat", 250), ("BdatLast", 250)]
    assert server.conn.state is State.READY


def test_failed_chunk_ends_the_transaction() -> None:
    """A 5xx to a non-last chunk leaves the transaction; no more chunks may follow (RFC 3030 §2)."""
    server = ScriptedServer().ready("CHUNKING")
    server.send(MailFrom("a@x"))
    server.reply(b"250 ok\r\n")
    server.send(RcptTo("b@y"))
    server.reply(b"250 ok\r\n")
    server.send(Bdat(b"ab"))
    server.reply(b"554 5.6.0 no\r\n")
    assert server.conn.state is State.READY
    with pytest.raises(LocalProtocolError):
        server.send(BdatLast(b""))


def test_data_and_bdat_never_mix() -> None:
    """After a BDAT chunk neither DATA nor a DATA payload may be sent (RFC 3030 §3)."""
    conn = ClientConnection()
    conn.state = State.BDAT_SENT
    for command in (Data(), Payload(b".\r\n")):
        with pytest.raises(LocalProtocolError):
            conn.send(command)


@pytest.mark.parametrize(("params", "limit"), [("", None), ("0", None), ("1000", 1000), ("x", None), (" 42 ", 42)])
def test_parse_size_limit(params: str, limit: int | None) -> None:
    """SIZE alone or 0 is no limit; a positive number is the limit (RFC 1870 §3)."""
    assert parse_size_limit(params) == limit


def test_size_limit_from_ehlo() -> None:
    """The connection exposes the advertised SIZE limit, and None when SIZE is absent."""
    assert ScriptedServer().ready("SIZE 5000").conn.size_limit == 5000
    assert ScriptedServer().ready("PIPELINING").conn.size_limit is None
