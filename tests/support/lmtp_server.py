"""An LMTP server for tests: aiosmtpd's ``LMTP`` class, with scripted per-recipient replies after DATA.

Contract: test code only. Listens on loopback TCP (``LmtpServer.tcp``) or on a unix socket
(``LmtpServer.unix``), in-process on aiosmtpd's controller thread; ``start()``/``stop()``.
Replies are scripted by local-part prefix, first match wins (as in ``tests/support/receiver.py``):
``rcpt`` rules answer RCPT, ``data`` rules answer DATA for that recipient (RFC 2033 §4.2); the
rest get 250. Every recipient delivered after DATA is recorded (``delivered``), with the
envelope sender and the content, and so is every LHLO/HELO/EHLO line (``hellos``). With
``pipelining`` the LHLO reply also advertises PIPELINING.

How the per-recipient replies are made: aiosmtpd's ``LMTP`` class answers DATA with the one
status string the handler returns, written as it is plus CRLF. The handler returns one reply line
per accepted recipient joined by CRLF, which is RFC 2033's reply sequence, so aiosmtpd itself is
not changed. A data rule whose reply is ``"close"`` makes the server send the replies of the
recipients before that one and then close the connection (a server that dies mid-sequence).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from .procs import free_port

CLOSE = "close"


def _match(rules: dict[str, str], address: str) -> str | None:
    local = address.rsplit("@", 1)[0]
    for prefix, reply in rules.items():
        if local.startswith(prefix):
            return reply
    return None


@dataclass
class Delivered:
    """One recipient's copy, as the LMTP server accepted it after DATA."""

    rcpt: str
    mail_from: str
    content: bytes


@dataclass
class LmtpHandler:
    """aiosmtpd handler hooks: scripted RCPT replies and one reply per recipient after DATA."""

    rcpt: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    delivered: list[Delivered] = field(default_factory=list)
    data_replies: list[list[str]] = field(default_factory=list)  # per transaction, in RCPT order
    hellos: list[str] = field(default_factory=list)
    pipelining: bool = False  # advertise PIPELINING (RFC 2920); aiosmtpd reads commands in order anyway
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        # With this hook aiosmtpd leaves recording the client's name to it (else MAIL gets 503).
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")  # before the last line, "250 HELP"
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = _match(self.rcpt, address) or "250 2.1.5 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        lines: list[str] = []
        for rcpt in envelope.rcpt_tos:
            reply = _match(self.data, rcpt) or f"250 2.0.0 <{rcpt}> delivered"
            if reply == CLOSE:
                # Runs before aiosmtpd writes the replies (no await in between): close after them.
                transport = server.transport
                assert transport is not None
                asyncio.get_running_loop().call_soon(transport.close)
                break
            lines.append(reply)
            if reply.startswith("2"):
                with self.lock:
                    self.delivered.append(Delivered(rcpt, envelope.mail_from or "", envelope.original_content or b""))
        with self.lock:
            self.data_replies.append(lines)
        return "\r\n".join(lines)


def _recording_lmtp(handler: LmtpHandler, **kwargs: Any) -> LMTP:
    class RecordingLMTP(LMTP):
        async def smtp_LHLO(self, arg: str) -> None:
            handler.hellos.append(f"LHLO {arg}")
            await super().smtp_LHLO(arg)

        async def smtp_EHLO(self, arg: str) -> None:
            handler.hellos.append(f"EHLO {arg}")
            await super().smtp_EHLO(arg)

        async def smtp_HELO(self, arg: str) -> None:
            handler.hellos.append(f"HELO {arg}")
            await super().smtp_HELO(arg)

    return RecordingLMTP(handler, **kwargs)


class _TcpLmtp(Controller):
    def factory(self) -> SMTP:
        return _recording_lmtp(self.handler, **self.SMTP_kwargs)


class _UnixLmtp(UnixSocketController):
    def factory(self) -> SMTP:
        return _recording_lmtp(self.handler, **self.SMTP_kwargs)


class LmtpServer:
    """aiosmtpd's LMTP server on 127.0.0.1:<free port> or on a unix socket, with an ``LmtpHandler``."""

    def __init__(self, handler: LmtpHandler, controller: Controller | UnixSocketController, endpoint: str) -> None:
        self.handler = handler
        self._controller = controller
        self.endpoint = endpoint  # as [lmtp] routes spells it: "127.0.0.1:port" or "unix:/path"

    @classmethod
    def tcp(cls, handler: LmtpHandler, host: str = "127.0.0.1") -> LmtpServer:
        port = free_port(host)
        return cls(handler, _TcpLmtp(handler, hostname=host, port=port, server_hostname="lmtp.test"),
                   f"{host}:{port}")

    @classmethod
    def unix(cls, handler: LmtpHandler, path: Path) -> LmtpServer:
        return cls(handler, _UnixLmtp(handler, unix_socket=str(path), server_hostname="lmtp.test"), f"unix:{path}")

    @property
    def host(self) -> str:
        return self.endpoint.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.endpoint.rpartition(":")[2])

    @property
    def path(self) -> str:
        return self.endpoint[len("unix:"):]

    def __repr__(self) -> str:
        return f"<LmtpServer {self.endpoint} delivered={len(self.handler.delivered)}>"

    def start(self) -> LmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> LmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
