"""ScriptedServer: replays server replies against a ClientConnection, no sockets (h11 style)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp._state import State
from mta_engine.smtp.connection import ClientConnection
from mta_engine.smtp.events import NEED_DATA, Command, Ehlo, Event, Replied


class ScriptedServer:
    """Holds a ClientConnection, records every byte the client sent, feeds it scripted replies."""

    def __init__(self, conn: ClientConnection | None = None) -> None:
        self.conn = conn if conn is not None else ClientConnection()
        self.wire = bytearray()  # everything the client "wrote"

    def send(self, command: Command) -> bytes:
        """Send one command through the connection and record its bytes."""
        data = self.conn.send(command)
        self.wire += data
        return data

    def send_pipelined(self, commands: Sequence[Command]) -> bytes:
        """Send a pipelined group and record its bytes."""
        data = self.conn.send_pipelined(commands)
        self.wire += data
        return data

    def drain(self) -> list[Event]:
        """Collect events until NEED_DATA (or Closed)."""
        events: list[Event] = []
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return events
            events.append(event)
            if not isinstance(event, Replied):
                return events

    def reply(self, data: bytes, chunks: Iterable[int] | None = None) -> list[Event]:
        """Feed ``data`` (split at the given chunk sizes, or whole) and collect the events."""
        events: list[Event] = []
        if chunks is None:
            self.conn.receive_data(data)
            return self.drain()
        pos = 0
        for size in chunks:
            if pos >= len(data):
                break
            self.conn.receive_data(data[pos : pos + size])
            pos += size
            events += self.drain()
        if pos < len(data):
            self.conn.receive_data(data[pos:])
            events += self.drain()
        return events

    def replies(self, data: bytes, chunks: Iterable[int] | None = None) -> list[tuple[str, int]]:
        """Like ``reply`` but as (command name, code) pairs, for compact assertions."""
        out = []
        for event in self.reply(data, chunks):
            assert isinstance(event, Replied), event
            name = type(event.command).__name__ if event.command is not None else "greeting"
            out.append((name, event.reply.code))
        return out

    def ready(self, *keywords: str) -> ScriptedServer:
        """Greet and answer EHLO advertising ``keywords``; the connection ends READY."""
        self.reply(b"220 mx.example ESMTP\r\n")
        self.send(Ehlo("client.example"))
        lines = [b"mx.example hello", *(k.encode() for k in keywords)]
        body = b"".join(b"250-" + line + b"\r\n" for line in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"
        self.reply(body)
        self.wire.clear()
        return self


def send_from(conn: ClientConnection, state: State, command: Command,
              table: Mapping[tuple[State, type], State]) -> bytes | None:
    """Put ``conn`` in ``state`` and send ``command`` as the transition ``table`` allows: when the
    table has no entry, check that sending raises ``LocalProtocolError`` and return None; else
    check that the state moved where the table says and return the bytes sent."""
    conn.state = state
    expected = table.get((state, type(command)))
    if expected is None:
        with pytest.raises(LocalProtocolError):
            conn.send(command)
        return None
    data = conn.send(command)
    assert conn.state is expected
    return data
