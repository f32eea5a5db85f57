"""Out-of-band bounces: parse a returned message into per-recipient failures (issue 5).

Contract: pure (bytes in, values out; stdlib ``email`` only). ``parse_dsn`` reads an RFC 3464
delivery status notification (``multipart/report; report-type=delivery-status``, also RFC 6533
``message/global-delivery-status``): per recipient Final-Recipient, Original-Recipient, Action,
Status, Diagnostic-Code and Remote-MTA. ``parse_text_bounce`` reads the non-standard bounces
many MTAs still send (plain text, qmail's "failure notice", Exchange's "Undeliverable"): it
finds the first SMTP reply or RFC 3463 code in the human-readable part and the address it is
about. Neither decides category or permanence: ``classify`` hands the reply to the bounce
classifier (``dsn/classify.py``). ``original_message`` reads the returned original (a
``message/rfc822`` or ``text/rfc822-headers`` part) for correlation (``dsn/verp.py``).

Trust level: the input is untrusted network data. Nothing here raises on malformed input:
parsers return None ("not a report of this kind") or a report with what could be read; field
values are unfolded, stripped of control characters and cut to ``MAX_FIELD_CHARS``.
"""

from __future__ import annotations

import binascii
import quopri
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser

from .classify import Classification, Classifier, Permanence
from .verp import RecipientRef, parse_message_id, parse_verp

__all__ = ["MAX_FIELD_CHARS", "OriginalMessage", "RecipientStatus", "OobReport", "parse_message", "parse_dsn",
           "parse_text_bounce", "original_message", "find_refs", "classify", "clean", "addr_type_value",
           "field_blocks"]

MAX_FIELD_CHARS = 500
MAX_RECIPIENTS = 100
"""Per-recipient blocks read from one DSN (a DSN reports on one message's recipients at one host)."""
MAX_TEXT_CHARS = 64 * 1024
"""Human-readable text scanned for a non-standard bounce's reply."""

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"(?<![\d.])([45]\d\d)(?:[ -]+#?([45]\.\d{1,3}\.\d{1,3}))?(?![\d.])")
_ADDRESS = re.compile(r"<?([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>?")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]+")
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (?:subsystem|system)|microsoftexchange", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|has failed|failed)|failure notice|"
    r"returned mail|mail delivery failed|non[- ]?delivery|could not be delivered|delivery problem", re.I)
_DELAY = re.compile(r"\bdelay(?:ed)?\b|will (?:continue|keep) (?:trying|retrying)|still (?:trying|being retried)|"
                    r"warning: message|not yet been delivered", re.I)
_ORIGINAL_START = re.compile(r"^-{2,}.*(?:original message|below this line|returned message|"
                             r"headers of the original|undelivered message)", re.I | re.M)
_MESSAGE_ID_FIELD = re.compile(r"^message-id:\s*(<[^>\r\n]{1,250}>)", re.I | re.M)
_RETURN_PATH_FIELD = re.compile(r"^return-path:\s*<?([^\s<>]{1,300})>?", re.I | re.M)


