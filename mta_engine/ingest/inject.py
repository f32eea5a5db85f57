"""Validate an inject request (the KumoMTA HTTP inject shape) into a ``Submission``.

Contract: pure; no I/O. A malformed request raises ``InjectError`` with one reason per field
path (nothing is queued). An invalid recipient address fails only that recipient. Templates are
compiled here so that a broken template is refused at the door, not bounced later.

Accepted shape (KumoMTA's ``/api/inject/v1``, plus our ``campaign``, ``tenant``, ``priority``)::

    {"envelope_sender": "news@example.com",
     "content": "<raw RFC 5322 message>" | {"subject", "from": {"email", "name"}, "reply_to",
                 "headers": {...}, "text_body", "html_body"},
     "recipients": [{"email", "name", "substitutions": {...}}],
     "substitutions": {...}, "campaign": "...", "tenant": "...", "priority": 0..9}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import jinja2

from ..errors import InjectError
from ..model import address_problem, sender_problem
from ..template.render import MAX_LINE_OCTETS, compile_spec, has_template_syntax

TOP_KEYS = {"envelope_sender", "content", "recipients", "substitutions", "campaign", "tenant", "priority",
            "template_dialect", "dsn"}
CONTENT_KEYS = {"subject", "from", "reply_to", "headers", "text_body", "html_body"}
RECIPIENT_KEYS = {"email", "name", "substitutions", "notify", "orcpt"}
NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}
MAX_PRIORITY = 9


@dataclass(slots=True)
class Submission:
    """A validated submission: one stored body and its accepted recipients."""

    sender: str
    spec: dict[str, Any]
    recipients: list[tuple[str, str | None, dict[str, Any] | None]]
    dsn_params: list[tuple[str | None, str | None]] | None = None
    """Per recipient (NOTIFY, ORCPT), parallel to ``recipients``; None when no recipient has any."""
    campaign: str | None = None
    tenant: str | None = None
    priority: int = 0
    dsn: bool = True
    ret: str | None = None
    envid: str | None = None
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def template(self) -> bool:
        return bool(self.spec.get("template"))

    @property
    def per_recipient(self) -> bool:
        return self.spec.get("built") is not None or self.template

    @property
    def size(self) -> int:
        built = self.spec.get("built")
        if built is None:
            return len(self.spec["raw"])
        return sum(len(built.get(k) or "") for k in ("text_body", "html_body", "subject")) + 512


def _label(where: str, value: Any, errors: dict[str, str], *, max_len: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len or not value.isprintable():
        errors[where] = f"must be a printable string of 1-{max_len} characters"
        return None
    return value


def _mailbox(where: str, value: Any, errors: dict[str, str]) -> dict[str, Any] | None:
    if isinstance(value, str):
        value = {"email": value}
    if not isinstance(value, dict) or not set(value) <= {"email", "name"}:
        errors[where] = 'must be {"email": ..., "name": ...} or an address string'
        return None
    problem = address_problem(value.get("email", ""))
    if problem:
        errors[f"{where}.email"] = problem
        return None
    if "name" in value and not isinstance(value["name"], str):
        errors[f"{where}.name"] = "must be a string"
        return None
    return value


def _content(value: Any, errors: dict[str, str]) -> dict[str, Any] | None:
    if isinstance(value, str):
        if not value.strip():
            errors["content"] = "is empty"
            return None
        text = value.replace("\r\n", "\n")
        head, sep, _ = text.partition("\n\n")
        if not sep:
            errors["content"] = "raw message needs a header section, a blank line, then the body"
            return None
        if "from:" not in head.lower():
            errors["content"] = "raw message has no From: header (RFC 5322 §3.6)"
            return None
        if any(len(line.encode("utf-8")) > MAX_LINE_OCTETS for line in text.split("\n")):
            errors["content"] = f"a line is longer than {MAX_LINE_OCTETS} octets (RFC 5322 §2.1.1)"
            return None
        return {"raw": value, "template": has_template_syntax(value)}
    if not isinstance(value, dict):
        errors["content"] = "must be a raw RFC 5322 message string or an object"
        return None
    unknown = set(value) - CONTENT_KEYS
    if unknown:
        errors["content"] = f"unknown field(s): {', '.join(sorted(unknown))}"
        return None
    built: dict[str, Any] = {}
    frm = _mailbox("content.from", value.get("from"), errors) if "from" in value else None
    if "from" not in value:
        errors["content.from"] = "is required"
    built["from"] = frm
    if value.get("reply_to") is not None:
        built["reply_to"] = _mailbox("content.reply_to", value["reply_to"], errors)
    for key in ("subject", "text_body", "html_body"):
        v = value.get(key)
        if v is not None and not isinstance(v, str):
            errors[f"content.{key}"] = "must be a string"
        built[key] = v
    if not built.get("text_body") and not built.get("html_body"):
        errors["content"] = "needs text_body, html_body or both"
    headers = value.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        errors["content.headers"] = "must be an object of string header names to string values"
    else:
        for name in headers:
            if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
                errors[f"content.headers.{name}"] = "is not a valid header field name (RFC 5322 §2.2)"
            elif name.lower() in {"from", "to", "subject", "date", "message-id", "mime-version",
                                  "content-type", "content-transfer-encoding"}:
                errors[f"content.headers.{name}"] = "is set by the engine; use the content fields instead"
    built["headers"] = headers
    texts = [v for v in (built.get("subject"), built.get("text_body"), built.get("html_body")) if isinstance(v, str)]
    if isinstance(headers, dict):
        texts.extend(v for v in headers.values() if isinstance(v, str))
    return {"built": built, "template": any(has_template_syntax(t) for t in texts)}


def _substitutions(where: str, value: Any, errors: dict[str, str]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        errors[where] = "must be an object with string keys"
        return None
    return value


def notify_problem(value: Any) -> str | None:
    """RFC 3461 §4.1: NEVER alone, or a comma list of SUCCESS, FAILURE, DELAY."""
    if not isinstance(value, str) or not value:
        return "must be a string"
    words = [w.strip().upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return None
    if not words or any(w not in NOTIFY_WORDS for w in words) or len(set(words)) != len(words):
        return 'must be "NEVER" or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1)'
    return None


def _dsn_options(value: Any, errors: dict[str, str]) -> tuple[bool, str | None, str | None]:
    """Top-level ``dsn``: false (no DSNs for this message) or {"ret": ..., "envid": ...}."""
    if value is None or value is True:
        return True, None, None
    if value is False:
        return False, None, None
    if not isinstance(value, dict) or not set(value) <= {"ret", "envid"}:
        errors["dsn"] = 'must be false or {"ret": "FULL"|"HDRS", "envid": "..."}'
        return True, None, None
    ret = value.get("ret")
    if ret is not None and ret not in ("FULL", "HDRS"):
        errors["dsn.ret"] = 'must be "FULL" or "HDRS" (RFC 3461 §4.3)'
    envid = value.get("envid")
    if envid is not None and (not isinstance(envid, str) or not envid.isascii() or not envid.isprintable()
                              or len(envid) > 100):
        errors["dsn.envid"] = "must be printable ASCII, at most 100 characters (RFC 3461 §4.4)"
    return True, ret, envid


def parse_request(body: Any, *, now_s: float, boundary: str) -> Submission:
    """Validate a decoded JSON inject request; raise InjectError listing every bad field."""
    errors: dict[str, str] = {}
    if not isinstance(body, dict):
        raise InjectError({"": "request body must be a JSON object"})
    unknown = set(body) - TOP_KEYS
    for key in sorted(unknown):
        errors[key] = "unknown field"
    if body.get("template_dialect", "Jinja") != "Jinja":
        errors["template_dialect"] = "only Jinja is supported"
    sender = body.get("envelope_sender")
    if not isinstance(sender, str):
        errors["envelope_sender"] = "is required (a string; \"\" for the null sender)"
    else:
        problem = sender_problem(sender)
        if problem:
            errors["envelope_sender"] = problem
    spec = _content(body["content"], errors) if "content" in body else None
    if "content" not in body:
        errors["content"] = "is required"
    subs = _substitutions("substitutions", body.get("substitutions"), errors)
    campaign = _label("campaign", body.get("campaign"), errors)
    tenant = _label("tenant", body.get("tenant"), errors)
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        errors["priority"] = f"must be an integer 0-{MAX_PRIORITY} (higher is served first)"
        priority = 0
    rcpts = body.get("recipients")
    if not isinstance(rcpts, list) or not rcpts:
        errors["recipients"] = "must be a non-empty list"
        rcpts = []
    dsn, ret, envid = _dsn_options(body.get("dsn"), errors)
    accepted: list[tuple[str, str | None, dict[str, Any] | None]] = []
    dsn_params: list[tuple[str | None, str | None]] = []
    failed: list[str] = []
    reasons: list[str] = []
    no_dsn = (None, None)
    for i, r in enumerate(rcpts):
        if isinstance(r, str):  # a bare address (most bulk requests): nothing else to check
            problem = address_problem(r)
            if problem:
                failed.append(r)
                reasons.append(f"recipients[{i}]: {r!r}: {problem}")
            else:
                accepted.append((r, None, None))
                dsn_params.append(no_dsn)
            continue
        where = f"recipients[{i}]"
        if not isinstance(r, dict) or not set(r) <= RECIPIENT_KEYS:
            errors[where] = 'must be {"email": ..., "name": ..., "substitutions": {...}}'
            continue
        email_ = r.get("email")
        name = r.get("name")
        if name is not None and not isinstance(name, str):
            errors[f"{where}.name"] = "must be a string"
            continue
        rsubs = _substitutions(f"{where}.substitutions", r.get("substitutions"), errors)
        notify, orcpt = r.get("notify"), r.get("orcpt")
        if notify is not None and (why := notify_problem(notify)):
            errors[f"{where}.notify"] = why
            continue
        if orcpt is not None and (not isinstance(orcpt, str) or ";" not in orcpt):
            errors[f"{where}.orcpt"] = 'must be "addr-type;address", e.g. "rfc822;user@example.com" (RFC 3461 §4.2)'
            continue
        problem = address_problem(email_) if isinstance(email_, str) else "email is required"
        if problem:
            failed.append(email_ if isinstance(email_, str) else repr(email_))
            reasons.append(f"{where}: {email_!r}: {problem}")
            continue
        accepted.append((email_, name, rsubs or None))
        dsn_params.append((notify.upper() if notify else None, orcpt))
    if spec is not None and not errors:
        spec["subs"] = subs or {}
        spec["date"] = formatdate(now_s, localtime=False)
        spec["boundary"] = boundary
        try:
            compile_spec(spec)
        except jinja2.TemplateSyntaxError as exc:
            errors["content"] = f"template syntax error on line {exc.lineno}: {exc.message}"
    if errors:
        raise InjectError(errors)
    assert spec is not None and isinstance(sender, str)
    return Submission(sender=sender, spec=spec, recipients=accepted, campaign=campaign, tenant=tenant,
                      priority=priority, failed=failed, errors=reasons, dsn=dsn, ret=ret, envid=envid,
                      dsn_params=dsn_params if any(n or o for n, o in dsn_params) else None)
