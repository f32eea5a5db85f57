"""Cancelling an AUTH exchange with "*" after a 334 we cannot answer (RFC 4954 §4)."""

from __future__ import annotations

from scripted import ScriptedServer

from mta_engine.smtp._state import State
from mta_engine.smtp.events import AuthPlain, AuthResponse, MailFrom


def test_plain_334_then_cancel_ends_unauthenticated() -> None:
    """334 to AUTH PLAIN with an initial response → "*" → 501: READY, not authenticated."""
    server = ScriptedServer().ready("AUTH PLAIN")
    server.send(AuthPlain("user", "pass"))
    assert server.replies(b"334 \r\n") == [("AuthPlain", 334)]
    server.wire.clear()
    server.send(AuthResponse("*"))
    assert bytes(server.wire) == b"*\r\n"
    assert server.replies(b"501 5.7.0 Auth aborted\r\n") == [("AuthResponse", 501)]
    assert server.conn.state is State.READY and not server.conn.authenticated
    server.send(MailFrom("a@x.example"))  # the session is sane again (the driver quits anyway)
