"""Build and render message content, once per stored body and once per recipient.

Contract: pure (no I/O). A ``MessageTemplate`` is compiled once per stored message (in the
worker, at delivery time) and renders the bytes of one recipient's RFC 5322 message with CRLF
line ends. A body without template syntax is rendered once and shared by every recipient
(merge at delivery: a 100,000-recipient campaign stores one body). Ingest calls ``compile_spec``
to reject a broken template before anything is queued.

Template syntax is Jinja (``{{ first_name }}``); the variables of a recipient are the request's
top-level ``substitutions``, then ``email`` and ``name``, then the recipient's own
``substitutions`` (later ones win).
"""

from __future__ import annotations

import binascii
import email.policy
import functools
from email.header import Header
from email.utils import formataddr
from typing import Any

import jinja2

_ENV = jinja2.Environment(autoescape=False, keep_trailing_newline=True)
_GLOBALS = dict(_ENV.globals)  # range, dict, lipsum, cycler, joiner, namespace: as Template.render sees them


def _render(tmpl: jinja2.Template, parent: dict[str, Any]) -> str:
    """``tmpl.render(vars)`` without its per-call copies: ``parent`` (from ``MessageTemplate.variables``)
    already holds the globals under the variables, as ``Template.render`` would merge them. Jinja's
    own merge iterates a ChainMap of globals on every call: about 12 us of the 3 renders a message
    takes, against about 2 us here (one fresh Context per part, so ``{% set %}`` stays in its part)."""
    ctx = _ENV.context_class(_ENV, parent, tmpl.name, tmpl.blocks)
    try:
        return _ENV.concat(tmpl.root_render_func(ctx))  # type: ignore[attr-defined,no-any-return]
    except Exception:
        _ENV.handle_exception()  # re-raises with the template's line numbers, as Template.render does
        raise  # pragma: no cover - handle_exception always raises


_POLICY = email.policy.SMTP.clone(max_line_length=78)

MAX_LINE_OCTETS = 998
"""RFC 5322 §2.1.1: a line is at most 998 characters plus CRLF."""


def has_template_syntax(text: str) -> bool:
    return "{{" in text or "{%" in text


def _crlf(data: bytes) -> bytes:
    """UTF-8 ``data`` with CRLF line ends. UTF-8 never puts a CR or LF octet inside a multi-octet
    character, so this is the conversion of the text, done on the octets the message needs."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.replace(b"\n", b"\r\n")


def _lines_fit(data: bytes) -> bool:
    """True if no line of ``data`` (split at LF; a CR counts as an octet) is over ``MAX_LINE_OCTETS``.

    A longer line covers an offset that is a multiple of ``MAX_LINE_OCTETS + 1``, so measuring the
    line at each such offset finds it: two C-level searches per kilooctet, against about 3 us to
    split a 4 KB part into lines. A search longer than a line that fits ends the loop: linear.
    """
    for probe in range(0, len(data), MAX_LINE_OCTETS + 1):
        start = data.rfind(b"\n", 0, probe) + 1
        end = data.find(b"\n", probe)
        if (len(data) if end < 0 else end) - start > MAX_LINE_OCTETS:
            return False
    return True


def fold_header(name: str, value: str) -> str:
    """One header field, folded to 78 columns, RFC 2047-encoded if it is not ASCII (H04, D06)."""
    if value.isascii() and len(name) + len(value) < 76 and "\n" not in value and "\r" not in value:
        return f"{name}: {value}\r\n"
    return _fold_slow(name, value)


@functools.lru_cache(maxsize=1024)
def _fold_slow(name: str, value: str) -> str:
    """Folding and RFC 2047 encoding by the email package: about 28 us a field, so cached; a
    campaign's non-ASCII Subject is then encoded once, not once per recipient."""
    value = value.replace("\r", " ").replace("\n", " ")
    try:
        return _POLICY.fold_binary(name, value).decode("ascii")
    except UnicodeEncodeError:  # structured header with raw non-ASCII: encode it as one word
        return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=78) + "\r\n"


def _address(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    email_ = entry.get("email", "")
    name = entry.get("name")
    return formataddr((name, email_)) if name else email_


def _encode_part(text: str) -> tuple[bytes, str]:
    """A text part's octets and its Content-Transfer-Encoding.

    7bit or 8bit when every line fits (RFC 5322 §2.1.1); quoted-printable only for over-long lines.
    An 8bit part is sent as is with BODY=8BITMIME, and converted to quoted-printable by the SMTP
    client (``PreparedMessage.seven_bit``) only for a server without 8BITMIME (RFC 6152): so the
    common case costs no encoding at all.
    """
    data = text.encode("utf-8")
    if _lines_fit(data):
        return _crlf(data), "7bit" if data.isascii() else "8bit"
    qp = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True)
    return qp.replace(b"\n", b"\r\n"), "quoted-printable"


