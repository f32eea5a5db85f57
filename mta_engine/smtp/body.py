"""Message data preparation for the SMTP DATA phase: line endings and dot-stuffing.

Contract: pure byte transforms, built from ``bytes.replace``/``startswith`` (C-level), never a
per-line Python loop, because every message passes through here. ``data_payload`` is the one
place the wire form of DATA content is produced; its output contains exactly one
``CRLF.CRLF``, at the very end, and no bare CR or LF (RFC 5321 §2.3.8, §4.1.1.4, §4.5.2;
SMTP smuggling, CVE-2023-51764/51765/51766; STANDARDS D01-D04). These functions never fail on
any input and never reject a message: policy (8-bit, line length) is the caller's decision.

``PreparedMessage`` is the preferred form a session sends: the normalized message with its
RFC 1870 size, its 8-bit and SMTPUTF8 needs, its DATA payload and BDAT chunks (RFC 3030), each
computed once, and a 7-bit form for servers without 8BITMIME (RFC 6152 §3), made with the
stdlib ``email`` package. Pure: no I/O.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
from email.generator import BytesGenerator
from email.message import Message
from functools import cached_property
from io import BytesIO

from mta_engine.smtp.address import envelope_needs_smtputf8
from mta_engine.smtp.events import Payload

__all__ = [
    "CRLF",
    "DATA_END",
    "DEFAULT_CHUNK_OCTETS",
    "PreparedMessage",
    "data_payload",
    "dot_stuff",
    "envelope_needs_smtputf8",
    "has_8bit",
    "normalize_crlf",
    "unstuff",
]

CRLF = b"\r\n"  # RFC 5321 §2.3.8: the only line ending allowed on the wire
DATA_END = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4: end-of-data indicator
_LAST_LINE = b".\r\n"  # the terminator's own line (after the body's final CRLF)


def normalize_crlf(data: bytes) -> bytes:
    """Return ``data`` with every bare CR and bare LF turned into CRLF; CRLF stays CRLF.

    Dropping every CR and putting one back before every LF is the answer when ``data`` has no CR,
    and rebuilds ``data`` exactly when it has no bare CR or LF (every rendered message): two
    one-octet replaces, about a fifth of the cost of the three-pass rewrite below.
    """
    rebuilt = data.replace(b"\r", b"").replace(b"\n", CRLF)
    if b"\r" not in data or rebuilt == data:
        return rebuilt
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def dot_stuff(data: bytes) -> bytes:
    """Double the leading "." of every line, the first line included (RFC 5321 §4.5.2).

    ``data`` must already be CRLF-normalized (see ``normalize_crlf``): only CRLF starts a line.
    """
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def data_payload(message: bytes) -> bytes:
    """Return the exact bytes to send after a 354: normalized, CRLF-terminated, stuffed, ".\\r\\n".

    An empty message becomes one empty line, so the result always ends with ``CRLF.CRLF``.
    """
    body = normalize_crlf(message)
    if not body.endswith(CRLF):
        body += CRLF  # RFC 5321 §4.1.1.4: the body must end in CRLF before the terminator
    return dot_stuff(body) + _LAST_LINE


def unstuff(payload: bytes) -> bytes:
    """Inverse of ``dot_stuff``; also strips the terminator if ``payload`` is a full DATA payload.

    A stuffed body can never contain ``CRLF.CRLF`` or start with ``.CRLF``, so the terminator is
    recognised without ambiguity.
    """
    if payload == _LAST_LINE:
        return b""
    if payload.endswith(DATA_END):
        payload = payload[: -len(_LAST_LINE)]
    data = payload.replace(b"\r\n..", b"\r\n.")
    return data[1:] if data.startswith(b"..") else data


def has_8bit(data: bytes) -> bool:
    """True if any octet is >= 0x80 (needs 8BITMIME or re-encoding, RFC 6152 §3)."""
    return not data.isascii()


# RFC 3030 §2 sets no chunk size; 1 MiB keeps each BDAT write well within one block timeout.
DEFAULT_CHUNK_OCTETS = 1024 * 1024
_HEADER_END = b"\r\n\r\n"
# RFC 2045 §6.1 identity encodings; "7bit" too, since 8-bit octets under it are mislabelled.
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# compat32 keeps header values as received; no line-length limit means no re-folding.
_POLICY = email.policy.compat32.clone(max_line_length=0, linesep="\r\n")


class PreparedMessage:
    """One message ready for SMTP: CRLF-normalized content plus everything derived from it once.

    ``data`` is the normalized message ending in CRLF, not dot-stuffed. ``smtputf8`` is set by
    the caller when the envelope or the headers are UTF-8 (see ``envelope_needs_smtputf8``).
    """

    __slots__ = ("data", "needs_smtputf8", "__dict__")

    def __init__(self, data: bytes, *, smtputf8: bool = False) -> None:
        body = normalize_crlf(data)
        if not body.endswith(CRLF):
            body += CRLF  # RFC 5321 §4.1.1.4: the content ends in CRLF
        self.data = body
        self.needs_smtputf8 = smtputf8

    def __repr__(self) -> str:
        flags = "".join((" 8bit" if self.is_8bit else "", " smtputf8" if self.needs_smtputf8 else ""))
        return f"<PreparedMessage {self.size} octets{flags}>"

    @cached_property
    def size(self) -> int:
        """Octets including CRLFs, excluding dot-stuffing and the terminator (RFC 1870 §5, §6)."""
        return len(self.data)

    @cached_property
    def is_8bit(self) -> bool:
        """True if any octet is >= 0x80: needs BODY=8BITMIME or a 7-bit form (RFC 6152 §3)."""
        return has_8bit(self.data)

    @cached_property
    def dot_stuffed(self) -> bytes:
        """The DATA payload: stuffed and terminated, the ``data_payload`` form (RFC 5321 §4.5.2)."""
        return dot_stuff(self.data) + _LAST_LINE

    @cached_property
    def payload(self) -> Payload:
        """``dot_stuffed`` as a ``Payload`` event, built once (a shared body goes out in many
        transactions) and not re-checked: ``data`` has no bare CR or LF and ends in CRLF, so
        ``dot_stuffed`` is in ``data_payload`` form by construction, and the check would rescan
        every octet (about 6% of a W1 worker's CPU)."""
        return Payload._trusted(self.dot_stuffed)

    def chunks(self, max_octets: int = DEFAULT_CHUNK_OCTETS) -> list[bytes]:
        """BDAT chunks (RFC 3030 §2): raw content, no stuffing, no terminator; never empty."""
        if max_octets <= 0:
            raise ValueError("max_octets must be positive")
        data = self.data
        return [data[i : i + max_octets] for i in range(0, len(data), max_octets)] or [b""]

    @cached_property
    def _seven_bit(self) -> PreparedMessage | None:
        if not self.is_8bit:
            return self
        end = self.data.find(_HEADER_END)
        if end < 0 or has_8bit(self.data[:end]):
            return None  # 8-bit headers cannot be downgraded (RFC 6532); caller bounces 5.6.7
        message = email.parser.BytesParser(policy=_POLICY).parsebytes(self.data)
        changed = False
        for part in message.walk():
            if not part.is_multipart():
                changed = _reencode_part(part) or changed
        if changed and "MIME-Version" not in message:
            message["MIME-Version"] = "1.0"  # RFC 2045 §4: a Content-Transfer-Encoding needs it
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
        converted = PreparedMessage(out.getvalue(), smtputf8=self.needs_smtputf8)
        # 8-bit left in MIME part headers, a preamble or an epilogue: not convertible.
        return None if converted.is_8bit else converted

    def seven_bit(self) -> PreparedMessage | None:
        """A 7-bit form: 8-bit MIME leaves re-encoded as quoted-printable (text) or base64.

        Headers stay as they are. Returns ``self`` when already 7-bit and None when conversion is
        impossible (8-bit headers): the caller then fails the message with 5.6.3 or 5.6.7.
        """
        return self._seven_bit


def _reencode_part(part: Message) -> bool:
    """Re-encode one leaf part whose identity encoding carries 8-bit octets (RFC 2045 §6)."""
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte and cte not in _IDENTITY_ENCODINGS:
        return False  # quoted-printable/base64 (or unknown: caught by the final 8-bit check)
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or raw.isascii():
        return False
    if part.get_content_maintype() == "text":
        lines = raw.replace(b"\r\n", b"\n")
        encoded = binascii.b2a_qp(lines, istext=True).decode("ascii")
        name = "quoted-printable"
    else:
        flat = binascii.b2a_base64(raw, newline=False).decode("ascii")
        encoded = "\n".join(flat[i : i + 76] for i in range(0, len(flat), 76))  # RFC 2045 §6.8
        name = "base64"
    part.set_payload(encoded)
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", name)
    else:
        part["Content-Transfer-Encoding"] = name
    return True
