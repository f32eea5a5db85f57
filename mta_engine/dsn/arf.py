"""Feedback loop complaints: parse an ARF report (RFC 5965) into a value (issue 5).

Contract: pure (a parsed ``email`` message in, a value out). ``parse_arf`` reads a
``multipart/report; report-type=feedback-report``: the machine-readable
``message/feedback-report`` part (Feedback-Type, User-Agent, Version, Original-Mail-From,
Original-Rcpt-To, Arrival-Date, Source-IP, Reported-Domain, Reporting-MTA, Incidents) and the
returned original (``message/rfc822`` or ``text/rfc822-headers``), whose Message-ID and
Return-Path lead back to our recipient (``dsn/verp.py``). Providers often redact the
complainer's address (RFC 6590); the report is still parsed, with ``original_rcpt_to`` None.

Trust level: untrusted network input. Never raises on malformed input: returns None when the
message is not a feedback report or has no Feedback-Type (RFC 5965 §3.1: required); field
values are cleaned and bounded (``oob.clean``). Feedback types other than the RFC 5965 ones
(abuse, fraud, virus, other, not-spam; RFC 6650 adds none) are kept as given, lower-cased.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from .oob import OriginalMessage, addr_type_value, field_blocks, clean, find_refs, original_message
from .verp import RecipientRef, parse_verp

__all__ = ["FEEDBACK_TYPES", "COMPLAINT_TYPES", "FeedbackReport", "parse_arf"]

FEEDBACK_TYPES = frozenset({"abuse", "fraud", "virus", "other", "not-spam", "auth-failure"})
"""RFC 5965 §7.3 registry, plus ``auth-failure`` (RFC 6591)."""
COMPLAINT_TYPES = frozenset({"abuse"})
"""Feedback types that mean "this recipient does not want this mail": they suppress the address."""


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """One ARF report. Addresses are bare (no angle brackets); absent fields are None."""

    feedback_type: str
    user_agent: str | None
    version: str | None
    original_mail_from: str | None
    original_rcpt_to: tuple[str, ...]
    arrival_date: str | None
    source_ip: str | None
    reported_domain: str | None
    reporting_mta: str | None
    incidents: int | None
    original: OriginalMessage
    refs: tuple[RecipientRef, ...]

    @property
    def is_complaint(self) -> bool:
        return self.feedback_type in COMPLAINT_TYPES


def _feedback_fields(msg: Message) -> Message | None:
    part = next((p for p in msg.walk() if p.get_content_type() == "message/feedback-report"), None)
    if part is None:
        return None
    blocks = field_blocks(part)
    if not blocks:
        return None
    fields = Message()
    for block in blocks:  # some reporters put a blank line inside the part: read every block
        for name, value in block.items():
            fields[name] = value
    return fields


def parse_arf(msg: Message, verp_domains: frozenset[str] | None = None, raw_text: str = "") -> FeedbackReport | None:
    """The feedback report in ``msg``, or None when it is not one (see the module contract)."""
    if msg.get_content_type() != "multipart/report":
        return None
    report_type = msg.get_param("report-type") or ""
    if not isinstance(report_type, str) or report_type.lower() != "feedback-report":
        return None
    fields = _feedback_fields(msg)
    if fields is None:
        return None
    feedback_type = clean(fields.get("Feedback-Type") or "", 40).lower()
    if not feedback_type:
        return None

    def one(name: str) -> str | None:
        value = fields.get(name)
        return (clean(value) or None) if value is not None else None

    rcpts = tuple(a for a in (addr_type_value(v) for v in (fields.get_all("Original-Rcpt-To") or [])[:50]) if a)
    incidents_text = one("Incidents")
    incidents = int(incidents_text) if incidents_text and incidents_text.isdigit() and len(incidents_text) < 10 \
        else None
    mail_from = addr_type_value(fields.get("Original-Mail-From"))
    original = original_message(msg)
    refs = find_refs(msg, original, raw_text, verp_domains)
    if mail_from:  # the envelope sender of the original: our VERP return path
        ref = parse_verp(mail_from, verp_domains)
        if ref is not None and ref not in refs:
            refs = (ref,) + refs
    return FeedbackReport(
        feedback_type=feedback_type, user_agent=one("User-Agent"), version=one("Version"),
        original_mail_from=mail_from, original_rcpt_to=rcpts,
        arrival_date=one("Arrival-Date") or one("Received-Date"), source_ip=one("Source-IP"),
        reported_domain=one("Reported-Domain"), reporting_mta=addr_type_value(fields.get("Reporting-MTA")),
        incidents=incidents, original=original, refs=refs)

