"""Recording SMTP receiver: an aiosmtpd server run as its own process for integration tests.

Usage: ``python -m tests.support.receiver --host H --port P --out DIR [--rules JSON]``.

Contract: listens on ``H:P`` (loopback only in tests) and records every DATA transaction as
``DIR/<n>.eml`` (the DATA bytes exactly as aiosmtpd hands them over: dot-unstuffed, terminator
removed) plus ``DIR/<n>.json`` (``n``, ``mail_from``, ``rcpt_tos``, ``mail_options``,
``rcpt_options``, ``peer``, ``reply``, ``accepted``). The JSON sidecar is written last and
atomically, so a visible ``.json`` means a complete record. Each RCPT decision is appended to
``DIR/rcpt.jsonl``. Replies are scripted by local-part prefix, first match wins:

    {"rcpt": [{"prefix": "bounce", "reply": "550 5.1.1 No such user"}],
     "data": [{"prefix": "slow", "reply": "451 4.3.0 Try later"}]}

``data`` rules match the first accepted recipient. It exits cleanly on SIGTERM. Its own
warnings (aiosmtpd deprecations) are silenced; they are not the engine's business.
"""

from __future__ import annotations

import warnings

warnings.simplefilter("ignore")  # before importing aiosmtpd

import argparse  # noqa: E402  (must follow the warnings filter)
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from aiosmtpd.smtp import SMTP, Envelope, Session  # noqa: E402

Rules = dict[str, list[dict[str, str]]]


def _match(rules: list[dict[str, str]], address: str) -> str | None:
    local = address.rsplit("@", 1)[0]
    for rule in rules:
        if local.startswith(rule["prefix"]):
            return rule["reply"]
    return None


class RecordingHandler:
    """aiosmtpd handler: scripted RCPT/DATA replies, one file pair per DATA transaction."""

    def __init__(self, out_dir: Path, rules: Rules) -> None:
        self.out_dir = out_dir
        self.rcpt_rules = rules.get("rcpt", [])
        self.data_rules = rules.get("data", [])
        self.count = 0

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = _match(self.rcpt_rules, address) or "250 2.1.5 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        event = {"rcpt": address, "reply": reply, "mail_from": envelope.mail_from}
        with open(self.out_dir / "rcpt.jsonl", "a") as fh:
            fh.write(json.dumps(event) + "\n")
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        first = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        reply = _match(self.data_rules, first) or "250 2.0.0 OK"
        self.count += 1
        n = self.count
        data = envelope.original_content or b""
        (self.out_dir / f"{n}.eml").write_bytes(data)
        record: dict[str, Any] = {
            "n": n,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
            "peer": list(session.peer) if isinstance(session.peer, tuple) else session.peer,
            "reply": reply,
            "accepted": reply.startswith("2"),
        }
        tmp = self.out_dir / f".{n}.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.out_dir / f"{n}.json")
        return reply


async def _serve(host: str, port: int, out_dir: Path, rules: Rules) -> None:
    handler = RecordingHandler(out_dir, rules)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="receiver.test", enable_SMTPUTF8=True),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    try:  # on 3.12+ wait_closed also waits for open client connections; don't hang on them
        await asyncio.wait_for(server.wait_closed(), timeout=2.0)
    except asyncio.TimeoutError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rules", default="{}", help="JSON rules, see the module docstring")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args.host, args.port, args.out, json.loads(args.rules)))


if __name__ == "__main__":
    main()
