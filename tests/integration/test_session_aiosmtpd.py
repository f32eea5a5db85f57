"""SmtpSession against real servers on 127.0.0.1: aiosmtpd, Postfix smtp-sink, and scripted sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mta_engine.delivery.session import (
    ServerClosingError,
    SessionRefused,
    SmtpSession,
    SmtpTimeouts,
    TransactionResult,
)
from mta_engine.errors import ConnectError, ConnectTimeout
from mta_engine.smtp.body import data_payload, normalize_crlf
from mta_engine.smtp.reply import Reply

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
TIMEOUTS = SmtpTimeouts(
    connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5, quit_s=5
)
# Lines starting with ".", a lone ".", bare LF/CR and smuggling lookalikes (STANDARDS D02, D03).
MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: test\r\n\r\n"
    b".leading dot\n.\n..\r\nbare cr\rline\n.\r\nMAIL FROM:<evil@example.com>\r\n\r\n.\nend"
)


@dataclass
class RecordingHandler:
    """aiosmtpd handler: records every command and envelope; scripted RCPT replies by address."""

    pipelining: bool = True
    ehlo_reply: list[str] | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    envelopes: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.commands.append("EHLO")
        if self.ehlo_reply is not None:
            return self.ehlo_reply
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        self.commands.append("HELO")
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.commands.append("MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.commands.append("RCPT")
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.commands.append("DATA")
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 queued"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.commands.append("RSET")
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.commands.append("QUIT")
        return "221 2.0.0 Bye"


class EphemeralController(Controller):
    """aiosmtpd Controller bound to 127.0.0.1:0; the chosen port is read back from the socket."""

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        create = super()._create_server()

        async def bind() -> asyncio.AbstractServer:
            server = await create
            self.port = server.sockets[0].getsockname()[1]
            return server

        return bind()


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def smtpd(handler: RecordingHandler) -> Iterator[EphemeralController]:
    controller = EphemeralController(handler, hostname=HOST, port=0)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def open_session(port: int, **kwargs: Any) -> SmtpSession:
    return await SmtpSession.open(
        HOST, port, ehlo_name="client.example", timeouts=TIMEOUTS, mx_name="mx.test", **kwargs
    )


def codes(result: TransactionResult) -> tuple[int | None, list[int | None], int | None]:
    return (
        result.mail.code if result.mail else None,
        [r.code if r else None for r in result.rcpts],
        result.data.code if result.data else None,
    )


def test_pipelined_transaction_delivers_exact_body(
    smtpd: EphemeralController, handler: RecordingHandler
) -> None:
    """Three recipients in one pipelined transaction; the server receives the normalized body byte for byte."""

    async def scenario() -> tuple[TransactionResult, dict[str, str]]:
        session = await open_session(smtpd.port)
        try:
            result = await session.transaction(
                "a@example.com", ["b@example.net", "c@example.net", "d@example.net"], data_payload(MESSAGE)
            )
            return result, dict(session.extensions)
        finally:
            await session.close()

    result, extensions = run(scenario())
    assert "PIPELINING" in extensions
    assert codes(result) == (250, [250, 250, 250], 250)
    assert (result.error, result.phase) == (None, "payload")
    ((sender, rcpts, content),) = handler.envelopes
    assert (sender, rcpts) == ("a@example.com", ["b@example.net", "c@example.net", "d@example.net"])
    assert content == normalize_crlf(MESSAGE) + b"\r\n"


def test_rcpt_rejections_are_per_recipient(smtpd: EphemeralController, handler: RecordingHandler) -> None:
    """A 550 and a 452 come back exactly as sent, for their own recipients only; the rest is delivered."""
    handler.rcpt_replies = {
        "gone@example.net": "550 5.1.1 no such user",
        "busy@example.net": "452 4.5.3 too many",
    }

    async def scenario() -> TransactionResult:
        session = await open_session(smtpd.port)
        try:
            return await session.transaction(
                "a@example.com",
                ["gone@example.net", "ok@example.net", "busy@example.net"],
                data_payload(b"hi"),
            )
        finally:
            await session.close()

    result = run(scenario())
    assert result.rcpts == [
        Reply(550, ("5.1.1 no such user",)),
        Reply(250, ("2.1.5 OK",)),
        Reply(452, ("4.5.3 too many",)),
    ]
    assert result.rcpts[0] is not None and result.rcpts[0].enhanced == "5.1.1"
    assert result.data == Reply(250, ("2.0.0 queued",))
    assert [rcpts for _, rcpts, _ in handler.envelopes] == [["ok@example.net"]]


@pytest.mark.parametrize("pipelining", [True, False])
def test_no_accepted_recipient_sends_no_content(
    smtpd: EphemeralController, handler: RecordingHandler, pipelining: bool
) -> None:
    """When every RCPT is refused no message is delivered and the session stays usable (T05, D07)."""
    handler.pipelining = pipelining
    handler.rcpt_replies = {"gone@example.net": "550 5.1.1 no such user"}

    async def scenario() -> tuple[TransactionResult, bool]:
        session = await open_session(smtpd.port)
        try:
            result = await session.transaction("a@example.com", ["gone@example.net"], data_payload(b"hi"))
            return result, session.usable
        finally:
            await session.close()

    result, usable = run(scenario())
    assert result.rcpts[0] is not None and result.rcpts[0].code == 550
    assert result.data is None or not result.data.is_success
    assert result.phase in ("rcpt", "data")
    assert usable
    assert handler.envelopes == []


def test_session_reuse_sends_rset_between_transactions(
    smtpd: EphemeralController, handler: RecordingHandler
) -> None:
    """Two transactions on one session: RSET precedes the second MAIL and both are delivered (T01)."""

    async def scenario() -> tuple[list[TransactionResult], str]:
        session = await open_session(smtpd.port)
        try:
            results = [
                await session.transaction("a@example.com", ["b@example.net"], data_payload(b"one")),
                await session.transaction("a@example.com", ["c@example.net"], data_payload(b"two")),
            ]
            return results, repr(session)
        finally:
            await session.close()

    results, text = run(scenario())
    assert [codes(r) for r in results] == [(250, [250], 250), (250, [250], 250)]
    assert handler.commands == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    assert [content for _, _, content in handler.envelopes] == [b"one\r\n", b"two\r\n"]
    assert text == "<SmtpSession peer=127.0.0.1 mx=mx.test state=READY transactions=2 usable=True>"


def test_close_sends_quit(smtpd: EphemeralController, handler: RecordingHandler) -> None:
    """close() sends QUIT, and the session is unusable afterwards (T08)."""

    async def scenario() -> SmtpSession:
        session = await open_session(smtpd.port)
        await session.close()
        await session.close()  # idempotent
        return session

    session = run(scenario())
    assert handler.commands == ["EHLO", "QUIT"]
    assert not session.usable
    assert "state=CLOSED" in repr(session)


def test_ehlo_502_falls_back_to_helo(smtpd: EphemeralController, handler: RecordingHandler) -> None:
    """A real server answering 502 to EHLO gets HELO on the same connection and mail still flows (S02)."""
    handler.ehlo_reply = ["502 5.5.1 EHLO not implemented"]

    async def scenario() -> tuple[TransactionResult, dict[str, str]]:
        session = await open_session(smtpd.port)
        try:
            return await session.transaction(
                "a@example.com", ["b@example.net"], data_payload(b"x")
            ), session.extensions
        finally:
            await session.close()

    result, extensions = run(scenario())
    assert codes(result) == (250, [250], 250)
    assert extensions == {}
    assert handler.commands[:2] == ["EHLO", "HELO"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_connect_error() -> None:
    """A closed port raises ConnectError, chained to the OSError."""
    with pytest.raises(ConnectError) as info:
        run(open_session(_free_port()))
    assert isinstance(info.value.__cause__, OSError)


# --- scripted raw servers for the failure paths aiosmtpd cannot produce -----------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


async def with_scripted_server(
    script: Script, client: Callable[[int], Awaitable[Any]]
) -> tuple[Any, list[bytes]]:
    """Run ``script`` as the server for one connection; return the client's result and received lines."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer, received)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            return await client(port), received
        except Exception as exc:  # returned for assertions
            return exc, received


