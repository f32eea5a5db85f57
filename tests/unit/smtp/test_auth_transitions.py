"""AUTH PLAIN / LOGIN in the sans-IO core: wire form, state table, lock-step, redacted repr (RFC 4954)."""

from __future__ import annotations

import base64

import pytest
from scripted import ScriptedServer, send_from

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp._state import SEND, State
from mta_engine.smtp.connection import ClientConnection
from mta_engine.smtp.events import AuthLogin, AuthPlain, AuthResponse, Command, MailFrom, Rset

SAMPLES: list[Command] = [AuthPlain("user", "pass"), AuthLogin("user", "pass"), AuthResponse("dXNlcg==")]
_CASES = [(state, command) for state in State for command in SAMPLES]


@pytest.mark.parametrize(("state", "command"), _CASES, ids=[f"{s.name}-{type(c).__name__}" for s, c in _CASES])
def test_auth_send_table(state: State, command: Command) -> None:
    """Every (state, AUTH command) pair outside SEND raises; every pair inside lands where it says."""
    send_from(ClientConnection(), state, command, SEND)


def test_auth_plain_wire_form() -> None:
    """RFC 4616 §2: one line, base64 of NUL user NUL password (empty authorization identity)."""
    wire = AuthPlain("user", "pass").to_bytes()
    assert wire == b"AUTH PLAIN " + base64.b64encode(b"\0user\0pass") + b"\r\n"


def test_auth_login_wire_form() -> None:
    """AUTH LOGIN alone, then base64 user and base64 password as separate lines."""
    login = AuthLogin("user", "p\u00e4ss")
    assert login.to_bytes() == b"AUTH LOGIN\r\n"
    user, password = login.responses()
    assert user.to_bytes() == base64.b64encode(b"user") + b"\r\n"
    assert password.to_bytes() == base64.b64encode("p\u00e4ss".encode()) + b"\r\n"


@pytest.mark.parametrize(
    ("script", "final_state", "authenticated"),
    [
        ([b"235 2.7.0 ok\r\n"], State.READY, True),
        ([b"535 5.7.8 bad credentials\r\n"], State.READY, False),
        ([b"504 5.5.4 mechanism not supported\r\n"], State.READY, False),
        ([b"334 \r\n"], State.AUTH_CONTINUE, False),
    ],
    ids=["235", "535", "504", "334"],
)
def test_auth_plain_replies(script: list[bytes], final_state: State, authenticated: bool) -> None:
    """235 → authenticated READY; 5xx → READY, not authenticated; 334 → a response is expected."""
    server = ScriptedServer().ready("AUTH PLAIN LOGIN")
    server.send(AuthPlain("user", "pass"))
    for data in script:
        server.reply(data)
    assert server.conn.state is final_state
    assert server.conn.authenticated is authenticated


def test_auth_login_exchange() -> None:
    """334 → user → 334 → password → 235, one line at a time."""
    server = ScriptedServer().ready("AUTH LOGIN")
    login = AuthLogin("user", "pass")
    server.send(login)
    assert server.replies(b"334 VXNlcm5hbWU6\r\n") == [("AuthLogin", 334)]
    assert server.conn.state is State.AUTH_CONTINUE
    user, password = login.responses()
    server.send(user)
    assert server.replies(b"334 UGFzc3dvcmQ6\r\n") == [("AuthResponse", 334)]
    server.send(password)
    assert server.replies(b"235 2.7.0 ok\r\n") == [("AuthResponse", 235)]
    assert server.conn.state is State.READY and server.conn.authenticated
    assert bytes(server.wire) == b"AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n"


def test_auth_login_wrong_password() -> None:
    """535 after the password: back to READY, not authenticated."""
    server = ScriptedServer().ready("AUTH LOGIN")
    login = AuthLogin("user", "wrong")
    server.send(login)
    server.reply(b"334 VXNlcm5hbWU6\r\n")
    server.send(login.responses()[0])
    server.reply(b"334 UGFzc3dvcmQ6\r\n")
    server.send(login.responses()[1])
    server.reply(b"535 5.7.8 no\r\n")
    assert server.conn.state is State.READY and not server.conn.authenticated


def test_auth_is_never_pipelined() -> None:
    """AUTH never joins a group, and never goes out while a reply is pending."""
    server = ScriptedServer().ready("PIPELINING", "AUTH PLAIN")
    with pytest.raises(LocalProtocolError):
        server.send_pipelined([Rset(), AuthPlain("user", "pass")])
    server.send_pipelined([Rset()])
    with pytest.raises(LocalProtocolError):
        server.send(AuthPlain("user", "pass"))
    assert bytes(server.wire) == b"RSET\r\n"


def test_no_second_auth_after_success() -> None:
    """RFC 4954 §4: after a 235 another AUTH is refused locally; MAIL may follow."""
    server = ScriptedServer().ready("AUTH PLAIN")
    server.send(AuthPlain("user", "pass"))
    server.reply(b"235 ok\r\n")
    with pytest.raises(LocalProtocolError):
        server.send(AuthPlain("user", "pass"))
    server.send(MailFrom("a@x"))


@pytest.mark.parametrize("command", [AuthPlain, AuthLogin])
def test_repr_redacts_credentials(command: type[AuthPlain] | type[AuthLogin]) -> None:
    """Credentials never appear in repr/str (logs, tracebacks), nor in the responses' repr."""
    value = command("alice-secret-user", "hunter2-secret")
    texts = [repr(value), str(value)]
    if isinstance(value, AuthLogin):
        texts += [repr(r) for r in value.responses()]
    else:
        texts.append(repr(value.to_bytes()))  # the wire form carries them, base64 only
        texts = texts[:2]
    for text in texts:
        assert "alice-secret-user" not in text and "hunter2-secret" not in text
        assert base64.b64encode(b"hunter2-secret").decode() not in text


@pytest.mark.parametrize("bad", ["a\r\nMAIL FROM:<x>", "a\0b"])
def test_credentials_with_controls_are_refused(bad: str) -> None:
    """CR/LF or NUL in a credential raises, and the message does not echo it."""
    for command in (AuthPlain, AuthLogin):
        with pytest.raises(LocalProtocolError) as info:
            command("user", bad)
        assert bad not in str(info.value)
