"""``SmtpSession``: the asyncio driver around the sans-IO ``ClientConnection``.

Contract: opens one TCP connection to one MX address, reads the greeting, says EHLO (HELO on
500/502), and runs transactions (MAIL, RCPT..., DATA, payload) with the per-phase timeouts of
RFC 5321 §4.5.3.2. It never decides a message's fate and never raises for an SMTP rejection:
rejections are ``Reply`` values in ``TransactionResult``. OS errors and timeouts are translated
once, here, into ``mta_engine.errors`` types (``raise ... from exc``). During a transaction,
network errors, timeouts, 421 and ``RemoteProtocolError`` are reported in
``TransactionResult.error`` and leave the session unusable. Trust level: talks to untrusted
servers; never reads the spool or scheduler state. Uses plain asyncio (no uvloop import) with
an ``asyncio.Protocol``, one ``transport.write`` per pipelined group, futures not polling.

TLS (``delivery/tls.py``): implicit TLS from the first byte (RFC 8314 §3.3) or STARTTLS when
advertised (RFC 3207), via ``loop.start_tls``; after the handshake the EHLO capabilities are
forgotten and EHLO is sent again (§4.2). A 454 keeps an opportunistic session in plaintext on
the same connection; a failed opportunistic handshake is retried once in plaintext on a new
connection when ``open(tls_fallback=True)`` (the default); required/verify raise
``TlsNegotiationError``; so does a DANE policy whose TLSA records do not match the server's
chain, checked right after the handshake, before EHLO is sent again (RFC 7672 §3,
``delivery/dane.py``). Transactions given a ``PreparedMessage`` use SIZE, 8BITMIME, SMTPUTF8
and CHUNKING as ``smtp/transaction.py`` plans them; a refusal made locally never touches the wire.

Pipelining across transactions (``run_transactions``, STANDARDS X01/X02, T01, D07): with
PIPELINING, consecutive transactions share round trips. DATA: after each 354 one write carries
the content, the final dot and the next ``MAIL RCPT... DATA`` (RFC 2920 §3.1: content may be the
first "command" of a group), so one round trip per message. CHUNKING: each single-chunk message
is one ``[RSET] MAIL RCPT... BDAT n LAST`` group and the next group goes out before the previous
replies are read (RFC 3030 §4.2). At most ``MAX_UNANSWERED`` (2) transactions await their final
reply. Replies are matched in order; each applies to its own transaction. After a dot's reply no
RSET (§4.1.1.4); RSET after a refused DATA, and before any group that follows an unanswered BDAT
LAST (a failed BDAT leaves the state undefined, RFC 3030 §2). A session failure leaves the
transaction being answered as ``transaction`` would (a lost connection after its dot: UNKNOWN),
the ones already written "not attempted" (no reply), or UNKNOWN when their BDAT LAST had gone out.
Multi-chunk messages go alone; LMTP and servers without PIPELINING run one by one.

LMTP (RFC 2033): ``open(..., lmtp=True)`` returns an ``LmtpSession`` (LHLO, per-recipient replies
after the data in ``TransactionResult.data_rcpts``), over TCP or a unix socket (``unix=True``).
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections import deque
from collections.abc import Iterator, Sequence
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from mta_engine.errors import (
    ConnectError,
    ConnectTimeout,
    DataTimeout,
    DeliveryTimeout,
    LocalProtocolError,
    MtaError,
    NetworkError,
    RemoteProtocolError,
    ReplyTimeout,
)
from mta_engine.delivery._protocol import _SmtpProtocol
from mta_engine.delivery.dane import match_chain
from mta_engine.delivery.tls import TlsNegotiationError, TlsPolicy, peer_chain, tls_info
from mta_engine.smtp._state import State
from mta_engine.smtp.body import PreparedMessage
from mta_engine.smtp.connection import ClientConnection, LmtpConnection
from mta_engine.smtp.events import (
    NEED_DATA,
    AuthLogin,
    AuthPlain,
    AuthResponse,
    Bdat,
    BdatLast,
    Command,
    Data,
    Ehlo,
    Helo,
    Lhlo,
    Payload,
    Quit,
    Replied,
    Rset,
    StartTls,
)
from mta_engine.smtp.reply import Reply
from mta_engine.smtp.transaction import DsnParams, TransactionPlan, plan_legacy, plan_transaction

__all__ = [
    "AuthRefused",
    "LmtpSession",
    "ServerClosingError",
    "SessionRefused",
    "SmtpSession",
    "SmtpTimeouts",
    "TlsNegotiationError",
    "TlsPolicy",
    "TransactionItem",
    "TransactionResult",
]

_PIPELINING = "PIPELINING"  # RFC 2920 §3
_STARTTLS = "STARTTLS"  # RFC 3207 §4
_AUTH = "AUTH"  # RFC 4954 §3: EHLO keyword, parameters = SASL mechanisms
_CLOSING = 421  # RFC 5321 §3.8: the server is closing the channel
_ABORT_DATA = Payload(b".\r\n")  # RFC 2920 §3.1: 354 but no recipient accepted → lone dot
_AUTH_CANCEL = AuthResponse("*")  # RFC 4954 §4: "*" cancels an AUTH exchange; the server answers 501
_CHUNKING = "CHUNKING"  # RFC 3030 §2
# Command-mode states from which the next transaction's leading RSET is legal (§4.1.1.5).
_REUSABLE = frozenset({State.READY, State.MAIL_SENT, State.RCPT_SENT})
# ``run_transactions``: at most this many transactions whose final reply is outstanding at once, which
# bounds how many messages end UNKNOWN when the connection dies (RFC 5321 §6.1).
MAX_UNANSWERED = 2

# One transaction for ``SmtpSession.run_transactions``: sender, recipients, message, DSN parameters.
TransactionItem = tuple[str, Sequence[str], "PreparedMessage | bytes", "DsnParams | None"]


@dataclass(frozen=True, slots=True)
class SmtpTimeouts:
    """Per-phase SMTP timeouts in seconds; defaults are RFC 5321 §4.5.3.2 minimums."""

    connect_s: float = 30.0  # TCP connect (not in §4.5.3.2; operational default)
    greeting_s: float = 300.0  # §4.5.3.2.1 initial 220 message: 5 minutes
    ehlo_s: float = 300.0  # EHLO/HELO reply (treated like MAIL, §4.5.3.2.2)
    mail_s: float = 300.0  # §4.5.3.2.2 MAIL command: 5 minutes
    rcpt_s: float = 300.0  # §4.5.3.2.3 RCPT command: 5 minutes
    data_s: float = 120.0  # §4.5.3.2.4 DATA initiation (354): 2 minutes
    block_s: float = 180.0  # §4.5.3.2.5 each data block: 3 minutes
    final_s: float = 600.0  # §4.5.3.2.6 DATA termination (reply to the final dot): 10 minutes
    quit_s: float = 10.0  # 221 after QUIT (operational; §4.1.1.10 gives none)
    tls_s: float = 60.0  # TLS handshake (operational; RFC 3207 gives none)


class SessionRefused(MtaError):
    """The greeting or EHLO/HELO was not 2xx (STANDARDS S01, S03); ``phase`` says which."""

    def __init__(self, reply: Reply, phase: str) -> None:
        super().__init__(f"{phase} refused: {reply}")
        self.reply = reply
        self.phase = phase


class AuthRefused(SessionRefused):
    """AUTH could not be done safely (no TLS, no usable mechanism) or was rejected (535...).

    ``phase`` is "auth". ``reply`` is the server's reply, or a local one (530 5.7.0 / 504 5.5.4)
    when nothing was sent. The message never contains the credentials.
    """


class ServerClosingError(NetworkError):
    """The server answered 421 and is closing the connection (RFC 5321 §3.8)."""

    def __init__(self, reply: Reply, phase: str) -> None:
        super().__init__(f"server closing during {phase}: {reply}")
        self.reply = reply
        self.phase = phase


@dataclass(slots=True)
class TransactionResult:
    """Replies of one transaction; ``None`` = not answered. ``phase`` = last phase reached.

    ``local`` is True when nothing was sent: ``mail`` then holds a reply made here (SIZE 552
    5.3.4, 8BITMIME 554 5.6.3, SMTPUTF8 553 5.6.7) that applies to every recipient.
    ``local_rcpts`` lists the recipients whose ``rcpts`` reply was made here (553 5.6.7).

    ``data_rcpts`` is None for SMTP. For LMTP (RFC 2033 §4.2) it is aligned with ``rcpts`` and,
    once the data was sent (``phase`` "payload"), holds each accepted recipient's own reply to it;
    None = not accepted at RCPT, or not answered (connection lost: outcome unknown). ``data`` is
    then the first of those replies (or the 421 that ended them).
    """

    mail: Reply | None
    rcpts: list[Reply | None]
    data: Reply | None
    error: Exception | None
    phase: str  # "mail" | "rcpt" | "data" | "payload" (payload = the final dot/BDAT LAST was sent)
    local: bool = False
    local_rcpts: tuple[int, ...] = ()
    data_rcpts: list[Reply | None] | None = None


def _accepted(result: TransactionResult) -> bool:
    """True if MAIL and at least one RCPT were accepted (T05, RFC 2920 §3.1)."""
    mail = result.mail
    return mail is not None and mail.is_success and any(r is not None and r.is_success for r in result.rcpts)


class _Tx:
    """One transaction of a ``run_transactions`` batch: its plan, its result and what went out."""

    __slots__ = ("plan", "result", "reset", "content_sent")

    def __init__(self, plan: TransactionPlan, result: TransactionResult) -> None:
        self.plan = plan
        self.result = result
        self.reset = False  # its group starts with RSET
        self.content_sent = False  # its BDAT LAST (with the content) was written before any reply


def _single_chunk(plan: TransactionPlan) -> bool:
    """True if the body is one BDAT LAST, which may go in the same group as MAIL and RCPT."""
    return isinstance(plan.body, tuple) and len(plan.body) == 1


def _fail_unanswered(inflight: deque[_Tx], exc: Exception) -> None:
    """The session failed with ``inflight`` (oldest first) written but not all answered.

    The oldest was being answered: it fails as a lone transaction would. The others got no reply:
    "not attempted" (``mail`` None, phase "mail") after a 421 or when their content never went
    out; with their BDAT LAST already written and no 421, phase "payload": UNKNOWN (outcome.py).
    """
    closing = isinstance(exc, ServerClosingError)
    for n, tx in enumerate(inflight):
        result = tx.result
        if n == 0:
            if isinstance(exc, ServerClosingError):
                _record_closing(result, exc)
                if result.mail is None:
                    result.phase = "mail"  # the 421 answered its RSET: nothing of it was taken
            result.error = exc
        elif tx.content_sent and not closing:
            result.error = exc
        else:
            result.phase = "mail"
            result.error = NetworkError(f"not attempted: the session ended before this pipelined transaction "
                                        f"was answered ({type(exc).__name__}: {exc})")
            result.error.__cause__ = exc


def _ended_clean(result: TransactionResult) -> bool:
    """True if the transaction ended with a 2xx to its BDAT LAST (or dot): no RSET is needed."""
    data = result.data
    return result.phase == "payload" and data is not None and data.is_success


def _record_closing(result: TransactionResult, exc: ServerClosingError) -> None:
    """Store a 421 reply in the slot of the command it answered (R08: the rest stay None)."""
    if exc.phase == "mail":
        result.mail = exc.reply
    elif exc.phase == "rcpt":
        result.rcpts[result.rcpts.index(None)] = exc.reply
    elif exc.phase in ("data", "payload"):
        result.data = exc.reply


class SmtpSession:
    """One SMTP connection to one MX address; reusable for several transactions."""

    __slots__ = (
        "_conn",
        "_proto",
        "_transport",
        "_timeouts",
        "_usable",
        "_closed",
        "transactions",
        "created_at",
        "last_used",
        "peer",
        "mx_name",
        "tls_info",
        "tls_fallback_reason",
        "_tls",
        "_chunking",
        "_loop",
    )
    _CONNECTION: type[ClientConnection] = ClientConnection  # LmtpSession: LmtpConnection
    _BATCHES = True  # ``run_transactions`` pipelines across transactions (LmtpSession: one by one)

    def __init__(
        self,
        conn: ClientConnection,
        proto: _SmtpProtocol,
        transport: asyncio.Transport,
        timeouts: SmtpTimeouts,
        *,
        peer: str,
        mx_name: str,
        tls: TlsPolicy = TlsPolicy(),
        chunking: bool = False,
    ) -> None:
        """Wrap an established connection; use ``SmtpSession.open`` instead."""
        self._conn = conn
        self._proto = proto
        self._transport = transport
        self._timeouts = timeouts
        self._usable = True
        self._closed = False
        self.transactions = 0
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.peer = peer
        self.mx_name = mx_name
        # {"version", "cipher", "verified", "peer_cn"} once TLS is up, else None (accounting log).
        self.tls_info: dict[str, Any] | None = None
        # Why an opportunistic session ended up in plaintext (454, failed handshake), else None.
        self.tls_fallback_reason: str | None = None
        self._tls = tls
        self._chunking = chunking
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return (
            f"<SmtpSession peer={self.peer} mx={self.mx_name or '-'} state={self._conn.state.name} "
            f"transactions={self.transactions} usable={self.usable}"
            f"{' tls=' + str(self.tls_info['version']) if self.tls_info else ''}>"
        )

    @property
    def usable(self) -> bool:
        """True if another transaction may run on this session now."""
        return (
            self._usable
            and not self._closed
            and not self._proto.lost
            and self._conn.state in _REUSABLE
            and not self._conn.pending
        )

    @property
    def extensions(self) -> dict[str, str]:
        """EHLO keywords (upper-cased) → parameters, from the last EHLO reply."""
        return self._conn.extensions

    @property
    def state(self) -> State:
        """The protocol state of the underlying ``ClientConnection``."""
        return self._conn.state

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ehlo_name: str,
        timeouts: SmtpTimeouts,
        source_ip: str | None = None,
        mx_name: str = "",
        tls: TlsPolicy = TlsPolicy(),
        tls_fallback: bool = True,
        chunking: bool = False,
        auth: tuple[str, str] | None = None,
        auth_without_tls: bool = False,
        lmtp: bool = False,
        unix: bool = False,
    ) -> SmtpSession:
        """Connect, read the greeting, say EHLO (HELO after 500/502), STARTTLS per ``tls``.

        ``lmtp``: speak LMTP (RFC 2033) and return an ``LmtpSession``: LHLO instead of EHLO, with
        no HELO fallback (any LHLO refusal is ``SessionRefused``, phase "lhlo"). ``unix``: ``host``
        is the path of a unix-domain socket (``port`` and ``source_ip`` are not used).

        ``auth`` = (username, password): after EHLO (after STARTTLS and the second EHLO when TLS
        is used), authenticate with PLAIN if advertised, else LOGIN (RFC 4954, RFC 4616). Without
        TLS the credentials are never sent unless ``auth_without_tls`` (STANDARDS X10): the
        session is refused with ``AuthRefused`` (phase "auth") before any AUTH command; a 535 or
        other non-235 reply also raises ``AuthRefused``. The opportunistic plaintext retry is
        never used when ``auth`` needs TLS.

        Raises ``ConnectError``/``ConnectTimeout`` (connect or greeting), ``ReplyTimeout``
        (EHLO/HELO/STARTTLS), ``NetworkError`` (closed early), ``RemoteProtocolError``,
        ``SessionRefused`` (non-2xx greeting or EHLO/HELO; QUIT is sent first when allowed) or
        ``TlsNegotiationError`` (TLS required but not advertised, refused or failed; or an
        opportunistic handshake failed and ``tls_fallback`` is False). With ``tls_fallback``
        an opportunistic handshake failure is retried once in plaintext on a new connection
        and ``tls_fallback_reason`` says why. ``chunking`` allows BDAT when advertised.
        """
        args = (host, port, ehlo_name, timeouts, source_ip, mx_name, chunking, auth, auth_without_tls, unix)
        kind = LmtpSession if lmtp else cls
        try:
            return await kind._open_once(*args, tls)
        except TlsNegotiationError as exc:
            if not (exc.fallback_ok and tls_fallback) or (auth is not None and not auth_without_tls):
                raise
            # RFC 3207 §4 / STANDARDS L01: opportunistic TLS never blocks delivery; one retry.
            session = await kind._open_once(*args, TlsPolicy("none"))
            session.tls_fallback_reason = f"TLS handshake failed: {exc}"
            return session

    @classmethod
    async def _open_once(
        cls,
        host: str,
        port: int,
        ehlo_name: str,
        timeouts: SmtpTimeouts,
        source_ip: str | None,
        mx_name: str,
        chunking: bool,
        auth: tuple[str, str] | None,
        auth_without_tls: bool,
        unix: bool,
        tls: TlsPolicy,
    ) -> SmtpSession:
        loop = asyncio.get_running_loop()
        conn = cls._CONNECTION()
        proto = _SmtpProtocol(conn, loop)
        local_addr = (source_ip, 0) if source_ip else None
        where = host if unix else f"{host}:{port}"
        try:
            async with asyncio.timeout(timeouts.connect_s):
                if unix:
                    transport, _ = await loop.create_unix_connection(lambda: proto, host)
                else:
                    transport, _ = await loop.create_connection(lambda: proto, host, port, local_addr=local_addr)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connect to {where} timed out after {timeouts.connect_s}s") from exc
        except OSError as exc:
            raise ConnectError(f"connect to {where} failed: {exc}") from exc
        peername = None if unix else transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else host
        session = cls(conn, proto, transport, timeouts, peer=peer, mx_name=mx_name, tls=tls, chunking=chunking)
        try:
            if tls.implicit:
                await session._start_tls()  # RFC 8314 §3.3: the handshake comes before the greeting
            await session._greet(ehlo_name)
            if auth is not None:
                await session._auth(auth, auth_without_tls)
        except BaseException:
            session.abort()
            raise
        return session

    async def _greet(self, ehlo_name: str) -> None:
        phase = "greeting"
        try:
            reply = await self._reply(self._timeouts.greeting_s, ConnectTimeout, phase)
            if reply.is_success:
                phase, reply = await self._hello(ehlo_name)
            if reply.is_success and self._tls.wants_starttls:
                phase, reply = await self._starttls(ehlo_name, reply)
        except ServerClosingError as exc:  # 421: the channel is already going away (§3.8)
            raise SessionRefused(exc.reply, exc.phase) from exc
        if not reply.is_success:
            await self._quit_best_effort()  # S01 (554 greeting), S03 (EHLO/HELO refused)
            raise SessionRefused(reply, phase)

    async def _auth(self, auth: tuple[str, str], auth_without_tls: bool) -> None:
        """RFC 4954: AUTH PLAIN (one line) if advertised, else AUTH LOGIN; raise ``AuthRefused``.

        A 334 we cannot answer is cancelled with "*" and the exchange ends in ``AuthRefused``
        with the server's reply to the cancel (501).
        """
        if self.tls_info is None and not auth_without_tls:
            # STANDARDS X10 / RFC 4954 §4: no credentials in plaintext; nothing is sent.
            await self._quit_best_effort()
            raise AuthRefused(
                Reply(530, ("5.7.0 AUTH refused locally: the session is not TLS-protected",)), "auth"
            )
        mechanisms = self._conn.extensions.get(_AUTH, "").upper().split()
        username, password = auth
        timeout_s = self._timeouts.ehlo_s
        if "PLAIN" in mechanisms:
            reply = await self._command(AuthPlain(username, password), timeout_s, ReplyTimeout, "auth")
        elif "LOGIN" in mechanisms:
            login = AuthLogin(username, password)
            reply = await self._command(login, timeout_s, ReplyTimeout, "auth")
            for response in login.responses():
                if reply.code != 334:
                    break
                reply = await self._command(response, timeout_s, ReplyTimeout, "auth")
        else:
            await self._quit_best_effort()
            raise AuthRefused(
                Reply(504, (f"5.5.4 {self._server} offers no AUTH PLAIN or LOGIN",)), "auth"
            )
        if reply.code == 334:
            # RFC 4954 §4: a challenge we have no answer for (PLAIN's initial response was not
            # taken, or LOGIN asked a third time): cancel with "*"; the server answers 501.
            self._usable = False
            reply = await self._command(_AUTH_CANCEL, timeout_s, ReplyTimeout, "auth")
            if self._conn.state is State.READY:
                await self._quit_best_effort()
            raise AuthRefused(reply, "auth")
        if reply.code != 235:
            self._usable = False
            if self._conn.state is State.READY:
                await self._quit_best_effort()
            raise AuthRefused(reply, "auth")

    async def _hello(self, ehlo_name: str) -> tuple[str, Reply]:
        """EHLO, and HELO when the table falls back after 500/502 (S02); return (phase, reply)."""
        ehlo_s = self._timeouts.ehlo_s
        reply = await self._command(Ehlo(ehlo_name), ehlo_s, ReplyTimeout, "ehlo")
        if self._conn.state is State.GREETED:
            return "helo", await self._command(Helo(ehlo_name), ehlo_s, ReplyTimeout, "helo")
        return "ehlo", reply

    async def _starttls(self, ehlo_name: str, ehlo_reply: Reply) -> tuple[str, Reply]:
        """STARTTLS when advertised (RFC 3207 §4), then EHLO again (§4.2); return (phase, reply)."""
        policy = self._tls
        if not self._conn.supports(_STARTTLS):
            if policy.requires_tls:
                await self._quit_best_effort()
                raise TlsNegotiationError(f"{self._server} does not advertise STARTTLS", fallback_ok=False)
            return "ehlo", ehlo_reply
        # STARTTLS is sent alone: it ends any pipeline group (RFC 3207 §4.2, STANDARDS X01).
        reply = await self._command(StartTls(), self._timeouts.ehlo_s, ReplyTimeout, "starttls")
        if not reply.is_success:
            if policy.requires_tls:
                await self._quit_best_effort()
                raise TlsNegotiationError(
                    f"{self._server} refused STARTTLS: {reply}", fallback_ok=False, reply=reply
                )
            self.tls_fallback_reason = f"STARTTLS refused: {reply}"
            return "ehlo", ehlo_reply  # 454: carry on in plaintext on this connection (L01)
        # ClientConnection already failed if plaintext followed the 220 (injection, L03); no await
        # separates that check from start_tls, so no later plaintext is ever parsed.
        await self._start_tls()
        return await self._hello(ehlo_name)

    @property
    def _server(self) -> str:
        return self.mx_name or self.peer

    async def _start_tls(self) -> None:
        """Run the TLS handshake on the current transport; raise ``TlsNegotiationError``."""
        policy = self._tls
        server_hostname = self.mx_name or None  # SNI; checked against the certificate in "verify"
        if policy.verifies and server_hostname is None:
            raise TlsNegotiationError("TLS mode 'verify' needs the MX name", fallback_ok=False)
        tls_s = self._timeouts.tls_s
        try:
            async with asyncio.timeout(tls_s):
                transport = await self._loop.start_tls(
                    self._transport,
                    self._proto,
                    policy.context(),
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=tls_s,
                )
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._usable = False
            kind = "certificate rejected" if isinstance(exc, ssl.SSLCertVerificationError) else "failed"
            raise TlsNegotiationError(
                f"TLS handshake with {self._server} {kind}: {exc or type(exc).__name__}",
                fallback_ok=policy.mode == "opportunistic" and not policy.implicit,
            ) from exc
        if transport is None:  # pragma: no cover - only for loops without TLS upgrade support
            raise TlsNegotiationError("the event loop cannot start TLS", fallback_ok=False)
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        dane = None
        if policy.dane:  # RFC 7672 §3: authenticate by TLSA before any mail (before EHLO again)
            names = policy.dane_names or (self.mx_name,)
            now = datetime.datetime.now(datetime.timezone.utc)
            dane = match_chain(peer_chain(ssl_object), policy.dane, names, now)
            if not dane.ok:
                self._usable = False
                raise TlsNegotiationError(f"DANE authentication of {self._server} failed: {dane.reason}",
                                          fallback_ok=False)
        self.tls_info = tls_info(ssl_object, verified=policy.verifies, dane=dane)

    async def transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        payload: bytes | PreparedMessage,
        *,
        mail_params: tuple[str, ...] = (),
        dsn: DsnParams | None = None,
    ) -> TransactionResult:
        """Run MAIL, RCPT per recipient and DATA (or BDAT); return every reply.

        ``payload`` is preferably a ``PreparedMessage``: then SIZE, 8BITMIME, SMTPUTF8 and
        CHUNKING are used as advertised, and a message the server cannot take is refused here
        (``result.local``) without opening a transaction. Bytes from ``smtp.body.data_payload``
        are still accepted and sent with DATA as they are. Raises ``LocalProtocolError`` only
        for our own misuse (unusable session, no recipients, unsendable address).
        """
        if not self.usable:
            raise LocalProtocolError(f"transaction on an unusable session {self!r}")
        result, plan = self._plan(sender, recipients, payload, mail_params, dsn)
        if plan is None:  # refused locally: nothing goes on the wire
            return result
        reset = self.transactions > 0  # T01/T09: RSET before reusing the connection
        self.transactions += 1
        try:
            if self._conn.supports(_PIPELINING):
                await self._run_pipelined(result, reset, plan)
            else:
                await self._run_lockstep(result, reset, plan)
        except (NetworkError, DeliveryTimeout, RemoteProtocolError) as exc:
            if isinstance(exc, ServerClosingError):
                _record_closing(result, exc)
            result.error = exc
            self.abort()
        except BaseException:
            self.abort()
            raise
        self.last_used = time.monotonic()
        return result

    def _plan(
        self,
        sender: str,
        recipients: Sequence[str],
        payload: bytes | PreparedMessage,
        mail_params: tuple[str, ...],
        dsn: DsnParams | None,
    ) -> tuple[TransactionResult, TransactionPlan | None]:
        """The transaction's result so far and its plan; no plan = refused locally (``result.local``)."""
        if not recipients:
            raise LocalProtocolError("a transaction needs at least one recipient")
        if isinstance(payload, PreparedMessage):
            planned = plan_transaction(
                self._conn.extensions,
                sender,
                recipients,
                payload,
                server=self._server,
                chunking=self._chunking,
                mail_params=mail_params,
                dsn=dsn,
            )
        else:
            planned = plan_legacy(sender, recipients, payload, mail_params)
        n = len(recipients)
        if isinstance(planned, Reply):
            return TransactionResult(planned, [None] * n, None, None, "mail", local=True), None
        result = TransactionResult(mail=None, rcpts=[None] * n, data=None, error=None, phase="mail")
        for index, reply in planned.refused.items():
            result.rcpts[index] = reply
        result.local_rcpts = tuple(sorted(planned.refused))
        return result, planned

    async def run_transactions(self, items: Sequence[TransactionItem]) -> list[TransactionResult]:
        """Run consecutive transactions, pipelined across transaction boundaries; one result each.

        With PIPELINING (RFC 2920 §3.1) and DATA: ``[RSET] MAIL RCPT... DATA``, then after the 354
        one write of ``content+dot, MAIL RCPT... DATA`` of the next: one round trip per message.
        With CHUNKING (RFC 3030 §4.2): ``[RSET] MAIL RCPT... BDAT n LAST`` per message, the next
        group written before the previous replies are read. At most ``MAX_UNANSWERED``
        transactions have their final reply outstanding. No RSET after a transaction ended by the
        reply to its dot or a 2xx to its BDAT LAST (§4.1.1.4); RSET when it may still be open
        (DATA refused; any group that follows an unanswered BDAT LAST, since a failed BDAT leaves
        the state undefined, RFC 3030 §2), and before the first when the session was used.

        Every reply applies to its own transaction, as with ``transaction``: a DATA not answered
        354 sends no content (D07). When the session fails (421, timeout, lost connection), the
        transaction being answered fails as it would alone; the later ones already written got no
        reply: "not attempted" (``mail`` None, ``error`` set), or, for a BDAT LAST already written
        and no 421, phase "payload" (UNKNOWN). Items never started get no result: the list may be
        shorter than ``items`` (the session is then unusable, or its RSET was refused). Local
        refusals (SIZE, 8BITMIME, SMTPUTF8) never touch the wire. Without PIPELINING, and for
        LMTP, the items run one by one through ``transaction``.
        """
        if not self.usable:
            raise LocalProtocolError(f"run_transactions on an unusable session {self!r}")
        if not (self._BATCHES and self._conn.supports(_PIPELINING)):
            return await self._one_by_one(items)
        results: list[TransactionResult] = []
        inflight: deque[_Tx] = deque()  # written, not yet fully answered, oldest first
        queue = iter(items)
        try:
            if self._chunking and self._conn.supports(_CHUNKING):
                await self._batch_bdat(queue, results, inflight)
            else:
                await self._batch_data(queue, results, inflight)
        except (NetworkError, DeliveryTimeout, RemoteProtocolError) as exc:
            _fail_unanswered(inflight, exc)
            self.abort()
        except BaseException:
            self.abort()
            raise
        self.last_used = time.monotonic()
        return results

    async def _one_by_one(self, items: Sequence[TransactionItem]) -> list[TransactionResult]:
        results: list[TransactionResult] = []
        for sender, recipients, payload, dsn in items:
            if not self.usable:
                break
            results.append(await self.transaction(sender, recipients, payload, dsn=dsn))
        return results

    def _next_tx(self, queue: Iterator[TransactionItem], results: list[TransactionResult]) -> _Tx | None:
        """The next transaction that goes on the wire (local refusals are added to ``results``)."""
        while self._usable:  # not after a refused RSET
            item = next(queue, None)
            if item is None:
                return None
            sender, recipients, payload, dsn = item
            result, plan = self._plan(sender, recipients, payload, (), dsn)
            results.append(result)
            if plan is not None:
                return _Tx(plan, result)
        return None

    def _head(self, tx: _Tx, reset: bool) -> list[Command]:
        """``[RSET] MAIL RCPT... DATA`` (or ``BDAT n LAST``) of ``tx``; counts the transaction."""
        tx.reset = reset
        self.transactions += 1
        plan = tx.plan
        group: list[Command] = [Rset()] if reset else []
        group += [plan.mail, *(rcpt for _, rcpt in plan.rcpts)]
        group.append(plan.body[0] if isinstance(plan.body, tuple) else Data())
        return group

    async def _read_head(self, tx: _Tx) -> None:
        """The replies to ``tx``'s group: RSET, MAIL, each RCPT, then DATA's (or BDAT LAST's)."""
        timeouts, result = self._timeouts, tx.result
        if tx.reset:
            self._check_rset(await self._reply(timeouts.mail_s, ReplyTimeout, "rset"))
        result.mail = await self._reply(timeouts.mail_s, ReplyTimeout, "mail")
        if not tx.content_sent:
            result.phase = "rcpt"
        for index, _ in tx.plan.rcpts:
            result.rcpts[index] = await self._reply(timeouts.rcpt_s, ReplyTimeout, "rcpt")
        if tx.content_sent:
            result.data = await self._reply(timeouts.final_s, DataTimeout, "payload")
            return
        result.phase = "data"
        result.data = await self._reply(timeouts.data_s, ReplyTimeout, "data")

    async def _batch_data(
        self, queue: Iterator[TransactionItem], results: list[TransactionResult], inflight: deque[_Tx]
    ) -> None:
        """DATA: after each 354, the content and the next transaction's group in one write."""
        timeouts = self._timeouts
        tx = self._next_tx(queue, results)
        if tx is None:
            return
        group = self._head(tx, self.transactions > 0)  # T01/T09: RSET before reusing the connection
        inflight.append(tx)
        self._write(self._conn.send_pipelined(group))
        await self._read_head(tx)
        while True:
            body: Payload | None = None
            if self._conn.state is State.DATA_READY:  # D07: content only after a 354
                assert isinstance(tx.plan.body, Payload)
                body = tx.plan.body if _accepted(tx.result) else _ABORT_DATA
            nxt = self._next_tx(queue, results)
            if body is None:  # no content: the server may still hold the transaction, so RSET
                inflight.popleft()
                if nxt is None:
                    return
                group = self._head(nxt, True)
            else:  # RFC 2920 §3.1: the content first, then the next group; the dot reply ends tx
                group = [body, *(self._head(nxt, False) if nxt is not None else ())]
            if nxt is not None:
                inflight.append(nxt)
            self._write(self._conn.send_pipelined(group))
            if body is not None:
                await self._proto.drain(timeouts.block_s)
                phase = "data" if body is _ABORT_DATA else "payload"
                tx.result.phase = phase
                tx.result.data = await self._reply(timeouts.final_s, DataTimeout, phase)
                inflight.popleft()
            if nxt is None:
                return
            tx = nxt
            await self._read_head(tx)

    async def _batch_bdat(
        self, queue: Iterator[TransactionItem], results: list[TransactionResult], inflight: deque[_Tx]
    ) -> None:
        """CHUNKING: whole single-chunk transactions, up to ``MAX_UNANSWERED`` unanswered."""
        timeouts = self._timeouts
        dirty = self.transactions > 0  # the server may hold a transaction: RSET first
        held: _Tx | None = None  # a transaction that must wait until nothing is unanswered
        while True:
            group: list[Command] = []
            new: list[_Tx] = []
            while len(inflight) + len(new) < MAX_UNANSWERED:
                tx = held if held is not None else self._next_tx(queue, results)
                held = None
                if tx is None:
                    break
                if not _single_chunk(tx.plan):  # several chunks (or DATA): alone, as ``transaction``
                    if inflight or new:
                        held = tx
                        break
                    inflight.append(tx)
                    self.transactions += 1
                    await self._run_pipelined(tx.result, dirty, tx.plan)
                    inflight.popleft()
                    dirty = not _ended_clean(tx.result)
                    continue
                group += self._head(tx, dirty or bool(inflight or new))  # after an unanswered BDAT LAST
                new.append(tx)
            if group:
                inflight.extend(new)
                self._write(self._conn.send_pipelined(group))
                for tx in new:
                    tx.content_sent = True
                    tx.result.phase = "payload"  # the content is out: from here a lost reply is UNKNOWN
                await self._proto.drain(timeouts.block_s)
            if not inflight:
                return
            tx = inflight[0]
            await self._read_head(tx)
            inflight.popleft()
            dirty = not _ended_clean(tx.result)

    async def _run_pipelined(self, result: TransactionResult, reset: bool, plan: TransactionPlan) -> None:
        """RFC 2920: one write of [RSET] MAIL RCPT... DATA (or the first BDAT), then every reply."""
        timeouts = self._timeouts
        group: list[Command] = [Rset()] if reset else []
        group += [plan.mail, *(rcpt for _, rcpt in plan.rcpts)]
        chunks = plan.body if isinstance(plan.body, tuple) else None
        group.append(chunks[0] if chunks else Data())  # RFC 3030 §4.2: BDAT may be pipelined
        self._write(self._conn.send_pipelined(group))
        if reset:
            self._check_rset(await self._reply(timeouts.mail_s, ReplyTimeout, "rset"))
        result.mail = await self._reply(timeouts.mail_s, ReplyTimeout, "mail")
        result.phase = "rcpt"
        rcpts = result.rcpts
        for index, _ in plan.rcpts:
            # the group's replies usually came in one read: take those already here without a
            # coroutine each (``_reply`` waits, with the timeout, only when one is not)
            reply = self._reply_now("rcpt")
            rcpts[index] = reply if reply is not None else await self._reply(timeouts.rcpt_s, ReplyTimeout, "rcpt")
        result.phase = "data"
        if chunks:
            await self._send_chunks(result, chunks, first_sent=True)
            return
        result.data = await self._reply(timeouts.data_s, ReplyTimeout, "data")
        assert isinstance(plan.body, Payload)
        await self._send_payload(result, plan.body if _accepted(result) else None)

    async def _run_lockstep(self, result: TransactionResult, reset: bool, plan: TransactionPlan) -> None:
        """One command, one reply (STANDARDS X03)."""
        timeouts = self._timeouts
        if reset:
            self._check_rset(await self._command(Rset(), timeouts.mail_s, ReplyTimeout, "rset"))
        result.mail = await self._command(plan.mail, timeouts.mail_s, ReplyTimeout, "mail")
        if not result.mail.is_success:
            return
        result.phase = "rcpt"
        for index, rcpt in plan.rcpts:
            result.rcpts[index] = await self._command(rcpt, timeouts.rcpt_s, ReplyTimeout, "rcpt")
        if not _accepted(result):
            return  # T05: DATA only after at least one accepted RCPT
        result.phase = "data"
        if isinstance(plan.body, tuple):
            await self._send_chunks(result, plan.body, first_sent=False)
            return
        result.data = await self._command(Data(), timeouts.data_s, ReplyTimeout, "data")
        await self._send_payload(result, plan.body)

    async def _send_chunks(
        self, result: TransactionResult, chunks: tuple[Bdat | BdatLast, ...], *, first_sent: bool
    ) -> None:
        """BDAT chunks one at a time, each reply checked (RFC 3030 §2); the last one's is final.

        Replies to non-last chunks are stored only when they fail: a 250 for a chunk is not a
        delivery (a connection lost after it must stay "not delivered").
        """
        timeouts = self._timeouts
        for i, chunk in enumerate(chunks):
            if i or not first_sent:
                self._write(self._conn.send(chunk))
            await self._proto.drain(timeouts.block_s)
            last = isinstance(chunk, BdatLast)
            if last:
                result.phase = "payload"
                result.data = await self._reply(timeouts.final_s, DataTimeout, "payload")
                return
            reply = await self._reply(timeouts.block_s, DataTimeout, "data")
            if not reply.is_success:
                result.data = reply  # RFC 3030 §2: no more chunks after a failed one
                return

    async def _send_payload(self, result: TransactionResult, body: Payload | None) -> None:
        """After a 354, send ``body`` (or the lone dot when nothing was accepted); read the reply."""
        assert result.data is not None
        if self._conn.state is not State.DATA_READY:
            return  # D07: DATA was not answered with 354, send no content
        timeouts = self._timeouts
        if body is None:
            self._write(self._conn.send(_ABORT_DATA))
            result.data = await self._reply(timeouts.final_s, DataTimeout, "data")
            return
        self._write(self._conn.send(body))
        await self._proto.drain(timeouts.block_s)
        result.phase = "payload"
        result.data = await self._reply(timeouts.final_s, DataTimeout, "payload")

    def _check_rset(self, reply: Reply) -> None:
        if not reply.is_success:
            self._usable = False  # a server that refuses RSET is not reused

    async def _command(
        self, command: Command, timeout_s: float, timeout_exc: type[DeliveryTimeout], phase: str
    ) -> Reply:
        self._write(self._conn.send(command))
        return await self._reply(timeout_s, timeout_exc, phase)

    def _write(self, data: bytes) -> None:
        if self._proto.lost:
            raise NetworkError(f"connection to {self.peer} lost") from self._proto.lost_exc
        self._transport.write(data)

    def _reply_now(self, phase: str) -> Reply | None:
        """The next reply if it has been read already, else None (nothing consumed); raises on a
        closed connection, a protocol error or a 421, as ``_reply``."""
        event = self._conn.next_event()
        if event is NEED_DATA:
            return None
        if type(event) is not Replied:
            raise NetworkError(f"connection closed by {self.peer} during {phase}") from self._proto.lost_exc
        reply = event.reply
        if reply.code == _CLOSING:
            raise ServerClosingError(reply, phase)
        return reply

    async def _reply(self, timeout_s: float, timeout_exc: type[DeliveryTimeout], phase: str) -> Reply:
        """Return the next reply; raise on timeout, EOF, protocol error, or 421."""
        reply = self._reply_now(phase)
        if reply is None:
            try:
                async with asyncio.timeout(timeout_s):
                    while reply is None:
                        await self._proto.wait_data()
                        reply = self._reply_now(phase)
            except TimeoutError as exc:
                raise timeout_exc(f"no {phase} reply from {self.peer} within {timeout_s}s") from exc
        return reply

    async def _quit_best_effort(self) -> None:
        """Send QUIT if the state table allows it and wait up to ``quit_s`` for the reply."""
        if self._proto.lost:
            return
        try:
            self._write(self._conn.send(Quit()))
            await self._reply(self._timeouts.quit_s, ReplyTimeout, "quit")
        except (MtaError, OSError):
            pass

    async def close(self) -> None:
        """Send QUIT, wait for the 221 up to ``quit_s``, close the transport; never raises."""
        if self._closed:
            return
        self._usable = False
        try:
            await self._quit_best_effort()
        except Exception:  # noqa: BLE001 - close() must never raise (T08 best effort)
            pass
        finally:
            self._closed = True
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, without QUIT."""
        self._usable = False
        self._closed = True
        self._transport.abort()


class LmtpSession(SmtpSession):
    """One LMTP session (RFC 2033), made by ``SmtpSession.open(..., lmtp=True)``.

    LHLO replaces EHLO, with no HELO fallback (§4.1). After the final dot or BDAT LAST the server
    answers once per accepted recipient, in RCPT order (§4.2): each reply goes to that recipient's
    slot in ``TransactionResult.data_rcpts``. A connection lost among them leaves the rest None
    (unknown outcome); a 421 is kept as the reply of the recipient it answered. The SMTP
    transaction path runs none of this.
    """

    __slots__ = ()
    _CONNECTION = LmtpConnection
    _BATCHES = False  # per-recipient replies after the data: ``run_transactions`` runs one by one

    async def _hello(self, ehlo_name: str) -> tuple[str, Reply]:
        return "lhlo", await self._command(Lhlo(ehlo_name), self._timeouts.ehlo_s, ReplyTimeout, "lhlo")

    async def _send_payload(self, result: TransactionResult, body: Payload | None) -> None:
        await self._per_recipient(result, super()._send_payload(result, body))

    async def _send_chunks(
        self, result: TransactionResult, chunks: tuple[Bdat | BdatLast, ...], *, first_sent: bool
    ) -> None:
        await self._per_recipient(result, super()._send_chunks(result, chunks, first_sent=first_sent))

    async def _per_recipient(self, result: TransactionResult, send: Coroutine[Any, Any, None]) -> None:
        """Run ``send`` (which reads the first reply after the data), then the other recipients' replies."""
        accepted = [n for n, r in enumerate(result.rcpts) if r is not None and r.is_success]
        replies: list[Reply | None] = [None] * len(result.rcpts)
        result.data_rcpts = replies
        n = accepted[0] if accepted else -1
        try:
            await send
            if result.phase != "payload" or not accepted:
                return  # DATA or a chunk refused, or nothing accepted: one reply for everyone
            replies[n] = result.data
            final_s = self._timeouts.final_s
            for n in accepted[1:]:
                replies[n] = await self._reply(final_s, DataTimeout, "payload")
        except ServerClosingError as exc:
            if result.phase == "payload" and n >= 0:
                replies[n] = exc.reply  # the 421 is this recipient's answer (§4.2, RFC 5321 §3.8)
            raise