async def _read_lines(reader: asyncio.StreamReader, received: list[bytes], n: int) -> None:
    for _ in range(n):
        received.append(await reader.readline())


def test_554_greeting_refuses_and_sends_quit() -> None:
    """A 554 greeting raises SessionRefused(phase='greeting') after QUIT is sent (S01)."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: list[bytes]
    ) -> None:
        writer.write(b"554 5.7.1 no service for you\r\n")
        await _read_lines(reader, received, 1)
        writer.write(b"221 bye\r\n")

    exc, received = run(with_scripted_server(script, open_session))
    assert isinstance(exc, SessionRefused)
    assert (exc.phase, exc.reply.code) == ("greeting", 554)
    assert received == [b"QUIT\r\n"]


def test_421_during_rcpt_ends_the_session() -> None:
    """A 421 mid-group is recorded for its RCPT, later RCPTs stay None, and the session is unusable (R08)."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: list[bytes]
    ) -> None:
        writer.write(b"220 mx\r\n")
        await _read_lines(reader, received, 1)
        writer.write(b"250-mx\r\n250 PIPELINING\r\n")
        await _read_lines(reader, received, 4)  # MAIL, RCPT, RCPT, DATA in one group
        writer.write(b"250 ok\r\n421 4.7.0 too busy, closing\r\n")
        await writer.drain()

    async def client(port: int) -> tuple[TransactionResult, bool]:
        session = await open_session(port)
        result = await session.transaction(
            "a@example.com", ["b@example.net", "c@example.net"], data_payload(b"x")
        )
        usable = session.usable
        await session.close()
        return result, usable

    (result, usable), received = run(with_scripted_server(script, client))
    assert received[1:] == [
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<b@example.net>\r\n",
        b"RCPT TO:<c@example.net>\r\n",
        b"DATA\r\n",
    ]
    assert codes(result) == (250, [421, None], None)
    assert isinstance(result.error, ServerClosingError)
    assert result.phase == "rcpt"
    assert not usable


