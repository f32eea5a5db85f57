"""The fault server also runs as its own process, scripted by JSON, recording messages to a file."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mta_engine.delivery.session import SmtpSession, SmtpTimeouts
from mta_engine.smtp.body import PreparedMessage
from tests.support.faultserver import Script

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_subprocess_fault_server_scripts_and_records(tmp_path: Path) -> None:
    """`python -m tests.support.faultserver` honours --script (452 after one RCPT) and --record."""
    port = _free_port()
    record = tmp_path / "messages.jsonl"
    script = Script(rcpt_limit=1, size=10_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.faultserver", "--port", str(port), "--script", script.to_json(),
         "--record", str(record)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == f"listening 127.0.0.1:{port}"  # ready line, not a sleep

        async def deliver() -> tuple[list[int | None], int | None]:
            session = await SmtpSession.open("127.0.0.1", port, ehlo_name="client.test", timeouts=TIMEOUTS)
            try:
                result = await session.transaction("a@example.com", ["b@example.net", "c@example.net"],
                                                   PreparedMessage(b"Subject: sub\n\nhi\n"))
                return [r.code if r else None for r in result.rcpts], result.data.code if result.data else None
            finally:
                await session.close()

        rcpts, data = asyncio.run(deliver())
        assert (rcpts, data) == ([250, 452], 250)
        deadline = time.monotonic() + 10
        while not record.exists() and time.monotonic() < deadline:  # poll against a deadline
            time.sleep(0.01)
        (entry,) = [json.loads(line) for line in record.read_text().splitlines()]
        assert entry == {"mail": "a@example.com", "rcpts": ["b@example.net"], "via": "DATA",
                         "body": "Subject: sub\r\n\r\nhi\r\n"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
