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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

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
from mta_engine.smtp._state import State
from mta_engine.smtp.connection import ClientConnection
from mta_engine.smtp.events import (
    NEED_DATA,
    Command,
    Data,
    Ehlo,
    Helo,
    MailFrom,
    Payload,
    Quit,
    RcptTo,
    Replied,
    Rset,
)
from mta_engine.smtp.reply import Reply

__all__ = [
    "ServerClosingError",
    "SessionRefused",
    "SmtpSession",
    "SmtpTimeouts",
    "TransactionResult",
]

_PIPELINING = "PIPELINING"  # RFC 2920 §3
_CLOSING = 421  # RFC 5321 §3.8: the server is closing the channel
_ABORT_DATA = Payload(b".\r\n")  # RFC 2920 §3.1: 354 but no recipient accepted → lone dot
# Command-mode states from which the next transaction's leading RSET is legal (§4.1.1.5).
_REUSABLE = frozenset({State.READY, State.MAIL_SENT, State.RCPT_SENT})


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


class SessionRefused(MtaError):
    """The greeting or EHLO/HELO was not 2xx (STANDARDS S01, S03); ``phase`` says which."""

    def __init__(self, reply: Reply, phase: str) -> None:
        super().__init__(f"{phase} refused: {reply}")
        self.reply = reply
        self.phase = phase


class ServerClosingError(NetworkError):
    """The server answered 421 and is closing the connection (RFC 5321 §3.8)."""

    def __init__(self, reply: Reply, phase: str) -> None:
        super().__init__(f"server closing during {phase}: {reply}")
        self.reply = reply
        self.phase = phase


@dataclass(slots=True)
class TransactionResult:
    """Replies of one transaction; ``None`` = not answered. ``phase`` = last phase reached."""

    mail: Reply | None
    rcpts: list[Reply | None]
    data: Reply | None
    error: Exception | None
    phase: str  # "mail" | "rcpt" | "data" | "payload" (payload = the final dot has been sent)


def _record_closing(result: TransactionResult, exc: ServerClosingError) -> None:
    """Store a 421 reply in the slot of the command it answered (R08: the rest stay None)."""
    if exc.phase == "mail":
        result.mail = exc.reply
    elif exc.phase == "rcpt":
        result.rcpts[result.rcpts.index(None)] = exc.reply
    elif exc.phase in ("data", "payload"):
        result.data = exc.reply