def _compile(text: str | None, template: bool) -> jinja2.Template | str | None:
    if text is None:
        return None
    return _ENV.from_string(text) if template else text


def compile_spec(spec: dict[str, Any]) -> "MessageTemplate":
    """Compile a stored content spec; raises ``jinja2.TemplateSyntaxError`` on a broken template."""
    return MessageTemplate(spec)


class MessageTemplate:
    """One stored body, ready to render per recipient."""

    __slots__ = ("spec", "template", "per_recipient", "_raw", "_shared", "_subject", "_text", "_html",
                 "_static_headers", "_headers", "_boundary", "_subs")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.template = bool(spec.get("template"))
        self._subs: dict[str, Any] = spec.get("subs") or {}
        self._shared: bytes | None = None
        self._raw = None
        built = spec.get("built")
        if built is None:
            raw = spec["raw"]
            self._raw = _compile(raw, self.template)
            self.per_recipient = self.template
            if not self.template:
                self._shared = _crlf(raw.encode("utf-8"))
            return
        self.per_recipient = True
        self._subject = _compile(built.get("subject") or "", self.template)
        self._text = _compile(built.get("text_body"), self.template)
        self._html = _compile(built.get("html_body"), self.template)
        self._boundary = f"=_mta_{spec.get('boundary', 'b')}"
        headers = [fold_header("From", _address(built["from"]))]
        if built.get("reply_to"):
            headers.append(fold_header("Reply-To", _address(built["reply_to"])))
        headers.append(fold_header("Date", spec["date"]))
        headers.append("MIME-Version: 1.0\r\n")
        self._static_headers = "".join(headers)
        self._headers = [(hname, _compile(hvalue, self.template)) for hname, hvalue in (built.get("headers") or {}).items()]

    def __repr__(self) -> str:
        kind = "built" if self.spec.get("built") is not None else "raw"
        return f"<MessageTemplate {kind} template={self.template} per_recipient={self.per_recipient}>"

    def variables(self, address: str, name: str | None, rcpt_vars: dict[str, Any] | None) -> dict[str, Any]:
        out = dict(_GLOBALS)
        out.update(self._subs)
        out["email"] = address
        out["name"] = name or ""
        if rcpt_vars:
            out.update(rcpt_vars)
        return out

    def render(self, *, address: str, name: str | None, variables: dict[str, Any] | None,
               message_id: str) -> bytes:
        """The RFC 5322 message for one recipient, CRLF line ends (not yet dot-stuffed)."""
        if self._shared is not None:
            return self._shared
        vars_ = self.variables(address, name, variables)
        if self._raw is not None:
            assert isinstance(self._raw, jinja2.Template)
            return _crlf(_render(self._raw, vars_).encode("utf-8"))
        return self._render_built(address, name, vars_, message_id)

    def _text_of(self, part: jinja2.Template | str | None, vars_: dict[str, Any]) -> str | None:
        if part is None or isinstance(part, str):
            return part
        return _render(part, vars_)

    def _render_built(self, address: str, name: str | None, vars_: dict[str, Any], message_id: str) -> bytes:
        subject = self._text_of(self._subject, vars_) or ""
        head = [self._static_headers, fold_header("To", formataddr((name, address)) if name else address),
                fold_header("Subject", subject), f"Message-ID: <{message_id}>\r\n"]
        head.extend(fold_header(hname, self._text_of(hvalue, vars_) or "") for hname, hvalue in self._headers)
        parts = []
        for ctype, tmpl in (("text/plain", self._text), ("text/html", self._html)):
            text = self._text_of(tmpl, vars_)
            if text is not None:
                data, cte = _encode_part(text)
                parts.append((ctype, data, cte))
        if len(parts) == 1:
            ctype, data, cte = parts[0]
            head.append(f"Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n")
            return "".join(head).encode("utf-8") + data
        b = self._boundary
        head.append(f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n')
        out = ["".join(head).encode("utf-8")]
        for ctype, data, cte in parts:
            out.append(f"--{b}\r\nContent-Type: {ctype}; charset=utf-8\r\n"
                       f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode("ascii"))
            out.append(data)
            if not data.endswith(b"\r\n"):
                out.append(b"\r\n")
        out.append(f"--{b}--\r\n".encode("ascii"))
        return b"".join(out)
