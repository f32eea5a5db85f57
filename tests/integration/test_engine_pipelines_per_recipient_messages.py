"""The engine sends a job of rendered bodies (one message per recipient) pipelined across
transactions; a 421 to the RCPT of a transaction written behind the previous dot defers exactly
that message, the rest of the session is not attempted, and after the retry every recipient has
arrived exactly once with its own body."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.faultserver import Script
from tests.support.procs import ManagedProcess, free_port, wait_for, wait_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IP = "127.0.0.71"
RAW = "From: news@sender.test\nTo: {{ email }}\nSubject: hi {{ first_name }}\n\nHello {{ first_name }}\n"


def test_421_inside_a_pipelined_job_defers_only_that_message_and_all_arrive_once(tmp_path: Path) -> None:
    port = free_port(IP)
    record = tmp_path / "messages.jsonl"
    script = Script(actions={"rcpt": "421 4.7.0 too fast, closing"}, after={"rcpt": 3}, times={"rcpt": 1})
    server = ManagedProcess([sys.executable, "-m", "tests.support.faultserver", "--host", IP, "--port", str(port),
                             "--script", script.to_json(), "--record", str(record)],
                            tmp_path / "faultserver.log", name="faultserver", cwd=ROOT).start()
    dns = DnsServer(mx={"pipe.test": [(10, "mx.pipe.test")]}, a={"mx.pipe.test": IP}, listen="127.0.0.72")
    try:
        wait_port(IP, port, 10, proc=server)
        dns.start()
        everyone = [f"user{i}@pipe.test" for i in range(12)]
        rcpts = [{"email": a, "substitutions": {"first_name": f"N{i}"}} for i, a in enumerate(everyone)]
        with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1,
                    extra={"queue": {"retry_intervals_s": [0.5]}}) as eng:
            eng.inject({"envelope_sender": "b@sender.test", "content": RAW, "recipients": rcpts})
            finals = eng.wait_final(len(everyone), timeout_s=90)
            assert collections.Counter(e["type"] for e in finals) == {"Delivery": len(everyone)}
            deferred = eng.events("TransientFailure")
        assert [e["code"] for e in deferred].count(421) == 1  # the one whose RCPT got the 421
        assert {e["recipient"] for e in deferred} <= set(everyone[3:])
        assert all(e["code"] in (421, 451) for e in deferred)
        entries = wait_for(lambda: (lines := record.read_text().splitlines()) and len(lines) >= len(everyone)
                           and [json.loads(line) for line in lines], 10, what="recorded messages")
        got = collections.Counter(e["rcpts"][0] for e in entries)
        assert set(got) == set(everyone) and max(got.values()) == 1  # each exactly once
        for e in entries:
            n = int(e["rcpts"][0][4:].split("@")[0])
            assert e["body"].endswith(f"Subject: hi N{n}\r\n\r\nHello N{n}\r\n")
    finally:
        dns.stop()
        server.stop()
