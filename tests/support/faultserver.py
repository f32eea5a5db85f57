"""A small scriptable SMTP server that misbehaves on request, for client fault tests.

Contract: test code only. Binds to 127.0.0.1 (or another 127.0.0.0/8 address) on an ephemeral
port, in-process (``async with FaultServer(script) as server``) or as a subprocess
(``python -m tests.support.faultserver --port P --script JSON [--record FILE]``). It records
every command line and every message body it receives (``server.received``,
``server.messages``; in subprocess mode as JSON lines in ``--record``). It never decides
anything by the clock: a "stall" reads and discards input until the client hangs up.

The ``Script`` says, per phase, what to do instead of the normal reply. Phases: ``greeting``,
``ehlo``, ``helo``, ``starttls``, ``mail``, ``rcpt``, ``data`` (reply to DATA), ``body`` (while
reading message content, before the end), ``dot`` (reply to the final dot or BDAT LAST),
``bdat`` (reply to a non-last BDAT), ``rset``, ``quit``. An action is ``"stall"``, ``"close"``
(FIN), ``"reset"`` (RST), ``"tls_garbage"`` (starttls only: 220, then plaintext instead of a
handshake), ``"inject"`` (starttls only: 220 and a second reply in the same write, then stall)
or raw reply text sent as is (CRLF added when missing; may be several lines or garbage).
``after`` delays a phase's action: that many normal replies in that phase first (over all
connections), so "421 to the second dot" is ``actions={"dot": "421 ..."}, after={"dot": 1}``;
``times`` limits how often it fires (default: every time after that). ``hold_final`` = N holds
the 250 to each of the first N accepted messages until the next command line has arrived: only
a client that pipelines the next transaction behind the end of the data gets past it.
A scripted reply to DATA other than 354 refuses it: the lines that follow are read as commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import struct
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

ACTIONS = ("stall", "close", "reset", "tls_garbage", "inject")
DEFAULT_EXTENSIONS = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]


@dataclass
class Script:
    """What the server advertises and how it misbehaves; JSON-serialisable for subprocess mode."""

    greeting: str = "220 fault.test ESMTP"
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    extensions_after_tls: list[str] | None = None  # None = same as before TLS, minus STARTTLS
    actions: dict[str, str] = field(default_factory=dict)  # phase -> action (see module doc)
    rcpt_limit: int | None = None  # 452 4.5.3 after this many accepted RCPTs (RFC 5321 §4.5.3.1.10)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply
    size: int | None = None  # advertise "SIZE n" and refuse bigger messages with 552
    certfile: str | None = None  # STARTTLS (advertised when set) or implicit TLS certificate
    keyfile: str | None = None
    implicit_tls: bool = False  # TLS from the first byte (RFC 8314)
    chunking: bool = False  # advertise CHUNKING and accept BDAT (RFC 3030)
    smtputf8: bool = False  # advertise SMTPUTF8
    after: dict[str, int] = field(default_factory=dict)  # phase -> normal replies before its action fires
    times: dict[str, int] = field(default_factory=dict)  # phase -> how often its action fires (default: always)
    hold_final: int = 0  # hold the reply to the first N final dots/BDAT LAST until the next command arrives

    @classmethod
    def from_json(cls, text: str) -> Script:
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def advertised(self, tls_active: bool) -> list[str]:
        if tls_active and self.extensions_after_tls is not None:
            return list(self.extensions_after_tls)
        ext = list(self.extensions)
        if self.size is not None:
            ext.append(f"SIZE {self.size}")
        if self.chunking:
            ext.append("CHUNKING")
        if self.smtputf8:
            ext.append("SMTPUTF8")
        if self.certfile and not tls_active and not self.implicit_tls:
            ext.append("STARTTLS")
        return ext


@dataclass
class Message:
    """One transaction the server accepted or refused at the end."""

    mail: str
    rcpts: list[str]
    body: bytes
    via: str  # "DATA" or "BDAT"


class _Stop(Exception):
    """The script ended the connection."""


def _ssl_context(script: Script) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert script.certfile
    ctx.load_cert_chain(script.certfile, script.keyfile)
    return ctx


def _unstuff(lines: list[bytes]) -> bytes:
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines)


class _Session:
    """One client connection driven by the script."""

    def __init__(self, server: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.script = server.script
        self.reader = reader
        self.writer = writer
        self.tls = self.script.implicit_tls
        self.mail: str | None = None
        self.rcpts: list[str] = []
        self.chunks: list[bytes] = []
        self.fired: set[str] = set()

    async def act(self, phase: str, normal: str) -> bool:
        """Send the normal reply for ``phase`` or do what the script says instead (then True)."""
        action = self.script.actions.get(phase)
        seen, after = self.server.phase_counts.get(phase, 0), self.script.after.get(phase, 0)
        if action is not None and not after <= seen < after + self.script.times.get(phase, 1 << 30):
            action = None  # Script.after/times: normal replies before and after (over all connections)
        self.server.phase_counts[phase] = self.server.phase_counts.get(phase, 0) + 1
        if action is None:
            await self.send(normal)
            return False
        self.fired.add(phase)
        if action == "stall":
            await self.stall()
        if action == "close":
            raise _Stop
        if action == "reset":
            sock = self.writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close() sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
            raise _Stop
        await self.send(action)
        if action.startswith("421"):
            raise _Stop  # RFC 5321 §3.8: close after 421
        return True

    async def stall(self) -> None:
        """Say nothing more; read and discard until the client hangs up."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        raise _Stop

    async def send(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        if not data.endswith(b"\n"):
            data += b"\r\n"
        self.writer.write(data)
        await self.writer.drain()

    async def run(self) -> None:
        await self.act("greeting", self.script.greeting)
        while True:
            line = await self.reader.readline()
            if not line:
                return
            self.server.received.append(line)
            await self.command(line)

    async def command(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        verb = text.split(" ", 1)[0].upper()
        arg = text[len(verb) :].strip()
        if verb == "EHLO":
            ext = self.script.advertised(self.tls)
            lines = ["fault.test hello", *ext]
            reply = "\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}" for i, t in enumerate(lines))
            await self.act("ehlo", reply)
        elif verb == "HELO":
            await self.act("helo", "250 fault.test")
        elif verb == "STARTTLS":
            await self.starttls()
        elif verb == "MAIL":
            await self.mail_from(arg)
        elif verb == "RCPT":
            await self.rcpt_to(arg)
        elif verb == "DATA":
            await self.data()
        elif verb == "BDAT":
            await self.bdat(arg)
        elif verb == "RSET":
            self.mail, self.rcpts, self.chunks = None, [], []
            await self.act("rset", "250 2.0.0 reset")
        elif verb == "NOOP":
            await self.send("250 2.0.0 ok")
        elif verb == "QUIT":
            await self.act("quit", "221 2.0.0 bye")
            raise _Stop
        else:
            await self.send("502 5.5.1 command not implemented")

    async def starttls(self) -> None:
        if not self.script.certfile or self.tls:
            await self.send("502 5.5.1 STARTTLS not available")
            return
        action = self.script.actions.get("starttls")
        if action == "inject":  # RFC 3207 §6: a command smuggled behind the 220, in one packet
            await self.send("220 2.0.0 go ahead\r\n250 injected\r\n")
            await self.stall()
        if action == "tls_garbage":
            await self.send("220 2.0.0 go ahead")
            await self.reader.read(1)  # the client's hello has started: answer it with plaintext
            await self.send("this is not a TLS handshake")
            raise _Stop
        await self.act("starttls", "220 2.0.0 go ahead")
        if action is not None and not action.startswith("2"):
            return  # refused (454): stay in plaintext
        plain = self.writer.transport
        try:
            await self.writer.start_tls(_ssl_context(self.script))
        except (ssl.SSLError, ConnectionError, OSError, AttributeError):
            # Python 3.11's StreamWriter.start_tls leaves its transport None when the client
            # hangs up mid-handshake (AttributeError); put the plaintext one back to close it.
            self.writer._transport = plain  # type: ignore[attr-defined]
            plain.abort()
            self.server.tls_failures += 1
            raise _Stop from None
        self.tls = True
        self.server.tls_sessions += 1

    async def mail_from(self, arg: str) -> None:
        address, _, params = arg.partition(">")
        self.mail = address.split("<", 1)[-1]
        self.rcpts, self.chunks = [], []
        self.server.mail_params.append(params.split())
        if await self.act("mail", "250 2.1.0 sender ok") and not self.script.actions["mail"].startswith("2"):
            self.mail = None  # a refused MAIL opens no transaction (RFC 5321 §4.1.1.2)

    async def rcpt_to(self, arg: str) -> None:
        address = arg.partition(">")[0].split("<", 1)[-1]
        if self.mail is None:
            await self.act("rcpt", "503 5.5.1 MAIL first")
            return
        if address in self.script.rcpt_replies:
            await self.act("rcpt", self.script.rcpt_replies[address])
            return
        if self.script.rcpt_limit is not None and len(self.rcpts) >= self.script.rcpt_limit:
            await self.act("rcpt", "452 4.5.3 too many recipients")
            return
        self.rcpts.append(address)
        await self.act("rcpt", "250 2.1.5 recipient ok")

    async def data(self) -> None:
        if not self.rcpts:
            await self.act("data", "554 5.5.1 no valid recipients")
            return
        if await self.act("data", "354 end with <CRLF>.<CRLF>") and not self.script.actions["data"].startswith("3"):
            return  # DATA refused by the script: what follows are commands again (RFC 5321 §4.1.1.4)
        lines: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                return
            if not lines:
                await self.act_body()
            if line == b".\r\n":
                break
            lines.append(line)
        await self.finish(_unstuff(lines), "DATA")

    async def act_body(self) -> None:
        if "body" in self.script.actions and "body" not in self.fired:
            await self.act("body", "")

    async def bdat(self, arg: str) -> None:
        parts = arg.split()
        try:
            size = int(parts[0])
        except (IndexError, ValueError):
            await self.send("501 5.5.4 BDAT size missing")
            return
        last = len(parts) > 1 and parts[1].upper() == "LAST"
        if not self.script.chunking:
            await self.send("502 5.5.1 BDAT not implemented")
            return
        if size:
            await self.act_body()
        chunk = await self.reader.readexactly(size)  # RFC 3030 §2: read the octets whatever happens
        if not self.rcpts:
            await self.act("dot" if last else "bdat", "554 5.5.1 no valid recipients")
            return
        self.chunks.append(chunk)
        if last:
            await self.finish(b"".join(self.chunks), "BDAT")
        else:
            await self.act("bdat", f"250 2.0.0 {size} octets received")

    async def finish(self, body: bytes, via: str) -> None:
        assert self.mail is not None
        message = Message(self.mail, list(self.rcpts), body, via)
        if self.script.size is not None and len(body) > self.script.size > 0:
            await self.act("dot", "552 5.3.4 message too big")
        else:
            self.server.messages.append(message)
            self.server.record(message)
            self.mail, self.rcpts, self.chunks = None, [], []
            if self.server.finals_held < self.script.hold_final:
                # Answer only once the next command is here: a client that waits for this reply
                # before sending the next transaction (no pipelining across transactions) stalls.
                self.server.finals_held += 1
                line = await self.reader.readline()
                await self.act("dot", "250 2.0.0 queued")
                if line:
                    self.server.received.append(line)
                    await self.command(line)
                return
            await self.act("dot", "250 2.0.0 queued")
        self.mail, self.rcpts, self.chunks = None, [], []


class FaultServer:
    """The server: ``async with FaultServer(script) as server`` → ``server.port``."""

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1", port: int = 0,
                 record_path: str | None = None) -> None:
        self.script = script or Script()
        self.host = host
        self.port = port
        self.record_path = record_path
        self.received: list[bytes] = []  # command lines, in order, across connections
        self.messages: list[Message] = []
        self.mail_params: list[list[str]] = []  # ESMTP parameters of each MAIL FROM
        self.phase_counts: dict[str, int] = {}  # replies per phase so far (for Script.after)
        self.finals_held = 0  # final replies held back so far (Script.hold_final)
        self.connections = 0
        self.tls_sessions = 0
        self.tls_failures = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        return (f"<FaultServer {self.host}:{self.port} connections={self.connections} "
                f"messages={len(self.messages)}>")

    @property
    def commands(self) -> list[str]:
        """The command verbs received, upper-cased (``["EHLO", "MAIL", ...]``)."""
        return [line.split(b" ", 1)[0].strip().decode("ascii", "replace").upper() for line in self.received]

    def record(self, message: Message) -> None:
        if self.record_path:
            entry = {"mail": message.mail, "rcpts": message.rcpts, "via": message.via,
                     "body": message.body.decode("utf-8", "surrogateescape")}
            with open(self.record_path, "a", encoding="utf-8", errors="surrogateescape") as fh:
                fh.write(json.dumps(entry) + "\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await _Session(self, reader, writer).run()
        except (_Stop, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()  # not wait_closed(): after a failed start_tls it would never finish
            self._tasks.discard(task)

    async def start(self) -> FaultServer:
        ssl_ctx = _ssl_context(self.script) if self.script.implicit_tls else None
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=ssl_ctx,
                                                  limit=1024 * 1024)  # long lines are the client's test
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # end stalled sessions: their reads see EOF
                writer.transport.abort()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def _serve(args: argparse.Namespace) -> None:
    script = Script.from_json(args.script) if args.script else Script()
    server = await FaultServer(script, args.host, args.port, args.record).start()
    print(f"listening {server.host}:{server.port}", flush=True)
    await asyncio.Event().wait()  # until the test terminates the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="scriptable misbehaving SMTP server (tests only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", default="", help="Script as JSON")
    parser.add_argument("--record", default=None, help="append received messages as JSON lines")
    args = parser.parse_args(argv)
    if not args.host.startswith("127."):
        parser.error("the fault server only binds to 127.0.0.0/8")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