def test_silent_server_times_out_at_greeting() -> None:
    """No greeting within greeting_s raises ConnectTimeout (RFC 5321 §4.5.3.2.1)."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: list[bytes]
    ) -> None:
        with contextlib.suppress(ConnectionError):
            received.append(await reader.read())  # say nothing until the client gives up

    async def client(port: int) -> SmtpSession:
        timeouts = SmtpTimeouts(connect_s=5, greeting_s=0.2)
        return await SmtpSession.open(HOST, port, ehlo_name="client.example", timeouts=timeouts)

    exc, _ = run(with_scripted_server(script, client))
    assert isinstance(exc, ConnectTimeout)
    assert isinstance(exc.__cause__, TimeoutError)


# --- Postfix smtp-sink ------------------------------------------------------------------------

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    if not os.path.exists(SMTP_SINK):
        pytest.skip("smtp-sink not installed (scripts/bootstrap-system.sh installs postfix)")
    port = _free_port()
    args = [SMTP_SINK]
    if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
        user = "postfix"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        args += ["-u", user]
    args += [f"{HOST}:{port}", "100"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10.0
        while True:  # poll for the listener against a deadline
            try:
                socket.create_connection((HOST, port), timeout=1.0).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"smtp-sink did not start: {proc.stderr.read() if proc.stderr else b''!r}"
                    ) from None
                time.sleep(0.02)  # poll interval, not synchronisation: the loop checks the deadline
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_smtp_sink_accepts_a_transaction(smtp_sink: int) -> None:
    """Postfix smtp-sink answers 250 to MAIL, both RCPTs and the final dot, with PIPELINING."""

    async def scenario() -> tuple[TransactionResult, bool]:
        session = await open_session(smtp_sink)
        try:
            result = await session.transaction(
                "a@example.com", ["b@example.net", "c@example.net"], data_payload(MESSAGE)
            )
            pipelining = "PIPELINING" in session.extensions
            result2 = await session.transaction("a@example.com", ["d@example.net"], data_payload(b"again"))
            assert codes(result2) == (250, [250], 250)
            return result, pipelining
        finally:
            await session.close()

    result, pipelining = run(scenario())
    assert pipelining
    assert codes(result) == (250, [250, 250], 250)
    assert (result.error, result.phase) == (None, "payload")
