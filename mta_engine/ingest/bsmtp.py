"""Batch SMTP (RFC 2442 ``application/batch-SMTP``) ingest, and the envelope-command parser it
shares with the SMTP submission listener.

Contract: ``parse_bsmtp`` is pure and all-or-nothing: it reads the whole file and either returns
every transaction as a ``Submission`` or raises ``BsmtpError`` listing each problem with its
line number, so nothing from a rejected file is ever queued. ``parse_mail``/``parse_rcpt`` turn
the argument of a MAIL/RCPT command into a value or raise ``EnvelopeRefused`` carrying the
reply to send (RFC 5321 §4.1.1.2-3, ESMTP parameters of RFC 1870, 6152, 6531, 3461).
``ingest_bsmtp`` then commits the parsed messages through the group committer (one synced
commit per ``batch_max`` messages); ``make_bsmtp_route`` exposes it as ``POST
/api/inject/bsmtp``; ``inject_bsmtp_file`` is the CLI client. Trust level: the file is
untrusted submitter input; it never selects a tenant (the caller does).

File shape: blocks of ``MAIL FROM:<a>``, one or more ``RCPT TO:<b>``, ``DATA``, the message
lines, then a line with a single ``.``; a line starting with ``.`` is unstuffed (RFC 5321
§4.5.2). ``HELO``/``EHLO``/``NOOP``/``RSET`` between transactions and a final ``QUIT`` are
accepted and ignored; blank lines between blocks are allowed. ``RSET`` inside an open
transaction is refused (the batch would be ambiguous), as is anything after ``QUIT``.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..dsn.status import xtext_decode
from ..errors import InjectError, MtaError, SpoolError
from ..model import address_problem, sender_problem
from ..spool import records
from ..template.render import MAX_LINE_OCTETS
from .inject import Submission, _content, notify_problem  # _content: the raw-message checks of the JSON API

__all__ = ["BSMTP_PATH", "BsmtpError", "EnvelopeRefused", "MailCommand", "RcptCommand", "campaign_problem",
           "header_value", "ingest_bsmtp", "inject_bsmtp_file", "make_bsmtp_route", "parse_bsmtp", "parse_mail",
           "parse_rcpt"]

BSMTP_PATH = "/api/inject/bsmtp"
MAX_ENVID_CHARS = 100  # RFC 3461 §4.4
MAX_ORCPT_CHARS = 500  # RFC 3461 §4.2
MAX_LABEL_CHARS = 200  # same bound as the JSON API's campaign/tenant labels
MAX_REPORTED_PROBLEMS = 100


# --- envelope commands (shared with ingest/smtp_submit.py) ---------------------------------------

class EnvelopeRefused(MtaError):
    """A MAIL or RCPT argument is refused; ``reply`` is the full SMTP reply line to send."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(frozen=True, slots=True)
class MailCommand:
    """``MAIL FROM:<sender>`` and its parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531, RFC 3461)."""

    sender: str
    body: str | None = None
    smtputf8: bool = False
    size: int | None = None
    ret: str | None = None
    envid: str | None = None
    """Decoded from xtext."""


@dataclass(frozen=True, slots=True)
class RcptCommand:
    """``RCPT TO:<address>`` with RFC 3461 NOTIFY (upper case) and ORCPT ("type;decoded address")."""

    address: str
    notify: str | None = None
    orcpt: str | None = None


def _path(arg: str, keyword: str) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into the path's mailbox and the parameter text (RFC 5321 §4.1.2)."""
    if arg[: len(keyword)].upper() != keyword:
        raise EnvelopeRefused(501, "5.5.4", f"Syntax: {keyword}<address> [parameters]")
    rest = arg[len(keyword):].lstrip(" ")  # tolerate "FROM: <a>" (common, harmless)
    if not rest.startswith("<"):
        raise EnvelopeRefused(501, "5.5.4", "Syntax: the address must be in angle brackets (RFC 5321 §4.1.2)")
    end = rest.find(">")
    if end < 0:
        raise EnvelopeRefused(501, "5.5.4", "Syntax: missing '>' after the address")
    mailbox, params = rest[1:end], rest[end + 1:]
    if params and not params.startswith(" "):
        raise EnvelopeRefused(501, "5.5.4", "Syntax: a space must separate the address from parameters")
    if mailbox.startswith("@") and ":" in mailbox:  # RFC 5321 §4.1.1.3: accept, ignore source routes
        mailbox = mailbox.split(":", 1)[1]
    return mailbox, params.strip(" ")


