"""Provider-behaviour SMTP sink: an aiosmtpd server, run as its own process, that behaves like a large
mailbox provider (slow replies, rate-based 421, greylisting, unknown users, recipient caps).

Usage: ``python -m tests.support.provider_sink --host H --port P --out DIR --script JSON``.

Script (every key optional)::

    {"latency_ms": 20,                       # added before every final reply line (greeting included)
     "rate_limit": {"per_minute": 100,       # once more than N messages were accepted in the trailing
                    "window_s": 60,          #   window (default 60 s; tests may shorten it), MAIL is
                    "reply": "421 4.7.28 ... rate limited"},   # answered with the reply and closed
     "greylist": {"share": 0.03, "seed": 7,  # or "prefix": "grey" (local part); first attempt of a
                  "reply": "451 4.7.1 Greylisted, try again later",  # (sender, rcpt) pair gets the
                  "min_retry_s": 1.0},       #   reply; a retry after min_retry_s is accepted
     "bounce": {"share": 0.01, "seed": 7,    # or "prefix": "bounce"; permanent RCPT refusal
                "reply": "550 5.1.1 No such user"},
     "max_rcpt": 100,                        # 452 4.5.3 beyond N accepted RCPTs in one transaction
     "store_data": true}                     # keep each accepted message's bytes (DIR/msg/<n>.eml)

Decisions are deterministic: a share picks an address when ``crc32("<kind>:<seed>:<address>") /
2**32 < share`` (``selected()``), so a test computes the expected sets without asking the sink. A
bounce decision wins over greylisting (a bounced address is never greylisted).

Records (JSON lines, appended and flushed one line at a time, so a reader sees whole lines):
- ``DIR/accepted.jsonl``: every accepted message: ``n``, ``t`` (unix time), ``mail_from``,
  ``rcpt_tos``, ``size``, ``sha256``, ``peer``;
- ``DIR/decisions.jsonl``: every MAIL/RCPT/DATA reply: ``t``, ``phase``, ``mail_from``, ``rcpt``
  (RCPT only), ``reply``, ``rule`` (``ok``, ``rate_limit``, ``greylist``, ``greylist_passed``,
  ``bounce``, ``max_rcpt``).
Exits cleanly on SIGTERM. aiosmtpd's own warnings are silenced.
"""

from __future__ import annotations

import warnings

warnings.simplefilter("ignore")  # before importing aiosmtpd

import argparse  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, AnyStr  # noqa: E402

from aiosmtpd.smtp import SMTP, Envelope, Session  # noqa: E402

from tests.support.procs import ServiceHarness  # noqa: E402

__all__ = ["ProviderSink", "selected", "expected_sets"]

DEFAULT_RATE_REPLY = ("421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating "
                      "from your IP address. To protect our users from spam, mail sent from your IP "
                      "address has been temporarily rate limited.")
DEFAULT_GREY_REPLY = "451 4.7.1 Greylisted, try again later"
DEFAULT_BOUNCE_REPLY = "550 5.1.1 The email account that you tried to reach does not exist"
MAX_RCPT_REPLY = "452 4.5.3 Too many recipients"


# ---------------------------------------------------------------------------------------------- decisions
def selected(kind: str, address: str, rule: dict[str, Any] | None) -> bool:
    """Whether ``rule`` (a ``greylist`` or ``bounce`` script entry) picks ``address``."""
    if not rule:
        return False
    if "prefix" in rule:
        return address.rsplit("@", 1)[0].startswith(rule["prefix"])
    share = float(rule.get("share", 0.0))
    if share <= 0:
        return False
    h = zlib.crc32(f"{kind}:{rule.get('seed', 0)}:{address.lower()}".encode())
    return h / 2**32 < share


def expected_sets(script: dict[str, Any], addresses: list[str]) -> dict[str, set[str]]:
    """What the script does to these addresses: ``bounce`` (550) and ``greylist`` (451 once) sets."""
    bounce = {a for a in addresses if selected("bounce", a, script.get("bounce"))}
    grey = {a for a in addresses if a not in bounce and selected("greylist", a, script.get("greylist"))}
    return {"bounce": bounce, "greylist": grey}