def clean(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """A header or field value on one line: unfolded, no control characters, at most ``limit`` chars."""
    text = value if isinstance(value, str) else str(value)
    return " ".join(_CTRL.sub(" ", text).split())[:limit]


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """What the report returned of our original message: the fields correlation uses."""

    message_id: str | None = None
    return_path: str | None = None
    to: str | None = None
    from_: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One recipient's fate as the remote MTA reported it."""

    final_recipient: str | None
    original_recipient: str | None
    action: str
    """``failed`` or ``delayed`` (other actions are not failures and are not kept)."""
    status: str | None
    """RFC 3463 code, e.g. ``5.1.1``."""
    code: int | None
    """SMTP reply code from an ``smtp;`` Diagnostic-Code, or from the text of a non-standard bounce."""
    diagnostic: str
    remote_mta: str | None = None


@dataclass(frozen=True, slots=True)
class OobReport:
    """A parsed bounce: the failed recipients, the returned original and the references found."""

    format: str
    """``dsn`` (RFC 3464) or ``text`` (a non-standard bounce)."""
    recipients: tuple[RecipientStatus, ...]
    reporting_mta: str | None
    original: OriginalMessage
    refs: tuple[RecipientRef, ...]
    """Engine references found in the returned original (Message-ID, Return-Path, VERP addresses)."""


def parse_message(raw: bytes) -> Message:
    """The MIME tree of ``raw`` (compat32 policy: lenient with the malformed mail bounces often are)."""
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def addr_type_value(value: str | None) -> str | None:
    """``rfc822; user@example.com`` → ``user@example.com`` (RFC 3464 §2.3.2, address-type; address)."""
    if not value:
        return None
    text = clean(value, 320)
    kind, semi, addr = text.partition(";")
    addr = (addr if semi else kind).strip().strip("<>").strip()
    return addr or None


def _status_code(value: str | None) -> str | None:
    m = _ENHANCED.search(value or "")
    return m.group(0) if m else None


def _diagnostic(value: str | None) -> tuple[int | None, str | None, str]:
    """``smtp; 550 5.1.1 text`` → (550, "5.1.1", "550 5.1.1 text"); other types keep their text."""
    text = clean(value or "")
    kind, semi, rest = text.partition(";")
    if semi and kind.strip().lower() in ("smtp", "x-postfix", "x-unix", "x-local"):
        text = rest.strip()
    m = _REPLY.match(text)
    code = int(m.group(1)) if m else None
    enhanced = (m.group(2) if m and m.group(2) else None) or _status_code(text)
    return code, enhanced, text


def field_blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status part (per-message first), however it was encoded."""
    payload = part.get_payload()
    cte = clean(part.get("Content-Transfer-Encoding") or "", 40).lower()
    if isinstance(payload, list):
        if cte not in ("base64", "quoted-printable"):
            return [p for p in payload if isinstance(p, Message)]
        # The parser split the still-encoded text into "blocks": join them back and decode.
        encoded = "\n".join(p.as_string() for p in payload if isinstance(p, Message)).encode("ascii", "replace")
        try:
            text = (binascii.a2b_base64(re.sub(rb"[^A-Za-z0-9+/=]", b"", encoded)) if cte == "base64"
                    else quopri.decodestring(encoded)).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return []
    else:
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload or "")
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [HeaderParser(policy=policy.compat32).parsestr(b.strip() + "\n") for b in blocks if b.strip()]


def _headers_of(part: Message) -> Message | None:
    ctype = part.get_content_type()
    if ctype in ("message/rfc822", "message/global"):
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            return parse_message(data)
        return None
    if ctype in ("text/rfc822-headers", "message/global-headers"):
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(part.get_payload() or "")
        return HeaderParser(policy=policy.compat32).parsestr(text.lstrip())
    return None


def original_message(msg: Message) -> OriginalMessage:
    """The returned original's correlation fields: the first ``message/rfc822`` or header part."""
    for part in msg.walk():
        if part is msg:
            continue
        head = _headers_of(part)
        if head is not None:
            def field(name: str) -> str | None:
                value = head.get(name)
                return clean(value) or None if value is not None else None
            return OriginalMessage(field("Message-ID"), field("Return-Path"), field("To"), field("From"),
                                   field("Subject"))
    return OriginalMessage()


def _text_of(msg: Message, limit: int = MAX_TEXT_CHARS) -> str:
    """The text/plain parts outside any returned original, decoded, at most ``limit`` chars."""
    out: list[str] = []

    def visit(part: Message) -> None:
        if part.get_content_maintype() == "message" or part.get_content_type() == "text/rfc822-headers":
            return  # the returned original: not the bounce's own words
        if part.is_multipart():
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    visit(sub)
            return
        if part.get_content_type() not in ("text/plain", "text/html") and part is not msg:
            return
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            return
        text = data.decode(part.get_content_charset() or "utf-8", "replace") if _known_charset(part) \
            else data.decode("utf-8", "replace")
        if part.get_content_type() == "text/html":
            text = re.sub(r"<[^>]{0,2000}>", " ", text)
        out.append(text)

    visit(msg)
    return "\n".join(out)[:limit]


def _known_charset(part: Message) -> bool:
    cs = part.get_content_charset()
    if not cs:
        return False
    try:
        "".encode(cs)
    except LookupError:
        return False
    return True


def find_refs(msg: Message, original: OriginalMessage, raw_text: str,
              verp_domains: frozenset[str] | None = None) -> tuple[RecipientRef, ...]:
    """Engine references in a returned message, best first: the original's Message-ID and
    Return-Path, then any engine Message-ID or VERP address in the whole text (inline originals)."""
    refs: list[RecipientRef] = []

    def add(ref: RecipientRef | None) -> None:
        if ref is not None and ref not in refs:
            refs.append(ref)

    if original.return_path:
        add(parse_verp(original.return_path, verp_domains, via="return_path"))
    if original.message_id:
        add(parse_message_id(original.message_id))
    for m in _RETURN_PATH_FIELD.finditer(raw_text):
        add(parse_verp(m.group(1), verp_domains, via="return_path"))
    for m in _MESSAGE_ID_FIELD.finditer(raw_text):
        add(parse_message_id(m.group(1)))
    return tuple(refs[:8])


def parse_dsn(msg: Message, verp_domains: frozenset[str] | None = None, raw_text: str = "") -> OobReport | None:
    """An RFC 3464 DSN's failed and delayed recipients; None when ``msg`` is not a DSN."""
    if msg.get_content_type() != "multipart/report":
        return None
    report_type = (msg.get_param("report-type") or "")
    if not isinstance(report_type, str) or report_type.lower() not in ("delivery-status", "global-delivery-status"):
        return None
    status_part = next((p for p in msg.walk() if p.get_content_type() in
                        ("message/delivery-status", "message/global-delivery-status")), None)
    if status_part is None:
        return None
    blocks = field_blocks(status_part)
    per_message = blocks[0] if blocks else Message()
    reporting = addr_type_value(per_message.get("Reporting-MTA"))
    recipients: list[RecipientStatus] = []
    for block in blocks[1:1 + MAX_RECIPIENTS]:
        action = clean(block.get("Action") or "", 40).lower().split(" ")[0]
        if action not in ("failed", "delayed"):
            continue  # delivered, relayed, expanded: not failures (RFC 3464 §2.3.3)
        code, enhanced, text = _diagnostic(block.get("Diagnostic-Code"))
        status = _status_code(block.get("Status")) or enhanced
        recipients.append(RecipientStatus(
            final_recipient=addr_type_value(block.get("Final-Recipient")),
            original_recipient=addr_type_value(block.get("Original-Recipient")),
            action=action, status=status, code=code, diagnostic=text,
            remote_mta=addr_type_value(block.get("Remote-MTA"))))
    original = original_message(msg)
    return OobReport("dsn", tuple(recipients), reporting, original, find_refs(msg, original, raw_text, verp_domains))


def _looks_like_bounce(msg: Message, envelope_sender: str | None) -> bool:
    sender = clean(msg.get("From") or "")
    subject = clean(msg.get("Subject") or "")
    if _DAEMON.search(sender) or _BOUNCE_SUBJECT.search(subject):
        return True
    if clean(msg.get("Auto-Submitted") or "").lower().startswith("auto-replied"):
        return False  # an out-of-office answer, also sent with the null sender (RFC 3834 §3.3)
    return envelope_sender == ""


def parse_text_bounce(msg: Message, envelope_sender: str | None = None,
                      verp_domains: frozenset[str] | None = None, raw_text: str = "",
                      ignore_domains: frozenset[str] = frozenset()) -> OobReport | None:
    """A non-standard (plain text) bounce: the first reply it quotes and the address it names.

    None when ``msg`` does not look like a non-delivery report (null sender, a MAILER-DAEMON or
    postmaster From, or a bounce-like Subject) or names no failure at all. Addresses at
    ``ignore_domains`` (our own bounce domains) are never taken for the failed recipient.
    """
    if not _looks_like_bounce(msg, envelope_sender):
        return None
    text = _text_of(msg)
    cut = _ORIGINAL_START.search(text)
    own = text[:cut.start()] if cut else text
    lines = own.splitlines()
    diag_at = next((i for i, line in enumerate(lines) if _REPLY.search(line) or _ENHANCED.search(line)), None)
    recipient = None
    for line in (lines[:diag_at + 1] if diag_at is not None else lines):
        for m in _ADDRESS.finditer(line):
            addr = m.group(1).rstrip(".")
            domain = addr.rpartition("@")[2].lower()
            if domain in ignore_domains or _DAEMON.search(addr):
                continue
            recipient = addr
        if recipient is not None and diag_at is None:
            break
    if diag_at is None and recipient is None:
        return None
    subject = clean(msg.get("Subject") or "")
    delayed = bool(_DELAY.search(subject)) or (diag_at is None and bool(_DELAY.search(own[:2000])))
    code = enhanced = None
    if diag_at is not None:
        diag_lines = [lines[diag_at]]
        for line in lines[diag_at + 1: diag_at + 6]:
            if not line.strip():
                break
            diag_lines.append(line)
        diagnostic = clean(" ".join(diag_lines))
        m = _REPLY.search(diagnostic)
        if m:
            code = int(m.group(1))
            enhanced = m.group(2)
        enhanced = enhanced or _status_code(diagnostic)
    else:
        diagnostic = clean(own)
    if code is None and enhanced is None:
        code = 450 if delayed else 550  # a non-delivery report without codes: the RFC 3463 X.0.0
    elif code is not None and code >= 500 or (enhanced or "").startswith("5"):
        delayed = False
    status = enhanced or (f"{str(code)[0]}.0.0" if code else None)
    rcpt = RecipientStatus(recipient, None, "delayed" if delayed else "failed", status, code, diagnostic)
    original = original_message(msg)
    return OobReport("text", (rcpt,), None, original, find_refs(msg, original, raw_text, verp_domains))


def classify(classifier: Classifier, rs: RecipientStatus) -> Classification:
    """Category and permanence of one reported failure; a ``delayed`` action is always transient."""
    verdict = classifier.classify(rs.code, rs.status, rs.diagnostic or (rs.status or ""))
    if rs.action == "delayed" and verdict.permanence is Permanence.PERMANENT:
        return Classification(verdict.category, Permanence.TRANSIENT, verdict.rule)
    return verdict