def _params(text: str) -> dict[str, str | None]:
    """ESMTP ``keyword[=value]`` pairs (RFC 5321 §4.1.2 esmtp-param); keywords upper-cased."""
    out: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not key.isascii() or not key.replace("-", "").isalnum() or (eq and not value):
            raise EnvelopeRefused(501, "5.5.4", f"Syntax: malformed parameter {item[:40]!r}")
        key = key.upper()
        if key in out:
            raise EnvelopeRefused(501, "5.5.4", f"Syntax: parameter {key} given twice")
        out[key] = value if eq else None
    return out


def _xtext(name: str, value: str | None, max_chars: int) -> str:
    if not value or len(value) > max_chars:
        raise EnvelopeRefused(501, "5.5.4", f"{name} must be 1-{max_chars} characters of xtext (RFC 3461 §4)")
    try:
        return xtext_decode(value)
    except ValueError as exc:
        raise EnvelopeRefused(501, "5.5.4", f"{name} is not valid xtext: {exc}") from None


def _utf8_check(address: str, smtputf8: bool, enhanced_bad: str) -> None:
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes that are not UTF-8
        raise EnvelopeRefused(553, enhanced_bad, "address is not valid UTF-8") from None
    if not smtputf8 and not address.isascii():
        raise EnvelopeRefused(553, "5.6.7", "a non-ASCII address needs MAIL FROM ... SMTPUTF8 (RFC 6531 §3.4)")


def parse_mail(arg: str, *, max_size_bytes: int | None = None) -> MailCommand:
    """The argument of MAIL (``FROM:<a> [params]``) as a value; raises ``EnvelopeRefused``."""
    mailbox, ptext = _path(arg, "FROM:")
    params = _params(ptext)
    body = (params.pop("BODY") or "") if "BODY" in params else None
    if body is not None and body.upper() not in ("7BIT", "8BITMIME"):
        raise EnvelopeRefused(501, "5.5.4", "BODY must be 7BIT or 8BITMIME (RFC 6152 §2)")
    smtputf8 = "SMTPUTF8" in params
    if params.pop("SMTPUTF8", None) is not None:
        raise EnvelopeRefused(501, "5.5.4", "SMTPUTF8 takes no value (RFC 6531 §3.4)")
    size = None
    if "SIZE" in params:
        size_text = params.pop("SIZE")
        if not size_text or not size_text.isdigit() or len(size_text) > 20:
            raise EnvelopeRefused(501, "5.5.4", "SIZE must be a decimal number of octets (RFC 1870 §6)")
        size = int(size_text)
        if max_size_bytes and size > max_size_bytes:
            raise EnvelopeRefused(552, "5.3.4", f"message size exceeds fixed maximum of {max_size_bytes} octets "
                                  "(RFC 1870 §6)")
    ret = params.pop("RET", "") if "RET" in params else None
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        raise EnvelopeRefused(501, "5.5.4", "RET must be FULL or HDRS (RFC 3461 §4.3)")
    envid = _xtext("ENVID", params.pop("ENVID"), MAX_ENVID_CHARS) if "ENVID" in params else None
    params.pop("AUTH", None)  # RFC 4954 §5: MAIL AUTH=<>; we bind identity to the session only
    if params:
        raise EnvelopeRefused(555, "5.5.4", f"MAIL parameter(s) not supported: {', '.join(sorted(params))}")
    _utf8_check(mailbox, smtputf8, "5.1.7")
    problem = sender_problem(mailbox)
    if problem:
        raise EnvelopeRefused(553, "5.1.7", f"bad sender address: {problem}")
    return MailCommand(mailbox, body.upper() if body else None, smtputf8, size, ret.upper() if ret else None, envid)


def parse_rcpt(arg: str, *, smtputf8: bool = False) -> RcptCommand:
    """The argument of RCPT (``TO:<a> [params]``) as a value; raises ``EnvelopeRefused``."""
    mailbox, ptext = _path(arg, "TO:")
    params = _params(ptext)
    notify = None
    if "NOTIFY" in params:
        notify = params.pop("NOTIFY") or ""
        why = notify_problem(notify)
        if why:
            raise EnvelopeRefused(501, "5.5.4", f"NOTIFY {why}")
        notify = ",".join(w.strip() for w in notify.upper().split(","))
    orcpt = None
    if "ORCPT" in params:
        raw = params.pop("ORCPT")
        addr_type, semi, xtext = (raw or "").partition(";")
        if not semi or not addr_type or not addr_type.replace("-", "").isalnum():
            raise EnvelopeRefused(501, "5.5.4", 'ORCPT must be addr-type ";" xtext, e.g. rfc822;a@b.example '
                                  "(RFC 3461 §4.2)")
        orcpt = f"{addr_type};{_xtext('ORCPT', xtext, MAX_ORCPT_CHARS)}"
    if params:
        raise EnvelopeRefused(555, "5.5.4", f"RCPT parameter(s) not supported: {', '.join(sorted(params))}")
    _utf8_check(mailbox, smtputf8, "5.1.3")
    problem = address_problem(mailbox)
    if problem:
        raise EnvelopeRefused(553, "5.1.3", f"bad recipient address: {problem}")
    return RcptCommand(mailbox, notify, orcpt)


