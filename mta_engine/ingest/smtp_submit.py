"""The SMTP submission listener (RFC 6409) in front of the group committer, built on aiosmtpd.

Contract: faces submitting clients on the network, inside the ingest process's event loop. It
answers ``250 2.0.0 Ok: queued as <queue id>`` only after ``GroupCommitter.submit`` returned, i.e.
after the synced commit holding the message (commits are shared across sessions); a failed
commit answers ``451 4.3.0`` and the client keeps the message. It never relays for a client that
is neither authenticated nor inside ``trusted_networks`` (``530 5.7.0``). Each credential is
bound to a tenant (and optionally a campaign); unauthenticated trusted clients have no tenant.
The campaign comes from the credential, else from an ``X-Campaign`` header, which is kept in
the message. Messages are stored raw (``{"raw": text, "template": False}``): SMTP submissions
are never rendered as templates. Never decides delivery; never talks to the manager or workers.

Extensions: SIZE (RFC 1870), PIPELINING (RFC 2920), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531),
ENHANCEDSTATUSCODES (RFC 2034; added to every aiosmtpd stock reply that lacks one), DSN (RFC
3461: RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT are stored with the message), STARTTLS (RFC
3207) when a certificate is configured, AUTH PLAIN/LOGIN (RFC 4954; only over TLS unless
``auth_require_tls = false``).

Limits: 8-bit content must be UTF-8 (the spool stores message text; other charsets must use a
7-bit transfer encoding), else ``554 5.6.0``; lines over 998 octets or a missing header section
or From: get ``550 5.6.0`` (the same checks as the JSON API). Adds a ``Received:`` field (RFC
5321 §4.4) and, when missing, ``Date:`` and ``Message-ID:`` (RFC 6409 §8.2-8.3).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Awaitable, Mapping

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from ..errors import ConfigError
from ..spool import records
from .listener import DrainingListener
from .bsmtp import (EnvelopeRefused, MailCommand, RcptCommand, campaign_problem, header_value, message_problem,
                    parse_mail, parse_rcpt, submission_for)

__all__ = ["Credential", "SubmissionConfig", "SubmissionListener", "TrustedNetworks", "credentials_from_config",
           "enhance_reply", "prepare_message", "received_header", "start_submission"]

log = structlog.get_logger("ingest.smtp")

MAX_RECIPIENTS_PER_TRANSACTION = 1000  # RFC 5321 §4.5.3.1.8 asks for at least 100
COMMAND_LINE_OCTETS = 512  # RFC 5321 §4.5.3.1.4
MAIL_LINE_OCTETS = COMMAND_LINE_OCTETS + 26 + 10 + 14 + 100 + 500
"""+26 SIZE (RFC 1870 §3), +10 SMTPUTF8 (RFC 6531 §3.4), +14 BODY=8BITMIME, +100 RET/ENVID
(RFC 3461 §5), +500 AUTH= (RFC 4954 §5)."""
RCPT_LINE_OCTETS = COMMAND_LINE_OCTETS + 500  # NOTIFY/ORCPT, RFC 3461 §5
SESSION_IDLE_TIMEOUT_S = 300.0  # RFC 5321 §4.5.3.2.7: server timeout of 5 minutes
COMMAND_CALL_LIMITS = {"AUTH": 5, "STARTTLS": 2, "EHLO": 10, "HELO": 10, "*": 10_000_000}
"""Per-session budgets (aiosmtpd's ``command_call_limit``): bounds password guessing per
connection; MAIL/RCPT/DATA are effectively unlimited so long-lived sessions keep working."""


from ..config import SubmissionConfig, _user_problems  # noqa: E402  (kept in config.py: no aiosmtpd there)


@dataclass(frozen=True, slots=True)
class Credential:
    """One AUTH identity and what it binds: the tenant and optionally the campaign."""

    username: str
    tenant: str
    campaign: str | None
    password_sha256: bytes = field(repr=False)


def credentials_from_config(users: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Credential]:
    """Build the credential table; ``password_env`` is read from ``environ``. Raises ConfigError."""
    table: dict[str, Credential] = {}
    for name, entry in users.items():
        bad = _user_problems(entry)
        if bad:
            raise ConfigError(f"submission.users.{name}: {bad[0][0] or 'entry'}: {bad[0][1]}")
        if "password_env" in entry:
            clear = environ.get(entry["password_env"])
            if not clear:
                raise ConfigError(f"submission.users.{name}.password_env: ${entry['password_env']} is not set")
            digest = hashlib.sha256(clear.encode("utf-8")).digest()
        else:
            digest = bytes.fromhex(entry["password_sha256"])
        table[name] = Credential(name, entry["tenant"], entry.get("campaign"), digest)
    return table


_NO_SUCH_USER = hashlib.sha256(b"\x00no such user").digest()


def check_password(table: Mapping[str, Credential], username: bytes, password: bytes) -> Credential | None:
    """The credential when ``password`` matches ``username``'s, else None (constant-time compare)."""
    cred = table.get(username.decode("utf-8", "replace"))
    given = hashlib.sha256(password).digest()
    ok = hmac.compare_digest(given, cred.password_sha256 if cred else _NO_SUCH_USER)
    return cred if ok and cred is not None else None


class TrustedNetworks:
    """The client networks that may submit without AUTH."""

    def __init__(self, networks: list[str]) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]

    def __repr__(self) -> str:
        return f"<TrustedNetworks {', '.join(map(str, self.networks)) or 'none'}>"

    def __contains__(self, ip: object) -> bool:
        try:
            addr = ipaddress.ip_address(str(ip).split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


# --- replies and message preparation (pure) -------------------------------------------------------

_DEFAULT_ENHANCED = {421: "4.4.2", 500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
                     530: "5.7.0", 552: "5.3.4", 555: "5.5.4"}


def enhance_reply(line: str) -> str:
    """Add an RFC 3463 code to a 2xx/4xx/5xx reply line that has none (RFC 2034 §3)."""
    if len(line) < 4 or line[0] not in "245" or not line[:3].isdigit() or line[3] not in " -":
        return line
    rest = line[4:]
    head = rest.split(" ", 1)[0]
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and head[0] == line[0]:
        return line
    code = int(line[:3])
    enhanced = _DEFAULT_ENHANCED.get(code, f"{line[0]}.0.0")
    return f"{line[:4]}{enhanced} {rest}" if rest else f"{line[:4]}{enhanced}"


def received_header(*, helo: str, peer_ip: str, hostname: str, protocol: str, now_s: float) -> str:
    """A ``Received:`` trace field (RFC 5321 §4.4; ``with`` per RFC 3848), folded, without CRLF."""
    helo = "".join(c for c in helo if c.isprintable() and c not in "()\\")[:255] or "unknown"
    return (f"Received: from {helo} ([{peer_ip}])\r\n\tby {hostname} (mta-engine) with {protocol};\r\n"
            f"\t{formatdate(now_s, localtime=False)}")


def _has_header(head: str, name: str) -> bool:
    want = name.lower() + ":"
    return any(line.lower().startswith(want) for line in head.split("\n"))


def prepare_message(content: bytes, *, trace: str, now_s: float, message_id: str) -> tuple[str, str | None]:
    """Validate received DATA and return (text to store, X-Campaign value or None).

    Raises ``EnvelopeRefused`` with the reply to send when the message cannot be queued.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeRefused(554, "5.6.0", "8-bit content must be UTF-8 here; use a 7-bit "
                              "Content-Transfer-Encoding for other charsets") from None
    why = message_problem(text)
    if why:
        raise EnvelopeRefused(550, "5.6.0", f"message refused: {why}")
    campaign = header_value(text, "X-Campaign")
    if campaign is not None and (why := campaign_problem(campaign)):
        raise EnvelopeRefused(550, "5.6.0", f"X-Campaign header {why}")
    head = text.replace("\r\n", "\n").partition("\n\n")[0]
    added = [trace]
    if not _has_header(head, "Date"):  # RFC 6409 §8.2
        added.append(f"Date: {formatdate(now_s, localtime=False)}")
    if not _has_header(head, "Message-ID"):  # RFC 6409 §8.3
        added.append(f"Message-ID: <{message_id}>")
    return "\r\n".join(added) + "\r\n" + text, campaign


# --- the aiosmtpd adapter -------------------------------------------------------------------------

class _Transaction(Envelope):  # type: ignore[misc]
    """aiosmtpd's envelope plus our parsed MAIL and RCPT values."""

    def __init__(self) -> None:
        super().__init__()
        self.mail: MailCommand | None = None
        self.rcpts: list[RcptCommand] = []


class EnhancedCodesSession(SMTP):  # type: ignore[misc]
    """aiosmtpd's protocol engine with an RFC 3463 code on every reply but the greeting and the
    EHLO/HELO replies (RFC 2034 §3); the base of the submission and inbound sessions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._greeted = False
        self._raw_replies = False

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and self._greeted and not self._raw_replies:
            status = enhance_reply(status)
        self._greeted = True  # RFC 2034 §3: no enhanced code on the greeting or EHLO/HELO replies
        await super().push(status)

    async def _without_codes(self, command: Awaitable[None]) -> None:
        self._raw_replies = True
        try:
            await command
        finally:
            self._raw_replies = False

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._without_codes(super().smtp_EHLO(hostname))

    async def smtp_HELO(self, hostname: str) -> None:
        await self._without_codes(super().smtp_HELO(hostname))


class SubmissionSession(EnhancedCodesSession):
    """One client connection: aiosmtpd's protocol engine with our MAIL/RCPT parsing and policy."""

    # Bounds one DATA line in memory (and the reader's buffer); RFC 5322's 998-octet limit is
    # enforced on the whole message afterwards, with a reason, instead of aiosmtpd's bare 500.
    line_length_limit = 64 * 1024

    def __init__(self, listener: "SubmissionListener", **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self.listener = listener
        self.command_size_limits = self._command_limits()
        listener.sessions.add(self)

    def __repr__(self) -> str:
        peer = self.session.peer if self.session else None
        auth = getattr(self.session.auth_data, "username", None) if self.session else None
        return f"<SubmissionSession peer={peer} tls={self._tls_protocol is not None} user={auth}>"

    @staticmethod
    def _command_limits() -> collections.defaultdict[str, int]:
        return collections.defaultdict(lambda: COMMAND_LINE_OCTETS, MAIL=MAIL_LINE_OCTETS, RCPT=RCPT_LINE_OCTETS)

    def _create_envelope(self) -> _Transaction:
        return _Transaction()

    async def smtp_EHLO(self, hostname: str) -> None:
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self.command_size_limits = self._command_limits()  # aiosmtpd grows them on every EHLO

    async def check_auth_needed(self, caller_method: str) -> bool:
        assert self.session is not None
        if self.session.authenticated or self.listener.may_submit_unauthenticated(self.session.peer):
            return False
        await self.push("530 5.7.0 Authentication required")
        return True

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        envelope: _Transaction = self.envelope
        if envelope.mail is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        try:
            mail = parse_mail(arg or "", max_size_bytes=self.data_size_limit)
        except EnvelopeRefused as exc:
            await self.push(exc.reply)
            return
        envelope.mail, envelope.mail_from, envelope.smtp_utf8 = mail, mail.sender, mail.smtputf8
        await self.push("250 2.1.0 Sender ok")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        envelope: _Transaction = self.envelope
        if envelope.mail is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if len(envelope.rcpts) >= MAX_RECIPIENTS_PER_TRANSACTION:
            await self.push("452 4.5.3 Too many recipients (RFC 5321 §4.5.3.1.10)")
            return
        try:
            rcpt = parse_rcpt(arg or "", smtputf8=envelope.mail.smtputf8)
        except EnvelopeRefused as exc:
            await self.push(exc.reply)
            return
        envelope.rcpts.append(rcpt)
        envelope.rcpt_tos.append(rcpt.address)
        await self.push("250 2.1.5 Recipient ok")


class SubmissionListener(DrainingListener):
    """The listening socket, the shared policy and the aiosmtpd handler hooks for every session."""

    kind = "submission"

    def __init__(self, committer: Any, cfg: SubmissionConfig, *, credentials: dict[str, Credential],
                 hostname: str, tls_context: ssl.SSLContext | None) -> None:
        super().__init__()
        self.committer = committer
        self.cfg = cfg
        self.credentials = credentials
        self.trusted = TrustedNetworks(cfg.trusted_networks)
        self.hostname = hostname
        self.tls_context = tls_context
        self.queued = 0
        self.refused = 0

    def __repr__(self) -> str:
        return (f"<SubmissionListener {self.address} sessions={len(self.sessions)} queued={self.queued} "
                f"refused={self.refused} inflight={self._inflight}>")

    def may_submit_unauthenticated(self, peer: Any) -> bool:
        if self.cfg.require_auth:
            return False
        return bool(peer) and peer[0] in self.trusted

    def session(self) -> SubmissionSession:
        """The protocol factory: one aiosmtpd session per accepted connection."""
        return SubmissionSession(
            self, data_size_limit=self.cfg.max_message_bytes, enable_SMTPUTF8=True, decode_data=False,
            hostname=self.hostname, ident="mta-engine ESMTP submission", tls_context=self.tls_context,
            timeout=SESSION_IDLE_TIMEOUT_S, auth_require_tls=self.cfg.auth_require_tls,
            authenticator=self.authenticate, command_call_limit=COMMAND_CALL_LIMITS,
            loop=asyncio.get_running_loop())

    # aiosmtpd hooks

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        cred = check_password(self.credentials, auth_data.login, auth_data.password)
        if cred is None:
            log.warning("submission_auth_failed", user=auth_data.login.decode("utf-8", "replace")[:64],
                        ip=session.peer[0] if session.peer else None, mechanism=mechanism)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=cred)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        lines = [r[4:] for r in responses[1:] if r[4:] != "HELP"]
        if not self.credentials:
            lines = [x for x in lines if not x.startswith("AUTH")]  # nobody could log in
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES", "DSN"]
        return [responses[0]] + [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: _Transaction) -> str:
        assert envelope.mail is not None
        now_s = time.time()
        tls = session.ssl is not None
        cred: Credential | None = session.auth_data if session.authenticated else None
        protocol = "ESMTP" + ("S" if tls else "") + ("A" if cred else "")  # RFC 3848
        peer_ip = session.peer[0] if session.peer else "unknown"
        trace = received_header(helo=session.host_name or "", peer_ip=peer_ip, hostname=self.hostname,
                                protocol=protocol, now_s=now_s)
        try:
            text, campaign = prepare_message(envelope.original_content, trace=trace, now_s=now_s,
                                             message_id=f"{secrets.token_hex(12)}@{self.hostname}")
        except EnvelopeRefused as exc:
            self.refused += 1
            return exc.reply
        sub = submission_for(envelope.mail, envelope.rcpts, text)
        sub.tenant = cred.tenant if cred else None
        sub.campaign = (cred.campaign if cred and cred.campaign else None) or campaign
        try:
            with self.in_flight():
                msg_id = await self.committer.submit(sub)
        except Exception as exc:  # any commit failure: nothing of this message was committed
            log.error("submission_commit_failed", error=str(exc), ip=peer_ip)
            return "451 4.3.0 Local error: message not queued, try again later"
        if msg_id is None:  # every recipient is on the tenant's suppression list
            return "550 5.7.1 Recipients are on the suppression list: " + "; ".join(sub.errors)[:400]
        self.queued += 1
        if sub.failed:
            log.info("submission_recipients_suppressed", count=len(sub.failed), ip=peer_ip)
        return f"250 2.0.0 Ok: queued as {records.queue_id(msg_id)}"



def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no client certificates asked
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def start_submission(committer: Any, cfg: SubmissionConfig, loop: asyncio.AbstractEventLoop | None = None,
                           *, hostname: str | None = None,
                           environ: Mapping[str, str] | None = None) -> SubmissionListener:
    """Listen on ``cfg.listen`` in the running loop; returns the listener (``await .close()``).

    Raises ``ConfigError`` for an unusable section (including ``listen = ""``: check it first).
    """
    loop = loop or asyncio.get_running_loop()
    problems = cfg.problems()
    if not cfg.listen:
        problems.insert(0, ("listen", 'is "" (disabled)'))
    if problems:
        raise ConfigError("; ".join(f"submission.{k}: {why}" for k, why in problems))
    credentials = credentials_from_config(cfg.users, os.environ if environ is None else environ)
    try:
        tls = server_tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"submission.tls_cert: cannot load {cfg.tls_cert} / {cfg.tls_key}: {exc}") from exc
    # Resolved once: aiosmtpd would call socket.getfqdn() (a DNS lookup) per connection.
    listener = SubmissionListener(committer, cfg, credentials=credentials, hostname=hostname or socket.getfqdn(),
                                  tls_context=tls)
    await listener.listen(cfg.listen, loop)
    log.info("submission_listening", listen=cfg.listen, tls=tls is not None, users=len(credentials))
    return listener