class _Recorder:
    def __init__(self, out_dir: Path) -> None:
        self.accepted = open(out_dir / "accepted.jsonl", "a", buffering=1)
        self.decisions = open(out_dir / "decisions.jsonl", "a", buffering=1)

    def close(self) -> None:
        self.accepted.close()
        self.decisions.close()


class ProviderHandler:
    """aiosmtpd handler carrying the provider rules and the shared (per-process) state."""

    def __init__(self, out_dir: Path, script: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.script = script
        self.rate = script.get("rate_limit") or None
        self.grey = script.get("greylist") or None
        self.bounce = script.get("bounce") or None
        self.max_rcpt = int(script.get("max_rcpt") or 0)
        self.store_data = bool(script.get("store_data", True))
        self.rec = _Recorder(out_dir)
        if self.store_data:
            (out_dir / "msg").mkdir(exist_ok=True)
        self.count = 0
        self.accepted_at: collections.deque[float] = collections.deque()
        self.open_txns: set[int] = set()
        """Sessions between an accepted MAIL and the end of DATA: counted against the rate limit too,
        so concurrent sessions cannot all slip in under it."""
        self.grey_seen: dict[tuple[str, str], float] = {}

    def _decide(self, phase: str, envelope: Envelope, reply: str, rule: str, rcpt: str | None = None) -> str:
        ev: dict[str, Any] = {"t": time.time(), "phase": phase, "mail_from": envelope.mail_from, "reply": reply,
                              "rule": rule}
        if rcpt is not None:
            ev["rcpt"] = rcpt
        self.rec.decisions.write(json.dumps(ev) + "\n")
        return reply

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.rate:
            now = time.time()
            window = float(self.rate.get("window_s", 60.0))
            while self.accepted_at and self.accepted_at[0] <= now - window:
                self.accepted_at.popleft()
            if len(self.accepted_at) + len(self.open_txns) >= int(self.rate["per_minute"]):
                envelope.mail_from = address
                return self._decide("MAIL", envelope, self.rate.get("reply", DEFAULT_RATE_REPLY), "rate_limit")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.open_txns.add(id(session))
        return self._decide("MAIL", envelope, "250 2.1.0 OK", "ok")

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.max_rcpt and len(envelope.rcpt_tos) >= self.max_rcpt:
            return self._decide("RCPT", envelope, MAX_RCPT_REPLY, "max_rcpt", address)
        if selected("bounce", address, self.bounce):
            return self._decide("RCPT", envelope, self.bounce.get("reply", DEFAULT_BOUNCE_REPLY),  # type: ignore[union-attr]
                                "bounce", address)
        rule = "ok"
        if selected("greylist", address, self.grey):
            key = ((envelope.mail_from or "").lower(), address.lower())
            now = time.time()
            first = self.grey_seen.get(key)
            if first is None or now - first < float(self.grey.get("min_retry_s", 60.0)):  # type: ignore[union-attr]
                self.grey_seen.setdefault(key, now)
                return self._decide("RCPT", envelope, self.grey.get("reply", DEFAULT_GREY_REPLY),  # type: ignore[union-attr]
                                    "greylist", address)
            rule = "greylist_passed"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return self._decide("RCPT", envelope, "250 2.1.5 OK", rule, address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.open_txns.discard(id(session))
        data = envelope.original_content or b""
        self.count += 1
        n = self.count
        now = time.time()
        self.accepted_at.append(now)
        if self.store_data:
            (self.out_dir / "msg" / f"{n}.eml").write_bytes(data)
        record = {"n": n, "t": now, "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                  "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                  "peer": list(session.peer) if isinstance(session.peer, tuple) else session.peer}
        self.rec.accepted.write(json.dumps(record) + "\n")
        return self._decide("DATA", envelope, f"250 2.0.0 OK queued as {n}", "ok")

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.open_txns.discard(id(session))
        return "250 OK"


class ProviderSMTP(SMTP):
    """aiosmtpd's SMTP with a per-reply delay and a close after any 421 (RFC 5321 §3.8)."""

    def __init__(self, handler: ProviderHandler, latency_s: float, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self.latency_s = latency_s
        self._provider = handler

    async def push(self, status: AnyStr) -> None:
        text = status.decode(errors="replace") if isinstance(status, bytes) else status
        final_line = len(text) < 4 or text[3] != "-"
        if self.latency_s and final_line:
            await asyncio.sleep(self.latency_s)
        await super().push(status)
        if text.startswith("421") and self.transport is not None:
            self._provider.open_txns.discard(id(self.session))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self._provider.open_txns.discard(id(self.session))
        super().connection_lost(exc)


async def _serve(host: str, port: int, out_dir: Path, script: dict[str, Any],
                 smtp: Callable[..., ProviderSMTP] = ProviderSMTP) -> None:
    """Serve until SIGTERM/SIGINT, one ``smtp(handler, latency_s, **kw)`` per connection."""
    handler = ProviderHandler(out_dir, script)
    latency_s = float(script.get("latency_ms", 0)) / 1000.0
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: smtp(handler, latency_s, hostname="provider.test", enable_SMTPUTF8=True, data_size_limit=0),
        host=host, port=port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), timeout=2.0)
    except asyncio.TimeoutError:
        pass
    handler.rec.close()


def main(argv: list[str] | None = None,
         serve: Callable[[str, int, Path, dict[str, Any]], Awaitable[None]] = _serve,
         description: str | None = __doc__) -> None:
    parser = argparse.ArgumentParser(description=(description or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--script", default="{}", help="JSON script, see the module docstring")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.host, args.port, args.out, json.loads(args.script)))


# ---------------------------------------------------------------------------------------------- client API
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    lines.pop()  # an unfinished last line (or the empty string after the final newline)
    return [json.loads(line) for line in lines if line.strip()]


class ProviderSink(ServiceHarness):
    """``python -m tests.support.provider_sink`` in a child process; a context manager."""

    _module = "tests.support.provider_sink"  # the child's module, also the log's name

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 out_dir: str | os.PathLike[str] | None = None, script: dict[str, Any] | None = None) -> None:
        self._host = host
        self._port = port
        self._init_out_dir(out_dir, prefix="provider-sink-")
        self.script = dict(script or {})

    def _repr_extra(self) -> str:
        return f" out={self.out_dir}"

    def start(self, timeout_s: float = 15.0) -> ProviderSink:
        self._begin_start()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = ["--host", self._host, "--port", str(self._port), "--out", str(self.out_dir),
                "--script", json.dumps(self.script)]
        name = self._module.rsplit(".", 1)[1].replace("_", "-")
        self._spawn_python(self._module, args, self.out_dir / f"{name}.log", name=name)
        self._wait_port(timeout_s)
        return self

    def accepted(self) -> list[dict[str, Any]]:
        """Accepted messages in arrival order; with ``store_data`` each has ``data: bytes``."""
        out = _read_jsonl(self.out_dir / "accepted.jsonl")
        if self.script.get("store_data", True):
            for m in out:
                m["data"] = (self.out_dir / "msg" / f"{m['n']}.eml").read_bytes()
        return out

    def accepted_rcpts(self) -> list[str]:
        return [r for m in _read_jsonl(self.out_dir / "accepted.jsonl") for r in m["rcpt_tos"]]

    def decisions(self, rule: str | None = None) -> list[dict[str, Any]]:
        """Every MAIL/RCPT/DATA decision in order, optionally only those of one ``rule``."""
        out = _read_jsonl(self.out_dir / "decisions.jsonl")
        return out if rule is None else [d for d in out if d["rule"] == rule]


if __name__ == "__main__":
    main()