def header_value(message: str, name: str) -> str | None:
    """The unfolded value of the first ``name`` header field in the header section, or None."""
    want = name.lower() + ":"
    found: list[str] | None = None
    for line in message.replace("\r\n", "\n").split("\n"):
        if not line:
            break  # end of the header section (RFC 5322 §2.1)
        if found is not None:
            if line[0] in " \t":  # folded continuation (RFC 5322 §2.2.3)
                found.append(line)
                continue
            break
        if line.lower().startswith(want):
            found = [line[len(want):]]
    return None if found is None else " ".join(part.strip() for part in found).strip()


def campaign_problem(value: str) -> str | None:
    if not value or len(value) > MAX_LABEL_CHARS or not value.isprintable():
        return f"must be 1-{MAX_LABEL_CHARS} printable characters"
    return None


def message_problem(text: str) -> str | None:
    """Why a raw message cannot be queued (the JSON API's raw-content checks), or None."""
    errors: dict[str, str] = {}
    _content(text, errors)
    return errors.get("content")


def submission_for(mail: MailCommand, rcpts: list[RcptCommand], text: str) -> Submission:
    """The ``Submission`` of one envelope and its raw message text (never a template)."""
    params = [(r.notify, r.orcpt) for r in rcpts]
    return Submission(sender=mail.sender, spec={"raw": text, "template": False},
                      recipients=[(r.address, None, None) for r in rcpts],
                      dsn_params=params if any(n or o for n, o in params) else None,
                      ret=mail.ret, envid=mail.envid)


# --- the batch file -------------------------------------------------------------------------------

