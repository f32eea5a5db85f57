"""SMTP servers for integration tests and benchmarks, each run as its own process on loopback.

Contract:
- ``SmtpSink`` runs Postfix's ``smtp-sink``: fast, accepts everything (or what its flags say),
  counts messages from its ``-c`` counters, and optionally dumps each transaction to files.
- ``RecordingReceiver`` runs ``python -m tests.support.receiver`` (aiosmtpd): slower, but it
  records the exact DATA bytes and envelope and replies per recipient by scripted rules.
Both stop by PID (SIGTERM, then SIGKILL) and wait for readiness by polling the port.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.procs import ServiceHarness

__all__ = ["SMTP_SINK", "RecordingReceiver", "SmtpSink"]

SMTP_SINK = "/usr/sbin/smtp-sink"
_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


class SmtpSink(ServiceHarness):
    """Postfix ``smtp-sink`` on ``host:port``; ``dump=True`` keeps one file per message."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        dump: bool = False,
        hostname: str = "sink.test",
        backlog: int = 1024,
        max_concurrency: int = 1024,
        extra_args: Sequence[str] = (),
        user: str = "nobody",
    ) -> None:
        self._host = host
        self._port = port
        self.dump = dump
        self.hostname = hostname
        self.backlog = backlog
        self.max_concurrency = max_concurrency
        self.extra_args = list(extra_args)
        self.user = user

    def _repr_extra(self) -> str:
        return f" dump={self.dump}"

    @property
    def dump_dir(self) -> Path:
        if self._dir is None or not self.dump:
            raise RuntimeError("dump_dir exists only for a started SmtpSink(dump=True)")
        return self._dir / "dump"

    def start(self, timeout_s: float = 10.0) -> SmtpSink:
        """Start smtp-sink and wait until it accepts TCP connections."""
        self._begin_start()
        # Directly under the system temp dir: pytest's tmp_path is 0700 root, which the
        # unprivileged sink (-u nobody) could not traverse to write its dumps.
        self._dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        argv = [SMTP_SINK, "-c", "-h", self.hostname, "-m", str(self.max_concurrency)]
        root = os.geteuid() == 0
        if root:
            argv += ["-u", self.user]  # required as root: drop privileges after bind
        if self.dump:
            dump = self._dir / "dump"
            dump.mkdir()
            if root:
                entry = pwd.getpwnam(self.user)
                os.chown(dump, entry.pw_uid, entry.pw_gid)
                self._dir.chmod(0o711)  # mkdtemp makes it 0700; the sink must traverse it
            argv += ["-d", f"{dump}/m."]  # strftime template; smtp-sink appends a random hex
        argv += [*self.extra_args, f"{self._host}:{self._port}", str(self.backlog)]
        self._spawn(argv, self._dir / "smtp-sink.log", name="smtp-sink")
        self._wait_port(timeout_s)
        return self

    def counters(self) -> dict[str, int]:
        """Latest ``-c`` counters: sessions ended, QUITs, messages (final "." received)."""
        if self._dir is None:
            return {"sess": 0, "quit": 0, "mesg": 0}
        try:
            raw = (self._dir / "smtp-sink.log").read_bytes()
        except FileNotFoundError:
            raw = b""
        found = _COUNTERS.findall(raw)
        if not found:
            return {"sess": 0, "quit": 0, "mesg": 0}
        sess, quit_, mesg = (int(v) for v in found[-1])
        return {"sess": sess, "quit": quit_, "mesg": mesg}

    def count_messages(self) -> int:
        """Messages accepted so far (works with and without ``dump``)."""
        return self.counters()["mesg"]

    def messages(self) -> list[dict[str, Any]]:
        """Dumped messages (``dump=True`` only): ``mail_from``, ``rcpt_tos``, ``data``, ``path``.

        ``data`` is the message as smtp-sink wrote it after its own headers (LF line ends, one
        trailing empty line added). Poll ``count_messages()`` first: a dump file is open while
        its transaction is in progress.
        """
        out: list[dict[str, Any]] = []
        for path in sorted(self.dump_dir.glob("m.*")):
            out.append(_parse_sink_dump(path))
        return out

    def count_recipients(self) -> int:
        """Recipients over all dumped messages (``dump=True`` only)."""
        return sum(len(m["rcpt_tos"]) for m in self.messages())



def _strip_angle(arg: str) -> str:
    addr = arg.split(" ", 1)[0]  # drop ESMTP parameters (SIZE=, NOTIFY=, ...)
    return addr[1:-1] if addr.startswith("<") and addr.endswith(">") else addr


def _parse_sink_dump(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    mail_from = ""
    rcpt_tos: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(b"X-Mail-Args: "):
            mail_from = _strip_angle(line[13:].decode(errors="replace"))
        elif line.startswith(b"X-Rcpt-Args: "):
            rcpt_tos.append(_strip_angle(line[13:].decode(errors="replace")))
        elif line.startswith(b"Received: "):
            i += 1
            while i < len(lines) and lines[i][:1] in (b"\t", b" "):  # folded Received lines
                i += 1
            break
        i += 1
    return {
        "mail_from": mail_from,
        "rcpt_tos": rcpt_tos,
        "data": b"\n".join(lines[i:]),
        "path": str(path),
    }


class RecordingReceiver(ServiceHarness):
    """aiosmtpd receiver in a child process; see ``tests.support.receiver`` for the format."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        rules: dict[str, list[dict[str, str]]] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._init_out_dir(out_dir, prefix="rcv-")
        self.rules = rules or {}

    def _repr_extra(self) -> str:
        return f" out={self.out_dir}"

    def start(self, timeout_s: float = 15.0) -> RecordingReceiver:
        """Start the receiver process and wait until it accepts TCP connections."""
        self._begin_start()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "--host", self._host, "--port", str(self._port),
            "--out", str(self.out_dir), "--rules", json.dumps(self.rules),
        ]  # fmt: skip
        self._spawn_python("tests.support.receiver", args, self.out_dir / "receiver.log", name="receiver")
        self._wait_port(timeout_s)
        return self

    def messages(self, accepted_only: bool = True) -> list[dict[str, Any]]:
        """Recorded transactions in arrival order, each with ``data: bytes`` from its .eml."""
        out: list[dict[str, Any]] = []
        for meta in sorted(self.out_dir.glob("*.json"), key=lambda p: int(p.stem)):
            record: dict[str, Any] = json.loads(meta.read_text())
            if accepted_only and not record["accepted"]:
                continue
            record["data"] = (self.out_dir / f"{meta.stem}.eml").read_bytes()
            out.append(record)
        return out

    def rcpt_events(self) -> list[dict[str, Any]]:
        """Every RCPT decision: ``rcpt``, ``reply``, ``mail_from``, in arrival order."""
        try:
            text = (self.out_dir / "rcpt.jsonl").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line]
