"""SMTP client commands and the events ``ClientConnection`` produces, as frozen values.

Contract: each command validates itself on construction and knows its exact wire bytes
(``to_bytes()``). A command that could not be sent safely (CR/LF or other control characters
in an argument, a command line over 512 octets, a DATA payload that is not in the
``data_payload`` form) raises ``LocalProtocolError``: that is our bug, never the peer's. The one
exception is ``Payload._trusted``, for ``PreparedMessage``'s payload, valid by construction.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Final

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp.reply import Reply

__all__ = [
    "MAX_COMMAND_LINE_OCTETS",
    "NEED_DATA",
    "Bdat",
    "BdatLast",
    "Closed",
    "Command",
    "Data",
    "Ehlo",
    "Event",
    "Helo",
    "Lhlo",
    "AuthLogin",
    "AuthPlain",
    "AuthResponse",
    "MailFrom",
    "NeedData",
    "Noop",
    "Payload",
    "Quit",
    "RcptTo",
    "Replied",
    "Rset",
    "StartTls",
]

# RFC 5321 §4.5.3.1.4: a command line, command word and CRLF included, is at most 512 octets.
MAX_COMMAND_LINE_OCTETS = 512

# C0 controls and DEL can never appear in a command argument (RFC 5321 §4.1.2 grammar); CR and
# LF would let an argument inject a second command.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _check_arg(what: str, value: str) -> None:
    if _CONTROL_RE.search(value):
        raise LocalProtocolError(f"{what} contains a control character (CR/LF injection?): {value!r}")


def _line(text: str) -> bytes:
    wire = text.encode("utf-8") + b"\r\n"
    if len(wire) > MAX_COMMAND_LINE_OCTETS:
        raise LocalProtocolError(
            f"command line is {len(wire)} octets, over the {MAX_COMMAND_LINE_OCTETS} limit "
            "(RFC 5321 §4.5.3.1.4)"
        )
    return wire


def _check_params(params: tuple[str, ...]) -> None:
    for param in params:
        if not param or " " in param:
            raise LocalProtocolError(f"invalid ESMTP parameter {param!r}")
        _check_arg("ESMTP parameter", param)


@dataclass(frozen=True, slots=True)
class Ehlo:
    """``EHLO <name>`` (RFC 5321 §4.1.1.1)."""

    name: str

    def __post_init__(self) -> None:
        _check_arg("EHLO name", self.name)
        if not self.name or " " in self.name:
            raise LocalProtocolError(f"invalid EHLO name {self.name!r}")

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return _line(f"EHLO {self.name}")


@dataclass(frozen=True, slots=True)
class Helo:
    """``HELO <name>`` (RFC 5321 §4.1.1.1), the fallback when EHLO gets 500/502."""

    name: str

    def __post_init__(self) -> None:
        _check_arg("HELO name", self.name)
        if not self.name or " " in self.name:
            raise LocalProtocolError(f"invalid HELO name {self.name!r}")

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return _line(f"HELO {self.name}")


@dataclass(frozen=True, slots=True)
class Lhlo:
    """``LHLO <name>`` (RFC 2033 §4.1), LMTP's EHLO."""

    name: str

    def __post_init__(self) -> None:
        _check_arg("LHLO name", self.name)
        if not self.name or " " in self.name:
            raise LocalProtocolError(f"invalid LHLO name {self.name!r}")

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return _line(f"LHLO {self.name}")


@dataclass(frozen=True, slots=True)
class MailFrom:
    """``MAIL FROM:<address> [params]`` (RFC 5321 §4.1.1.2); ``""`` is the null reverse-path."""

    address: str
    params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_arg("MAIL FROM address", self.address)
        _check_params(self.params)
        self.to_bytes()  # length check up front, so an invalid value never exists

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        tail = "".join(" " + p for p in self.params)
        return _line(f"MAIL FROM:<{self.address}>{tail}")


@dataclass(frozen=True, slots=True)
class RcptTo:
    """``RCPT TO:<address> [params]`` (RFC 5321 §4.1.1.3)."""

    address: str
    params: tuple[str, ...] = ()
    _wire: bytes = field(init=False, repr=False, compare=False)  # made (and checked) once

    def __post_init__(self) -> None:
        if not self.address:
            raise LocalProtocolError("RCPT TO needs a non-empty forward-path")
        _check_arg("RCPT TO address", self.address)
        if self.params:
            _check_params(self.params)
            tail = "".join(" " + p for p in self.params)
        else:
            tail = ""
        object.__setattr__(self, "_wire", _line(f"RCPT TO:<{self.address}>{tail}"))

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return self._wire


@dataclass(frozen=True, slots=True)
class Data:
    """``DATA`` (RFC 5321 §4.1.1.4); a 354 reply opens the payload."""

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return b"DATA\r\n"


_DATA_END = b"\r\n.\r\n"
_ABORT = b".\r\n"  # a lone terminator: ends the data phase with no content (RFC 2920 §3.1)


@dataclass(frozen=True, slots=True)
class Payload:
    """Message content after a 354, already in ``body.data_payload`` form (or a lone ".\\r\\n").

    Validated with C-level scans: exactly one CRLF.CRLF, at the end, and no bare CR or LF
    (RFC 5321 §4.1.1.4; SMTP smuggling, STANDARDS D01-D02). ``_trusted`` skips the scans for
    ``PreparedMessage.payload`` only, whose bytes are in that form by construction.
    """

    data: bytes

    @classmethod
    def _trusted(cls, data: bytes) -> Payload:
        """A payload built without the check: ``data`` must be ``dot_stuff`` of CRLF-normalized
        content ending in CRLF, plus ".\\r\\n". Anything else goes through ``Payload(data)``."""
        payload = object.__new__(cls)
        object.__setattr__(payload, "data", data)
        return payload

    def __post_init__(self) -> None:
        data = self.data
        if data == _ABORT:
            return
        if (
            data.find(_DATA_END) != len(data) - len(_DATA_END)
            or data.startswith(_ABORT)
            or not data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
        ):
            raise LocalProtocolError(
                "payload is not in data_payload() form (bare CR/LF or a terminator before the end)"
            )

    def __repr__(self) -> str:
        return f"Payload(<{len(self.data)} octets>)"

    def to_bytes(self) -> bytes:
        """Wire form: the payload itself."""
        return self.data


