"""``SmtpSession.run_transactions`` against real servers: Postfix smtp-sink (PIPELINING), the
private Postfix smtpd (PIPELINING and CHUNKING) and aiosmtpd (no PIPELINING: one by one). Every
message arrives exactly once, with exactly its own content."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TransactionItem, TransactionResult
from mta_engine.smtp.body import PreparedMessage
from tests.support.postfix import PostfixInstance
from tests.support.procs import free_port, wait_for
from tests.support.sinks import RecordingReceiver, SmtpSink

pytestmark = pytest.mark.integration
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=10,
                        quit_s=5, tls_s=5)
N = 30
POSTFIX = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/postfix").exists(),
                             reason="a private Postfix instance needs root and postfix")


def batch(domain: str) -> list[TransactionItem]:
    return [("a@sender.test", [f"u{i}@{domain}"],
             PreparedMessage(b"From: a@sender.test\nSubject: %d\n\n.leading dot\n..two\nbody of %d\n" % (i, i)),
             None) for i in range(N)]


async def _send(host: str, port: int, items: list[TransactionItem], *, chunking: bool,
                rounds: int = 2) -> tuple[list[TransactionResult], dict[str, str]]:
    session = await SmtpSession.open(host, port, ehlo_name="client.test", timeouts=TIMEOUTS, mx_name="mx.test",
                                     chunking=chunking)
    results: list[TransactionResult] = []
    try:
        step = len(items) // rounds
        for start in range(0, len(items), step):  # several batches on one session, as the worker does
            results += await session.run_transactions(items[start:start + step])
        return results, dict(session.extensions)
    finally:
        await session.close()


def send(host: str, port: int, items: list[TransactionItem], *, chunking: bool = False
         ) -> tuple[list[TransactionResult], dict[str, str]]:
    return asyncio.run(_send(host, port, items, chunking=chunking))


def assert_all_accepted(results: list[TransactionResult]) -> None:
    assert len(results) == N
    assert all(r.error is None and r.data is not None and r.data.code == 250 and r.phase == "payload"
               for r in results)


def test_smtp_sink_gets_every_message_once() -> None:
    """smtp-sink advertises PIPELINING: 30 pipelined messages, each dumped once with its own body."""
    with SmtpSink(dump=True) as sink:
        items = batch("sink.test")
        results, ext = send(sink.host, sink.port, items)
        assert "PIPELINING" in ext
        assert_all_accepted(results)
        wait_for(lambda: sink.count_messages() >= N, 10, what="30 messages at smtp-sink")
        got = {m["rcpt_tos"][0]: m["data"] for m in sink.messages()}
        assert len(sink.messages()) == N
        for _, (rcpt,), message, _ in items:
            # smtp-sink writes LF line ends and adds one empty line
            assert got[rcpt] == message.data.replace(b"\r\n", b"\n") + b"\n"


@POSTFIX
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_postfix_smtpd_gets_every_message_once_byte_identical(tmp_path: Path, chunking: bool) -> None:
    """Postfix smtpd (PIPELINING, CHUNKING): 30 pipelined messages, each delivered once, byte-identical,
    and smtpd logs no improper pipelining."""
    port = free_port("127.0.0.1")
    pf = PostfixInstance("receiver", "127.0.0.1", port, hostname="mx.pf.test")
    pf.start()
    try:
        items = batch("pf.test")
        results, ext = send("127.0.0.1", port, items, chunking=chunking)
        assert "PIPELINING" in ext and "CHUNKING" in ext
        assert_all_accepted(results)
        msgs = pf.wait_messages(N, timeout_s=60)
        assert sorted(r for m in msgs for r in m["rcpts"]) == sorted(rcpt for _, (rcpt,), _, _ in items)
        bodies = {m["rcpts"][0]: m["data"] for m in msgs}
        for _, (rcpt,), message, _ in items:
            assert bodies[rcpt] == message.data
        assert "improper command pipelining" not in pf.log_text()
    finally:
        pf.cleanup()


def test_aiosmtpd_without_pipelining_gets_every_message_once(tmp_path: Path) -> None:
    """aiosmtpd does not advertise PIPELINING: the batch runs one by one, every message once."""
    receiver = RecordingReceiver(out_dir=tmp_path / "rcv").start()
    try:
        items = batch("rcv.test")
        results, ext = send(receiver.host, receiver.port, items)
        assert "PIPELINING" not in ext
        assert_all_accepted(results)
        msgs = receiver.messages()
        assert len(msgs) == N
        bodies = {m["rcpt_tos"][0]: m["data"] for m in msgs}
        for _, (rcpt,), message, _ in items:
            assert bodies[rcpt] == message.data
    finally:
        receiver.stop()
