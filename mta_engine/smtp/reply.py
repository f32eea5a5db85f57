"""SMTP reply values and the incremental reply parser.

Contract: turns the bytes a server sends into ``Reply`` values, one complete (possibly
multi-line) reply at a time, whatever the chunking. It is pure: no I/O, no clock, no logging.
It never truncates reply text below its safety caps and never guesses a code: a reply that
breaks RFC 5321 §4.2 (non-digit code, first digit outside 2-5, codes that differ between the
lines of one reply, a line or reply over the cap) raises ``RemoteProtocolError`` and the
parser stays failed. Trust level: parses untrusted network input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mta_engine.errors import RemoteProtocolError

__all__ = ["MAX_LINE_OCTETS", "MAX_REPLY_OCTETS", "Reply", "ReplyParser"]

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF. Real servers exceed it,
# so we tolerate longer lines up to a safety cap and never truncate (STANDARDS R07).
MAX_LINE_OCTETS = 8 * 1024
# Safety cap on one complete multi-line reply (an EHLO reply is the biggest legitimate one).
MAX_REPLY_OCTETS = 64 * 1024

# RFC 3463 §2: class "." subject "." detail; class is 2, 4 or 5; subject and detail are 1-3 digits.
# RFC 3463 §2 / RFC 3464 allow a leading "#" in some relays' output ("#5.1.0").
_ENHANCED_RE = re.compile(r"#?([245]\.\d{1,3}\.\d{1,3})(?=[\s]|$)")


def _parse_enhanced(text: str) -> str | None:
    """Return the RFC 3463 ``class.subject.detail`` at the start of ``text``, if any."""
    match = _ENHANCED_RE.match(text)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete server reply (RFC 5321 §4.2): a three-digit code and its text lines.

    ``lines`` holds the text after the code and separator of each line, verbatim (the enhanced
    status code, when present, stays in the text). ``enhanced`` is parsed from the first line
    unless given explicitly.
    """

    code: int
    lines: tuple[str, ...] = ("",)
    enhanced: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.enhanced is None and self.lines:
            parsed = _parse_enhanced(self.lines[0])
            if parsed is not None:
                object.__setattr__(self, "enhanced", parsed)

    @property
    def text(self) -> str:
        """All text lines joined with ``\\n``."""
        return "\n".join(self.lines)

    @property
    def is_success(self) -> bool:
        """2yz: the command was accepted (RFC 5321 §4.2.1)."""
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        """3yz: send more (354 after DATA) (RFC 5321 §4.2.1)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """4yz: transient negative completion, retry later (RFC 5321 §4.2.1)."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5yz: permanent negative completion (RFC 5321 §4.2.1)."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        last = len(self.lines) - 1
        out = []
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{line}" if line or i != last else f"{self.code}")
        return "\n".join(out) if out else str(self.code)


# Byte values of the ASCII digits, for a cheap code check without a per-byte Python loop.
_DIGITS = frozenset(b"0123456789")
_FIRST_DIGITS = frozenset(b"2345")  # RFC 5321 §4.2.1: reply classes 2yz-5yz only
_HYPHEN = 0x2D  # "-": more lines follow (RFC 5321 §4.2.1)
# One-line replies already parsed, by their line (CRLF removed): a server answers every RCPT of a
# transaction, and every transaction, with the same few lines. Replies are immutable, so one
# object serves every session of the process; the table is emptied when full.
_ONE_LINE: dict[bytes, Reply] = {}
_ONE_LINE_ENTRIES = 1024
_ONE_LINE_MAX_OCTETS = 256
_SPACE = 0x20


class ReplyParser:
    """Incremental parser for server replies; pure, fed with arbitrary chunks.

    Lines end with CRLF; a bare LF is tolerated (a trailing CR before it is dropped).
    ``feed(data)`` returns every reply completed by ``data``; ``receive(data)`` plus
    ``next_reply()`` is the lazy form ``ClientConnection`` uses.
    """

    __slots__ = ("_buf", "_pos", "_code", "_lines", "_reply_octets", "_error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed line in _buf
        self._code: bytes | None = None  # code of the reply being assembled
        self._lines: list[str] = []
        self._reply_octets = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a returned reply (STARTTLS injection check)."""
        return len(self._buf) - self._pos + self._reply_octets

    def receive(self, data: bytes) -> None:
        """Append received bytes; parse nothing yet."""
        self._buf += data

    def feed(self, data: bytes) -> list[Reply]:
        """Append ``data`` and return every reply it completes (possibly none)."""
        self._buf += data
        out: list[Reply] = []
        while (reply := self.next_reply()) is not None:
            out.append(reply)
        return out

    def clear(self) -> None:
        """Discard everything buffered (after STARTTLS, RFC 3207 §4.2 / STANDARDS L03)."""
        self._buf.clear()
        self._pos = 0
        self._code = None
        self._lines = []
        self._reply_octets = 0

    def _fail(self, message: str) -> RemoteProtocolError:
        self._error = RemoteProtocolError(message)
        return self._error

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        while True:
            nl = buf.find(b"\n", self._pos)
            if nl < 0:
                if len(buf) - self._pos > MAX_LINE_OCTETS:
                    raise self._fail(f"reply line longer than {MAX_LINE_OCTETS} octets")
                if self._pos:
                    del buf[: self._pos]
                    self._pos = 0
                return None
            end = nl - 1 if nl > self._pos and buf[nl - 1] == 0x0D else nl
            line = bytes(buf[self._pos : end])
            octets = nl + 1 - self._pos
            self._pos = nl + 1
            if octets > MAX_LINE_OCTETS:
                raise self._fail(f"reply line longer than {MAX_LINE_OCTETS} octets")
            self._reply_octets += octets
            if self._reply_octets > MAX_REPLY_OCTETS:
                raise self._fail(f"reply longer than {MAX_REPLY_OCTETS} octets")
            if self._code is None:
                # A one-line reply seen before (every "250 2.1.5 Ok" of a transaction): the same
                # immutable Reply, without parsing the line again.
                reply = _ONE_LINE.get(line)
                if reply is not None:
                    self._reply_octets = 0
                    return reply
            final = self._take_line(line)
            if final:
                code = self._code
                assert code is not None
                reply = Reply(int(code), tuple(self._lines))
                if len(self._lines) == 1 and self._reply_octets <= _ONE_LINE_MAX_OCTETS:
                    if len(_ONE_LINE) >= _ONE_LINE_ENTRIES:
                        _ONE_LINE.clear()
                    _ONE_LINE[line] = reply
                self._code = None
                self._lines = []
                self._reply_octets = 0
                return reply

    def _take_line(self, line: bytes) -> bool:
        """Record one line of a reply; return True if it was the last line (RFC 5321 §4.2)."""
        code = line[:3]
        if len(code) != 3 or code[0] not in _FIRST_DIGITS or not _DIGITS.issuperset(code):
            raise self._fail(f"invalid reply code in line {line[:40]!r}")
        if self._code is None:
            self._code = code
        elif code != self._code:
            raise self._fail(f"reply code changed from {self._code!r} to {code!r} within a reply")
        sep = line[3] if len(line) > 3 else _SPACE
        # Text after the separator; a non-standard separator is kept as text (tolerant reader).
        text = line[4:] if sep in (_SPACE, _HYPHEN) else line[3:]
        self._lines.append(text.decode("utf-8", "replace"))
        return sep != _HYPHEN