@dataclass(frozen=True, slots=True)
class Bdat:
    """``BDAT <n>`` plus exactly n octets of content, more chunks to follow (RFC 3030 §2).

    The chunk is raw message content: no dot-stuffing and no terminator (RFC 3030 §2, §3).
    Non-last chunks may be pipelined (RFC 3030 §4.2).
    """

    chunk: bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self.chunk)} octets>)"

    def to_bytes(self) -> bytes:
        """Wire form: the command line followed by the chunk."""
        return b"BDAT %d\r\n" % len(self.chunk) + self.chunk


@dataclass(frozen=True, slots=True)
class BdatLast:
    """``BDAT <n> LAST`` plus n octets: the final chunk; its reply is the final reply (RFC 3030 §2)."""

    chunk: bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self.chunk)} octets>)"

    def to_bytes(self) -> bytes:
        """Wire form: the command line followed by the chunk (``BDAT 0 LAST`` is legal)."""
        return b"BDAT %d LAST\r\n" % len(self.chunk) + self.chunk


@dataclass(frozen=True, slots=True)
class Rset:
    """``RSET`` (RFC 5321 §4.1.1.5): abort the current transaction."""

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return b"RSET\r\n"


@dataclass(frozen=True, slots=True)
class Noop:
    """``NOOP`` (RFC 5321 §4.1.1.9)."""

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return b"NOOP\r\n"


@dataclass(frozen=True, slots=True)
class Quit:
    """``QUIT`` (RFC 5321 §4.1.1.10); the server answers 221 and closes."""

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return b"QUIT\r\n"


@dataclass(frozen=True, slots=True)
class StartTls:
    """``STARTTLS`` (RFC 3207 §4); a 220 reply means: start the TLS handshake now."""

    def to_bytes(self) -> bytes:
        """Wire form of this command."""
        return b"STARTTLS\r\n"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _check_credential(what: str, value: str) -> None:
    # Never echo the value itself: it may be a secret (STANDARDS X10).
    if "\0" in value or _CONTROL_RE.search(value):
        raise LocalProtocolError(f"AUTH {what} contains a NUL or control character")


@dataclass(frozen=True, slots=True)
class AuthPlain:
    """``AUTH PLAIN <base64(\\0user\\0pass)>``: one line, initial response (RFC 4616 §2, RFC 4954 §4).

    The repr never shows the credentials; the wire form is built only by ``to_bytes``.
    """

    username: str
    password: str

    def __post_init__(self) -> None:
        _check_credential("username", self.username)
        _check_credential("password", self.password)
        if len(_b64(f"\0{self.username}\0{self.password}")) + len("AUTH PLAIN \r\n") > MAX_COMMAND_LINE_OCTETS:
            raise LocalProtocolError("AUTH PLAIN credentials are too long for one command line")

    def __repr__(self) -> str:
        return "AuthPlain(username=<redacted>, password=<redacted>)"

    def to_bytes(self) -> bytes:
        """Wire form: the whole exchange in one line (RFC 4616 message, base64)."""
        return _line(f"AUTH PLAIN {_b64(chr(0) + self.username + chr(0) + self.password)}")


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """One base64 line answering a 334 challenge (RFC 4954 §4); the repr is redacted."""

    data: str

    def __post_init__(self) -> None:
        _check_credential("response", self.data)

    def __repr__(self) -> str:
        return "AuthResponse(<redacted>)"

    def to_bytes(self) -> bytes:
        """Wire form: the base64 text and CRLF."""
        return _line(self.data)


@dataclass(frozen=True, slots=True)
class AuthLogin:
    """``AUTH LOGIN`` (draft-murchison-sasl-login, used with RFC 4954): 334, base64 user, 334,
    base64 password, 235. ``to_bytes`` is only the first line; ``responses()`` gives the two
    ``AuthResponse`` lines in order. The repr never shows the credentials.
    """

    username: str
    password: str

    def __post_init__(self) -> None:
        _check_credential("username", self.username)
        _check_credential("password", self.password)

    def __repr__(self) -> str:
        return "AuthLogin(username=<redacted>, password=<redacted>)"

    def to_bytes(self) -> bytes:
        """Wire form of the command itself (no initial response)."""
        return b"AUTH LOGIN\r\n"

    def responses(self) -> tuple[AuthResponse, AuthResponse]:
        """The answers to the two 334 challenges: base64 username, then base64 password."""
        return AuthResponse(_b64(self.username)), AuthResponse(_b64(self.password))


Command = (
    Ehlo
    | Helo
    | Lhlo
    | MailFrom
    | RcptTo
    | Data
    | Payload
    | Bdat
    | BdatLast
    | Rset
    | Noop
    | Quit
    | StartTls
    | AuthPlain
    | AuthLogin
    | AuthResponse
)


@dataclass(frozen=True, slots=True)
class Replied:
    """The server answered ``command`` (``None`` for the greeting) with ``reply``."""

    command: Command | None
    reply: Reply


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed the connection (end of file)."""


class NeedData:
    """Type of the ``NEED_DATA`` sentinel: no complete reply is buffered yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

Event = Replied | Closed | NeedData
