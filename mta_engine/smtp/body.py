"""Message data preparation for the SMTP DATA phase: line endings and dot-stuffing.

Contract: pure byte transforms, built from ``bytes.replace``/``startswith`` (C-level), never a
per-line Python loop, because every message passes through here. ``data_payload`` is the one
place the wire form of DATA content is produced; its output contains exactly one
``CRLF.CRLF``, at the very end, and no bare CR or LF (RFC 5321 §2.3.8, §4.1.1.4, §4.5.2;
SMTP smuggling, CVE-2023-51764/51765/51766; STANDARDS D01-D04). These functions never fail on
any input and never reject a message: policy (8-bit, line length) is the caller's decision.
"""

from __future__ import annotations

__all__ = ["CRLF", "DATA_END", "data_payload", "dot_stuff", "has_8bit", "normalize_crlf", "unstuff"]

CRLF = b"\r\n"  # RFC 5321 §2.3.8: the only line ending allowed on the wire
DATA_END = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4: end-of-data indicator
_LAST_LINE = b".\r\n"  # the terminator's own line (after the body's final CRLF)


def normalize_crlf(data: bytes) -> bytes:
    """Return ``data`` with every bare CR and bare LF turned into CRLF; CRLF stays CRLF."""
    if b"\r" not in data:
        return data.replace(b"\n", CRLF)
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
