"""RFC 3463 enhanced status codes and RFC 3461 xtext.

Contract: small pure helpers that turn SMTP replies into the ``class.subject.detail`` status a
DSN carries (RFC 3463 §2), name a status's subject for triage (RFC 3463 §3.1-§3.9, STANDARDS
B05), and encode or decode the xtext used by the DSN parameters ENVID and ORCPT (RFC 3461 §4,
STANDARDS X09). No I/O, no clock, no logging. Trust level: ``parse_enhanced`` and
``xtext_decode`` read untrusted peer text; the first never raises, the second raises
``ValueError`` on malformed xtext so the caller can refuse the parameter (501).
"""

from __future__ import annotations

import re

__all__ = [
    "default_status",
    "is_status",
    "parse_enhanced",
    "status_for",
    "subject_name",
    "xtext_decode",
    "xtext_encode",
]

# RFC 3463 §2: status-code = class "." subject "." detail; class = "2" / "4" / "5";
# subject = 1*3digit; detail = 1*3digit. Some relays prefix "#" ("#5.1.0"). The code may follow
# the three-digit reply code and its separator ("550-5.1.1 ..." or "550 5.1.1 ...").
_ENHANCED_RE = re.compile(r"\s*(?:[2-5]\d\d[ -])?#?([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)", re.ASCII)
_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}", re.ASCII)

# RFC 3463 §3.1-§3.9: the subject sub-code names the part of the system that reported it.
_SUBJECTS = {
    0: "other",  # §3.1 Other or Undefined Status
    1: "addressing",  # §3.2 Addressing Status
    2: "mailbox",  # §3.3 Mailbox Status
    3: "mail system",  # §3.4 Mail System Status
    4: "network/routing",  # §3.5 Network and Routing Status
    5: "protocol",  # §3.6 Mail Delivery Protocol Status
    6: "content/media",  # §3.7 Message Content or Media Status
    7: "security/policy",  # §3.8 Security or Policy Status
}

# RFC 3461 §4: xchar is any ASCII character from "!" (33) to "~" (126) except "+" and "=";
# everything else is written as "+" followed by two upper-case hex digits.
_XCHAR_MIN, _XCHAR_MAX = 0x21, 0x7E
_XTEXT_SPECIAL = frozenset(b"+=")
_HEX_RE = re.compile(r"[0-9A-Fa-f]{2}")


def parse_enhanced(text: str) -> tuple[int, int, int] | None:
    """Return the RFC 3463 status at the start of ``text`` (after any reply code), or None.

    ``text`` may be a reply line ("550 5.1.1 user unknown"), its text ("5.1.1 user unknown") or
    a bare status ("5.1.1"). The status must be followed by whitespace or the end of the text.
    """
    match = _ENHANCED_RE.match(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def _reply_class(code: int) -> int:
    if not 200 <= code <= 599 or code // 100 == 3:
        # RFC 5321 §4.2.1: only 2yz, 4yz and 5yz replies are final outcomes with an RFC 3463 class.
        raise ValueError(f"reply code {code} has no RFC 3463 status class")
    return code // 100


def default_status(code: int) -> str:
    """The RFC 3463 status for a reply that carried none: 2xx→2.0.0, 4xx→4.0.0, 5xx→5.0.0.

    Raises ``ValueError`` for codes that are not a final 2xx/4xx/5xx reply.
    """
    return f"{_reply_class(code)}.0.0"


def status_for(code: int, enhanced: str | tuple[int, int, int] | None) -> str:
    """The status to report for a reply: its enhanced code if its class agrees, else derived.

    RFC 3463 §2: the class of the enhanced code must agree with the reply code's first digit.
    A server that sends "550 4.2.2" has contradicted itself; the reply code decides, so the
    result is "5.0.0" (and likewise for a missing or unparsable enhanced code).
    """
    reply_class = _reply_class(code)
    parsed = parse_enhanced(enhanced) if isinstance(enhanced, str) else enhanced
    if parsed is None or parsed[0] != reply_class:
        return default_status(code)
    return f"{parsed[0]}.{parsed[1]}.{parsed[2]}"


def is_status(text: str) -> bool:
    """True if ``text`` is exactly an RFC 3463 ``class.subject.detail`` status ("4.7.1")."""
    return _STATUS_RE.fullmatch(text) is not None


def subject_name(status: str) -> str:
    """The RFC 3463 §3 subject of ``status`` ("5.1.1" → "addressing"); unknown ones are "other".

    Raises ``ValueError`` if ``status`` is not ``class.subject.detail``.
    """
    if not is_status(status):
        raise ValueError(f"not an RFC 3463 status code: {status!r}")
    return _SUBJECTS.get(int(status.split(".")[1]), "other")


def xtext_encode(text: str) -> str:
    """Encode ``text`` as RFC 3461 §4 xtext.

    Printable ASCII other than "+" and "=" stands for itself; every other octet of the text's
    UTF-8 form becomes "+XX" (upper-case hex). Plain xtext is ASCII-only; writing non-ASCII as
    its UTF-8 octets keeps the encoding total and reversible.
    """
    out: list[str] = []
    for octet in text.encode("utf-8"):
        if _XCHAR_MIN <= octet <= _XCHAR_MAX and octet not in _XTEXT_SPECIAL:
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 §4 xtext; the inverse of ``xtext_encode``.

    Lower-case hex digits are accepted (tolerant reader). Raises ``ValueError`` for a "+" not
    followed by two hex digits, a character outside "!".."~", a bare "=", or octets that are
    not UTF-8.
    """
    octets = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "+":
            hex_digits = text[i + 1 : i + 3]
            if not _HEX_RE.fullmatch(hex_digits):
                raise ValueError(f"bad xtext hexchar at offset {i}: {text[i : i + 3]!r}")
            octets.append(int(hex_digits, 16))
            i += 3
            continue
        if not _XCHAR_MIN <= ord(char) <= _XCHAR_MAX or char == "=":
            raise ValueError(f"character {char!r} at offset {i} is not allowed in xtext")
        octets.append(ord(char))
        i += 1
    return octets.decode("utf-8")