class BsmtpError(InjectError):
    """A batch file is malformed; ``problems`` lists (line number, reason), first one in ``line``."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        super().__init__({f"line {n}": why for n, why in problems})
        self.problems = problems
        self.line, self.reason = problems[0]


class _Batch:
    """Parser state for one file: the open transaction and the problems found so far."""

    def __init__(self) -> None:
        self.subs: list[Submission] = []
        self.problems: list[tuple[int, str]] = []
        self.mail: MailCommand | None = None
        self.mail_line = 0
        self.rcpts: list[RcptCommand] = []
        self.bad = False  # the open transaction had a problem: read it to its end, queue nothing
        self.data_line = 0
        self.content: list[str] = []

    def problem(self, line: int, why: str) -> None:
        self.problems.append((line, why))
        self.bad = True

    def open(self, line: int, arg: str) -> None:
        self.mail_line, self.rcpts, self.bad, self.mail = line, [], False, None
        try:
            self.mail = parse_mail(arg)
        except EnvelopeRefused as exc:
            self.problem(line, f"MAIL: {exc.text}")

    def rcpt(self, line: int, arg: str) -> None:
        try:
            self.rcpts.append(parse_rcpt(arg, smtputf8=self.mail.smtputf8 if self.mail else True))
        except EnvelopeRefused as exc:
            self.problem(line, f"RCPT: {exc.text}")

    def close(self) -> None:
        """The final "." was read: validate the message and keep the transaction if all is well."""
        for i, text_line in enumerate(self.content):
            if len(text_line.encode("utf-8", "surrogateescape")) > MAX_LINE_OCTETS:
                self.problem(self.data_line + 1 + i, f"line longer than {MAX_LINE_OCTETS} octets (RFC 5322 §2.1.1)")
                break
        text = "\r\n".join(self.content) + "\r\n"
        if not self.bad and (why := message_problem(text)):
            self.problem(self.data_line, f"message: {why}")
        campaign = header_value(text, "X-Campaign") if not self.bad else None
        if campaign is not None and (why := campaign_problem(campaign)):
            self.problem(self.data_line, f"X-Campaign header {why}")
        if not self.bad and self.mail is not None:
            sub = submission_for(self.mail, self.rcpts, text)
            sub.campaign = campaign
            self.subs.append(sub)
        self.mail, self.content = None, []


def parse_bsmtp(text: str) -> list[Submission]:
    """Every transaction of a batch-SMTP file, or ``BsmtpError`` naming each bad line."""
    b = _Batch()
    in_data = quit_line = 0
    for n, raw in enumerate(text.split("\n"), 1):
        raw = raw[:-1] if raw.endswith("\r") else raw
        if in_data:
            if raw == ".":  # RFC 5321 §4.1.1.4: end of data
                in_data = 0
                b.close()
            else:
                b.content.append(raw[1:] if raw.startswith(".") else raw)  # §4.5.2 transparency
            continue
        line = raw.strip()
        if not line:
            continue
        if quit_line:
            b.problem(n, f"text after QUIT (line {quit_line})")
            break
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        open_tx = b.mail_line > 0  # between MAIL and DATA
        if verb in ("HELO", "EHLO", "NOOP", "RSET", "QUIT"):
            if open_tx:
                b.problem(n, f"{verb} inside the transaction started at line {b.mail_line} (no DATA yet)")
                b.mail_line, b.mail = 0, None
            quit_line = n if verb == "QUIT" else 0
        elif verb == "MAIL":
            if open_tx:
                b.problem(n, f"MAIL inside the transaction started at line {b.mail_line} (no DATA yet)")
            b.open(n, arg)
        elif verb == "RCPT":
            if not open_tx:
                b.problem(n, "RCPT without MAIL")
            else:
                b.rcpt(n, arg)
        elif verb == "DATA":
            if not open_tx:
                b.problem(n, "DATA without MAIL")
            elif not b.rcpts and not b.bad:
                b.problem(n, "DATA without an accepted RCPT")
            elif arg:
                b.problem(n, "DATA takes no argument")
            in_data, b.data_line, b.mail_line = n, n, 0
        else:
            b.problem(n, f"unknown command {verb[:20]!r} (expected MAIL, RCPT, DATA, HELO, EHLO, RSET, QUIT)")
    if in_data:
        b.problem(in_data, "DATA is not ended by a line with a single '.'")
    elif b.mail_line:
        b.problem(b.mail_line, "transaction has no DATA")
    if not b.subs and not b.problems:
        b.problem(1, "no transaction (MAIL FROM, RCPT TO, DATA, message, '.') in the file")
    if b.problems:
        raise BsmtpError(b.problems[:MAX_REPORTED_PROBLEMS])
    return b.subs


# --- adapters: commit, HTTP route, CLI client -----------------------------------------------------

async def ingest_bsmtp(committer: Any, text: str, *, tenant: str | None = None,
                       campaign: str | None = None) -> list[str]:
    """Parse the whole file, then queue every message; returns their queue ids in file order.

    Raises ``BsmtpError`` before anything is submitted. The messages are submitted together,
    so they share group commits (up to the committer's ``batch_max`` per synced commit).
    """
    subs = parse_bsmtp(text)
    for sub in subs:
        sub.tenant = tenant
        if campaign is not None:
            sub.campaign = campaign
    ids = await asyncio.gather(*(committer.submit(sub) for sub in subs))
    return [records.queue_id(msg_id) for msg_id in ids if msg_id is not None]  # None: all suppressed


def make_bsmtp_route(committer: Any) -> tuple[str, Callable[[Any], Awaitable[Any]]]:
    """``(path, handler)`` for ``POST /api/inject/bsmtp``: body = the file, ``?tenant=&campaign=``."""
    import orjson
    from aiohttp import web

    def answer(data: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")

    async def inject_bsmtp(request: web.Request) -> web.Response:
        labels: dict[str, str | None] = {}
        for key in ("tenant", "campaign"):
            value = request.query.get(key)
            if value is not None and (why := campaign_problem(value)):
                return answer({"error": "malformed request", "errors": [f"{key}: {why}"]}, 400)
            labels[key] = value
        try:
            text = (await request.read()).decode("utf-8")
        except UnicodeDecodeError as exc:
            return answer({"error": "malformed batch", "errors": [f"body is not UTF-8 (offset {exc.start})"]}, 400)
        try:
            queue_ids = await ingest_bsmtp(committer, text, tenant=labels["tenant"], campaign=labels["campaign"])
        except BsmtpError as exc:
            return answer({"error": "malformed batch", "errors": [f"line {n}: {why}" for n, why in exc.problems],
                           "lines": [{"line": n, "reason": why} for n, why in exc.problems]}, 400)
        except SpoolError as exc:
            return answer({"error": "not queued", "errors": [str(exc)]}, 503)
        return answer({"messages": len(queue_ids), "queue_ids": queue_ids})

    return BSMTP_PATH, inject_bsmtp


def inject_bsmtp_file(url: str, path: str, *, timeout_s: float = 300.0, tenant: str | None = None,
                      campaign: str | None = None) -> int:
    """POST a batch-SMTP file to ``url``; prints the JSON answer; 0 when queued, 1 when refused."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SystemExit(f"mta-engine: cannot read {path}: {exc.strerror}") from None
    query = urllib.parse.urlencode({k: v for k, v in (("tenant", tenant), ("campaign", campaign)) if v})
    req = urllib.request.Request(f"{url}?{query}" if query else url, data=data,
                                 headers={"Content-Type": "application/batch-SMTP"})  # RFC 2442 §2
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(), file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        raise SystemExit(f"mta-engine: cannot reach {url}: {exc.reason}; is the engine running?") from None
