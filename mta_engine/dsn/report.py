"""RFC 3464 delivery status notifications, built as RFC 6522 multipart/report messages.

Contract: ``build_dsn`` turns a ``DsnRequest`` (a plain value, the Postfix idea) into the
bytes of one DSN for one original message and any number of its recipients: a human-readable
text part, a ``message/delivery-status`` part and the returned original (whole, or its header
section for RET=HDRS) (RFC 6522 §3, RFC 3464 §2, STANDARDS N01-N05). The output uses CRLF
line ends only and no line is longer than 998 octets (RFC 5322 §2.1.1), so it can go straight
to the SMTP data path with ``MAIL FROM:<>``. ``select_recipients`` applies RFC 3461 NOTIFY.

It never does I/O, reads a clock or draws random numbers: ``now_s`` and the Message-ID are
passed in. It never builds a DSN for a null reverse-path (RFC 5321 §4.5.5, §6.1: no bounce
loops); ``should_send`` says so and ``build_dsn`` raises ``LocalProtocolError``. Invalid
field values raise ``ValueError`` when the value objects are made. Trust level: the original
message and the remote reply text are untrusted; they are normalised and sanitised, never
interpreted.
"""

from __future__ import annotations

import binascii
import re
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

from mta_engine.dsn.status import is_status, subject_name
from mta_engine.errors import LocalProtocolError

__all__ = [
    "ACTIONS",
    "DsnRequest",
    "RecipientReport",
    "build_dsn",
    "select_recipients",
    "should_send",
]

# RFC 3464 §2.3.3: the Action field's values.
ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
# RFC 3461 §4.3: what to return with a DSN.
_RET_VALUES = frozenset({"FULL", "HDRS"})
# RFC 5322 §2.1.1: a line MUST be at most 998 octets (excluding CRLF) and SHOULD be at most 78.
MAX_LINE_OCTETS = 998
_FOLD_OCTETS = 78
_TEXT_WIDTH = 76
_CRLF = b"\r\n"
_LINE_END_RE = re.compile(rb"\r\n|\r|\n")
_REPLY_LINE_RE = re.compile(r"(\d{3})(?:[ -]|$)", re.ASCII)
_STATUS_PREFIX_RE = re.compile(r"#?[245]\.\d{1,3}\.\d{1,3}(?=\s|$)", re.ASCII)
# RFC 2046 §5.1.1: bchars; "=_" cannot occur in quoted-printable output (RFC 2045 §6.7).
_BOUNDARY_UNSAFE_RE = re.compile(r"[^0-9A-Za-z'()+_,\-./:?]")

_SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
_SUBJECT_DELAYED = "Delayed Mail (still being retried)"
_SUBJECT_SUCCESS = "Successful Mail Delivery Report"
_SUBJECT_MIXED = "Mail Delivery Status Report"


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What happened to one recipient: the per-recipient fields of RFC 3464 §2.3.

    ``original_recipient`` is the decoded ORCPT value ("rfc822;a@b"); a value without an
    address type is taken as rfc822. ``diagnostic_code`` is the full SMTP reply text, possibly
    multi-line ("550-5.1.1 ...\\n550 5.1.1 ..."). Times are epoch seconds.
    """

    final_recipient: str
    action: str
    status: str
    original_recipient: str | None = None
    remote_mta: str | None = None
    diagnostic_code: str | None = None
    last_attempt_s: float | None = None
    will_retry_until_s: float | None = None

    def __post_init__(self) -> None:
        if not self.final_recipient.strip():
            raise ValueError("final_recipient is empty")
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {sorted(ACTIONS)} "
                             "(RFC 3464 §2.3.3)")
        if not is_status(self.status):
            raise ValueError(f"status {self.status!r} is not an RFC 3463 class.subject.detail code")


@dataclass(frozen=True, slots=True)
class DsnRequest:
    """Everything one DSN reports: one original message and the recipients it is about.

    ``envelope_sender`` is where the DSN goes; "" (the null reverse-path) means none may be
    built. ``ret`` is RFC 3461 RET ("FULL" or "HDRS", any case). ``from_address`` is a local
    part (qualified with ``reporting_mta``) or a full address. ``message_id_domain`` qualifies
    a Message-ID given without a domain.
    """

    reporting_mta: str
    envelope_sender: str
    original_message: bytes
    recipients: tuple[RecipientReport, ...]
    arrival_s: float
    envid: str | None = None
    ret: str = "HDRS"
    from_address: str = "MAILER-DAEMON"
    message_id_domain: str = "localhost"

    def __post_init__(self) -> None:
        if not self.reporting_mta.strip():
            raise ValueError("reporting_mta is empty (RFC 3464 §2.2.2 requires Reporting-MTA)")
        if not self.recipients:
            raise ValueError("a DSN reports on at least one recipient (RFC 3464 §2)")
        ret = self.ret.upper()
        if ret not in _RET_VALUES:
            raise ValueError(f"ret {self.ret!r} is not FULL or HDRS (RFC 3461 §4.3)")
        object.__setattr__(self, "ret", ret)


def should_send(req: DsnRequest) -> bool:
    """False for a null reverse-path: a DSN is never sent to "<>" (RFC 5321 §4.5.5, §6.1)."""
    return _bare_address(req.envelope_sender) != ""


def select_recipients(notify: str | None, action: str, *, delay_by_default: bool = True) -> bool:
    """Whether RFC 3461 NOTIFY asks for a DSN about a recipient with this ``action``.

    ``notify`` is the RCPT NOTIFY value ("NEVER", or a comma list of SUCCESS, FAILURE, DELAY),
    or None when none was given. NEVER means no DSN at all. A list means exactly those events:
    SUCCESS covers delivered, relayed and expanded (§4.1, §6.2.2.2). Without NOTIFY, failures
    are reported and successes are not; the default "may be FAILURE or FAILURE,DELAY" (§4.1),
    and ``delay_by_default`` is the engine's choice between the two (STANDARDS W06).
    """
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {sorted(ACTIONS)} (RFC 3464 §2.3.3)")
    keywords = {k.strip().upper() for k in (notify or "").split(",") if k.strip()}
    if not keywords:
        if action == "failed":
            return True
        return action == "delayed" and delay_by_default
    if "NEVER" in keywords:  # §4.1: NEVER excludes every other keyword
        return False
    if action == "failed":
        return "FAILURE" in keywords
    if action == "delayed":
        return "DELAY" in keywords
    return "SUCCESS" in keywords


def build_dsn(req: DsnRequest, *, now_s: float, message_id: str) -> bytes:
    """The complete DSN for ``req`` as SMTP-ready bytes (CRLF line ends, lines ≤ 998 octets).

    ``message_id`` is the Message-ID without angle brackets; one without "@" is qualified with
    ``req.message_id_domain``. Raises ``LocalProtocolError`` for a null envelope sender.
    """
    if not should_send(req):
        raise LocalProtocolError("no DSN may be built for a null reverse-path (RFC 5321 §6.1)")
    headers, full = _split_original(req.original_message)
    returned_full = req.ret == "FULL" and _is_8bit_safe(full)
    parts = [
        _text_part(_human_text(req, returned_full=returned_full)),
        _part([b"Content-Description: Delivery report", b"Content-Type: message/delivery-status"],
              _status_body(req)),
        _returned_part(full if returned_full else headers, full=returned_full),
    ]
    boundary = _boundary(message_id, req.reporting_mta, parts)
    eight_bit = any(not _is_ascii(part) for part in parts)
    head = _message_headers(req, now_s=now_s, message_id=message_id, boundary=boundary,
                            eight_bit=eight_bit)
    delimiter = b"--" + boundary.encode("ascii")
    body = [b"This is a MIME-encapsulated message.", b""]
    for part in parts:
        body += [delimiter, part]
    body.append(delimiter + b"--")
    return _CRLF.join(head) + _CRLF + _CRLF + _CRLF.join(body) + _CRLF


# --- the top-level header section -----------------------------------------------------------


def _message_headers(req: DsnRequest, *, now_s: float, message_id: str, boundary: str,
                     eight_bit: bool) -> list[bytes]:
    from_address = req.from_address if "@" in req.from_address else (
        f"{req.from_address}@{req.reporting_mta}")
    fields = [
        ("From", f"Mail Delivery System <{from_address}>"),
        ("To", f"<{_bare_address(req.envelope_sender)}>"),
        ("Subject", _subject(req.recipients)),
        ("Date", _date(now_s)),  # RFC 5322 §3.3, numeric zone
        ("Message-ID", _message_id(message_id, req.message_id_domain)),
        ("MIME-Version", "1.0"),
        # RFC 6522 §3: report-type is required; boundary quoted because "/" is a tspecial.
        ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"'),
        ("Content-Transfer-Encoding", "8bit" if eight_bit else "7bit"),
        ("Auto-Submitted", "auto-replied"),  # RFC 3834 §5
    ]
    lines: list[bytes] = []
    for name, value in fields:
        lines += [line.encode("utf-8") for line in _fold(name, value)]
    return lines


def _subject(recipients: tuple[RecipientReport, ...]) -> str:
    kinds = {"success" if r.action in _SUCCESS_ACTIONS else r.action for r in recipients}
    if kinds == {"failed"}:
        return _SUBJECT_FAILED
    if kinds == {"delayed"}:
        return _SUBJECT_DELAYED
    if kinds == {"success"}:
        return _SUBJECT_SUCCESS
    return _SUBJECT_MIXED


def _message_id(message_id: str, domain: str) -> str:
    bare = message_id.strip().removeprefix("<").removesuffix(">")
    if not bare or any(c.isspace() or c in "<>" for c in bare):
        raise ValueError(f"message_id {message_id!r} is not a valid msg-id (RFC 5322 §3.6.4)")
    return f"<{bare}>" if "@" in bare else f"<{bare}@{domain}>"


def _bare_address(address: str) -> str:
    return address.strip().removeprefix("<").removesuffix(">").strip()


def _date(epoch_s: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch_s, timezone.utc))


# --- part 1: the human-readable notification ------------------------------------------------

_HUMAN_OUTCOME = {
    "failed": "Delivery failed permanently. The message will not be retried.",
    "delivered": "The message was delivered.",
    "relayed": ("The message was relayed to a mail system that does not send delivery "
                "notifications, so no further notice will be sent."),
    "expanded": "The message was delivered to a mailing list or alias, which passed it on.",
}


def _human_text(req: DsnRequest, *, returned_full: bool) -> str:
    paragraphs = [f"This is the mail delivery system at {req.reporting_mta}."]
    counts = {a: sum(r.action == a for r in req.recipients) for a in ACTIONS}
    if counts["failed"]:
        paragraphs.append(f"Your message could not be delivered to {_plural(counts['failed'])}. "
                          "This is a permanent error and the message will not be retried.")
    if counts["delayed"]:
        paragraphs.append(f"Delivery of your message to {_plural(counts['delayed'])} is delayed "
                          "by a temporary problem. The mail system will keep trying; you do not "
                          "need to send the message again. You will be told if it finally fails.")
    if any(counts[a] for a in _SUCCESS_ACTIONS):
        paragraphs.append("Delivery succeeded for the other recipients listed below.")
    paragraphs.append("Details for each recipient:")
    lines: list[str] = []
    for para in paragraphs:
        lines += textwrap.wrap(para, _TEXT_WIDTH, break_long_words=False, break_on_hyphens=False)
        lines.append("")
    for rcpt in req.recipients:
        lines += _human_recipient(rcpt)
        lines.append("")
    returned = ("the original message" if returned_full
                else "the header section of the original message")
    lines += textwrap.wrap(f"Attached are a machine-readable report and {returned}.", _TEXT_WIDTH)
    return "\n".join(lines)


def _human_recipient(rcpt: RecipientReport) -> list[str]:
    if rcpt.action == "delayed":
        until = (f"until {_date(rcpt.will_retry_until_s)}" if rcpt.will_retry_until_s is not None
                 else "for a while")
        outcome = f"Delivery is delayed (a temporary failure). It will be retried {until}."
    else:
        outcome = _HUMAN_OUTCOME[rcpt.action]
    items = [f"<{rcpt.final_recipient}>: {outcome}",
             f"Status: {rcpt.status} ({subject_name(rcpt.status)})"]
    if rcpt.original_recipient:
        items.append(f"Originally addressed to: {_split_typed(rcpt.original_recipient)[1]}")
    if rcpt.remote_mta:
        items.append(f"Remote mail server: {rcpt.remote_mta}")
    if rcpt.diagnostic_code:
        items.append(f"The remote server said: {_join_reply(rcpt.diagnostic_code)}")
    if rcpt.last_attempt_s is not None:
        items.append(f"Last attempt: {_date(rcpt.last_attempt_s)}")
    lines: list[str] = []
    for index, item in enumerate(items):
        indent = "" if index == 0 else "    "
        lines += textwrap.wrap(item, _TEXT_WIDTH, initial_indent=indent,
                               subsequent_indent=indent + "    ", break_long_words=False,
                               break_on_hyphens=False)
    return lines


def _plural(count: int) -> str:
    return "1 recipient" if count == 1 else f"{count} recipients"


def _text_part(text: str) -> bytes:
    body = _hard_wrap(_normalise(text.encode("utf-8", errors="replace")))
    ascii_only = _is_ascii(body)
    charset = "us-ascii" if ascii_only else "utf-8"
    return _part([b"Content-Description: Notification",
                  f"Content-Type: text/plain; charset={charset}".encode("ascii"),
                  b"Content-Transfer-Encoding: " + (b"7bit" if ascii_only else b"8bit")], body)


# --- part 2: message/delivery-status (RFC 3464 §2.1-§2.3) -----------------------------------


def _status_body(req: DsnRequest) -> bytes:
    per_message = [("Reporting-MTA", f"dns; {req.reporting_mta}")]  # §2.2.2
    if req.envid:
        per_message.append(("Original-Envelope-Id", req.envid))  # §2.2.1, decoded ENVID
    per_message.append(("Arrival-Date", _date(req.arrival_s)))  # §2.2.5
    blocks = [per_message] + [_recipient_fields(r) for r in req.recipients]
    lines: list[str] = []
    for index, block in enumerate(blocks):
        if index:
            lines.append("")  # §2.1: a blank line separates the groups of fields
        for name, value in block:
            lines += _fold(name, _ascii_field(value))
    return "\r\n".join(lines).encode("ascii") + _CRLF


def _recipient_fields(rcpt: RecipientReport) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    if rcpt.original_recipient:  # §2.3.1
        addr_type, address = _split_typed(rcpt.original_recipient)
        fields.append(("Original-Recipient", f"{addr_type};{address}"))
    fields += [
        ("Final-Recipient", f"rfc822; {rcpt.final_recipient}"),  # §2.3.2
        ("Action", rcpt.action),  # §2.3.3
        ("Status", rcpt.status),  # §2.3.4
    ]
    if rcpt.remote_mta:
        fields.append(("Remote-MTA", f"dns; {rcpt.remote_mta}"))  # §2.3.5
    if rcpt.diagnostic_code:  # §2.3.6: "smtp" only for an SMTP reply; anything else is ours
        text = _join_reply(rcpt.diagnostic_code)
        kind = "smtp" if _REPLY_LINE_RE.match(text) else "X-mta-engine"
        fields.append(("Diagnostic-Code", f"{kind}; {text}"))
    if rcpt.last_attempt_s is not None:
        fields.append(("Last-Attempt-Date", _date(rcpt.last_attempt_s)))  # §2.3.7
    if rcpt.action == "delayed" and rcpt.will_retry_until_s is not None:
        fields.append(("Will-Retry-Until", _date(rcpt.will_retry_until_s)))  # §2.3.8
    return fields


def _split_typed(value: str) -> tuple[str, str]:
    addr_type, sep, address = value.partition(";")
    if not sep:
        return "rfc822", value.strip()
    return addr_type.strip() or "rfc822", address.strip()


def _join_reply(reply: str) -> str:
    """One line for a possibly multi-line reply: the code once, then each line's text.

    "550-5.1.1 No such user\\n550 5.1.1 Try again" becomes "550 5.1.1 No such user Try again".
    """
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    if not lines:
        return ""
    match = _REPLY_LINE_RE.match(lines[0])
    if match is None:
        return " ".join(lines)
    code = match.group(1)
    first_text = lines[0][3:].lstrip(" -")
    status_match = _STATUS_PREFIX_RE.match(first_text)
    status = status_match.group(0) if status_match else None
    out = [f"{code} {first_text}".rstrip()]
    for line in lines[1:]:
        if _REPLY_LINE_RE.match(line) and line[:3] == code:
            line = line[3:].lstrip(" -")
            if status and line.startswith(status):
                line = line[len(status):].lstrip()
        if line:
            out.append(line)
    return " ".join(out)


def _ascii_field(value: str) -> str:
    """RFC 3464 §2.1 field values are US-ASCII text: no controls; other characters escaped.

    Non-ASCII characters are written as RFC 6533 §3 ``\\x{HEX}``, control characters as spaces.
    """
    out: list[str] = []
    for char in value:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            out.append(" ")
        elif code > 0x7F:
            out.append(f"\\x{{{code:X}}}")
        else:
            out.append(char)
    return "".join(out)


def _fold(name: str, value: str) -> list[str]:
    """Fold ``name: value`` at spaces into lines of ≤ 78 octets where possible (RFC 5322 §2.2.3).

    Unfolding (removing each CRLF) gives the value back exactly. A single word too long to
    fit 998 octets is split, which inserts one space into it on unfolding; only pathological
    input (one token of ~1000 characters) does that.
    """
    words = value.split(" ")
    lines: list[str] = []
    current = f"{name}: {words[0]}"
    for word in words[1:]:
        if word and _octets(current) + 1 + _octets(word) > _FOLD_OCTETS:
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    out: list[str] = []
    for line in lines:
        while _octets(line) > MAX_LINE_OCTETS:
            cut = _safe_cut(line, MAX_LINE_OCTETS)
            out.append(line[:cut])
            line = " " + line[cut:]
        out.append(line)
    return out


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _safe_cut(line: str, limit: int) -> int:
    cut = limit
    while _octets(line[:cut]) > limit:
        cut -= 1
    return cut


# --- part 3: the returned message or its header section (RFC 3461 §4.3, RFC 6522 §4) --------


def _split_original(original: bytes) -> tuple[bytes, bytes]:
    """(header section, whole message), both CRLF-normalised and ending in CRLF."""
    full = _normalise(original)
    end = full.find(b"\r\n\r\n")
    headers = full if end < 0 else full[: end + 2]
    if full.startswith(_CRLF):  # no header section at all
        headers = b""
    return headers, full


def _returned_part(content: bytes, *, full: bool) -> bytes:
    if full:  # RFC 2046 §5.2.1: message/rfc822 allows only 7bit, 8bit or binary
        cte = b"7bit" if _is_ascii(content) else b"8bit"
        return _part([b"Content-Description: Undelivered Message", b"Content-Type: message/rfc822",
                      b"Content-Transfer-Encoding: " + cte], content)
    if _is_8bit_safe(content):
        cte = b"7bit" if _is_ascii(content) else b"8bit"
    else:  # over-long header lines or NULs: quoted-printable keeps every line ≤ 76 octets
        content = _normalise(binascii.b2a_qp(content, istext=True))
        cte = b"quoted-printable"
    charset = b"us-ascii" if _is_ascii(content) else b"utf-8"
    return _part([b"Content-Description: Undelivered Message Headers",
                  b"Content-Type: text/rfc822-headers; charset=" + charset,
                  b"Content-Transfer-Encoding: " + cte], content)


def _normalise(data: bytes) -> bytes:
    """Every line end as CRLF (bare CR and bare LF too), ending with CRLF unless empty."""
    data = _LINE_END_RE.sub(_CRLF, data)
    return data if not data or data.endswith(_CRLF) else data + _CRLF


def _is_ascii(data: bytes) -> bool:
    return data.isascii()


def _is_8bit_safe(data: bytes) -> bool:
    """RFC 2045 §2.8: no NUL and no line over 998 octets (data is CRLF-normalised)."""
    return b"\0" not in data and all(len(line) <= MAX_LINE_OCTETS for line in data.split(_CRLF))


def _hard_wrap(data: bytes) -> bytes:
    lines: list[bytes] = []
    for line in data.split(_CRLF):
        while len(line) > MAX_LINE_OCTETS:
            lines.append(line[:MAX_LINE_OCTETS])
            line = line[MAX_LINE_OCTETS:]
        lines.append(line)
    return _CRLF.join(lines)


# --- assembly -------------------------------------------------------------------------------


def _part(headers: list[bytes], body: bytes) -> bytes:
    """One body part: its headers, a blank line and its content, kept byte for byte.

    The CRLF written before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1), so
    content ending in CRLF (a returned message) keeps its last line end.
    """
    return _CRLF.join(headers) + _CRLF + _CRLF + body


def _boundary(message_id: str, host: str, parts: list[bytes]) -> str:
    """A deterministic boundary that occurs in no part (RFC 2046 §5.1.1: at most 70 bchars)."""
    base = "=_" + _BOUNDARY_UNSAFE_RE.sub("", f"{message_id}/{host}")[:60]
    boundary, serial = base, 0
    while any(b"--" + boundary.encode("ascii") in part for part in parts):
        serial += 1
        boundary = f"{base}={serial}"
    return boundary