class _SmtpProtocol(asyncio.Protocol):
    """Feeds received bytes to the ``ClientConnection`` and wakes the one waiting coroutine."""

    def __init__(self, conn: ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.lost_exc: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._conn.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._conn.receive_data(b"")
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        self._conn.receive_data(b"")
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self) -> None:
        """Return after the next ``data_received``/EOF (immediately if the connection is gone)."""
        if self.lost:
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self, block_s: float) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        while self._paused and not self.lost:
            self._drain_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(block_s):
                    await self._drain_waiter
            except TimeoutError as exc:
                raise DataTimeout(f"data block not written within {block_s}s") from exc
            finally:
                self._drain_waiter = None
        if self.lost:
            raise NetworkError("connection lost while writing data") from self.lost_exc


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
    )

    def __init__(
        self,
        conn: ClientConnection,
        proto: _SmtpProtocol,
        transport: asyncio.Transport,
        timeouts: SmtpTimeouts,
        *,
        peer: str,
        mx_name: str,
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

    def __repr__(self) -> str:
        return (
            f"<SmtpSession peer={self.peer} mx={self.mx_name or '-'} state={self._conn.state.name} "
            f"transactions={self.transactions} usable={self.usable}>"
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
    ) -> SmtpSession:
        """Connect, read the greeting and say EHLO (HELO after 500/502); raise if refused.

        Raises ``ConnectError``/``ConnectTimeout`` (connect or greeting), ``ReplyTimeout``
        (EHLO/HELO), ``NetworkError`` (closed early), ``RemoteProtocolError`` or
        ``SessionRefused`` (non-2xx greeting or EHLO/HELO; QUIT is sent first when allowed).
        """
        loop = asyncio.get_running_loop()
        conn = ClientConnection()
        proto = _SmtpProtocol(conn, loop)
        local_addr = (source_ip, 0) if source_ip else None
        try:
            async with asyncio.timeout(timeouts.connect_s):
                transport, _ = await loop.create_connection(lambda: proto, host, port, local_addr=local_addr)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connect to {host}:{port} timed out after {timeouts.connect_s}s") from exc
        except OSError as exc:
            raise ConnectError(f"connect to {host}:{port} failed: {exc}") from exc
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else host
        session = cls(conn, proto, transport, timeouts, peer=peer, mx_name=mx_name)
        try:
            await session._greet(ehlo_name)
        except BaseException:
            session.abort()
            raise
        return session

    async def _greet(self, ehlo_name: str) -> None:
        timeouts = self._timeouts
        phase = "greeting"
        try:
            reply = await self._reply(timeouts.greeting_s, ConnectTimeout, phase)
            if reply.is_success:
                phase = "ehlo"
                reply = await self._command(Ehlo(ehlo_name), timeouts.ehlo_s, ReplyTimeout, phase)
                if self._conn.state is State.GREETED:  # the table's 500/502 fallback (S02)
                    phase = "helo"
                    reply = await self._command(Helo(ehlo_name), timeouts.ehlo_s, ReplyTimeout, phase)
        except ServerClosingError as exc:  # 421: the channel is already going away (§3.8)
            raise SessionRefused(exc.reply, phase) from exc
        if not reply.is_success:
            await self._quit_best_effort()  # S01 (554 greeting), S03 (EHLO/HELO refused)
            raise SessionRefused(reply, phase)

    async def transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        payload: bytes,
        *,
        mail_params: tuple[str, ...] = (),
    ) -> TransactionResult:
        """Run MAIL, RCPT per recipient, DATA and the prepared ``payload``; return every reply.

        ``payload`` must come from ``smtp.body.data_payload``. Raises ``LocalProtocolError`` only
        for our own misuse (unusable session, no recipients, unsendable address).
        """
        if not self.usable:
            raise LocalProtocolError(f"transaction on an unusable session {self!r}")
        if not recipients:
            raise LocalProtocolError("a transaction needs at least one recipient")
        mail = MailFrom(sender, mail_params)
        rcpts = [RcptTo(address) for address in recipients]
        body = Payload(payload)
        result = TransactionResult(mail=None, rcpts=[None] * len(rcpts), data=None, error=None, phase="mail")
        reset = self.transactions > 0  # T01/T09: RSET before reusing the connection
        self.transactions += 1
        try:
            if self._conn.supports(_PIPELINING):
                await self._run_pipelined(result, reset, mail, rcpts, body)
            else:
                await self._run_lockstep(result, reset, mail, rcpts, body)
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

    async def _run_pipelined(
        self,
        result: TransactionResult,
        reset: bool,
        mail: MailFrom,
        rcpts: list[RcptTo],
        body: Payload,
    ) -> None:
        """RFC 2920: one write of [RSET] MAIL RCPT... DATA, then check every reply in order."""
        timeouts = self._timeouts
        group: list[Command] = [Rset()] if reset else []
        group += [mail, *rcpts, Data()]
        self._write(self._conn.send_pipelined(group))
        if reset:
            self._check_rset(await self._reply(timeouts.mail_s, ReplyTimeout, "rset"))
        result.mail = await self._reply(timeouts.mail_s, ReplyTimeout, "mail")
        result.phase = "rcpt"
        for i in range(len(rcpts)):
            result.rcpts[i] = await self._reply(timeouts.rcpt_s, ReplyTimeout, "rcpt")
        result.phase = "data"
        result.data = await self._reply(timeouts.data_s, ReplyTimeout, "data")
        accepted = result.mail.is_success and any(r is not None and r.is_success for r in result.rcpts)
        await self._send_payload(result, body if accepted else None)

    async def _run_lockstep(
        self,
        result: TransactionResult,
        reset: bool,
        mail: MailFrom,
        rcpts: list[RcptTo],
        body: Payload,
    ) -> None:
        """One command, one reply (STANDARDS X03)."""
        timeouts = self._timeouts
        if reset:
            self._check_rset(await self._command(Rset(), timeouts.mail_s, ReplyTimeout, "rset"))
        result.mail = await self._command(mail, timeouts.mail_s, ReplyTimeout, "mail")
        if not result.mail.is_success:
            return
        result.phase = "rcpt"
        for i, rcpt in enumerate(rcpts):
            result.rcpts[i] = await self._command(rcpt, timeouts.rcpt_s, ReplyTimeout, "rcpt")
        if not any(r is not None and r.is_success for r in result.rcpts):
            return  # T05: DATA only after at least one accepted RCPT
        result.phase = "data"
        result.data = await self._command(Data(), timeouts.data_s, ReplyTimeout, "data")
        await self._send_payload(result, body)

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

    async def _reply(self, timeout_s: float, timeout_exc: type[DeliveryTimeout], phase: str) -> Reply:
        """Return the next reply; raise on timeout, EOF, protocol error, or 421."""
        conn = self._conn
        event = conn.next_event()
        if type(event) is not Replied:
            try:
                async with asyncio.timeout(timeout_s):
                    while type(event) is not Replied:
                        if event is NEED_DATA:
                            await self._proto.wait_data()
                        else:
                            raise NetworkError(
                                f"connection closed by {self.peer} during {phase}"
                            ) from self._proto.lost_exc
                        event = conn.next_event()
            except TimeoutError as exc:
                raise timeout_exc(f"no {phase} reply from {self.peer} within {timeout_s}s") from exc
        assert isinstance(event, Replied)
        reply = event.reply
        if reply.code == _CLOSING:
            raise ServerClosingError(reply, phase)
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
