"""``SmtpSession.run_transactions`` against the fault server: one message per recipient, pipelined
across transactions (RFC 2920 §3.1; BDAT: RFC 3030 §4.2). Every reply lands on its own message; a
421 or a lost connection leaves the message being answered deferred or UNKNOWN and the ones
already written "not attempted" (or UNKNOWN when their BDAT LAST had gone out); content never
follows a refused DATA; nothing of a refused transaction counts as delivered."""

from __future__ import annotations

import asyncio
import pytest

from mta_engine.delivery.outcome import Outcome, transaction_outcomes
from mta_engine.delivery.session import SmtpSession, SmtpTimeouts, TransactionItem, TransactionResult
from mta_engine.smtp.body import PreparedMessage
from tests.support.faultserver import FaultServer, Script

pytestmark = pytest.mark.integration
TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5, final_s=5,
                        quit_s=5, tls_s=5)
MODES = pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
VERBS = {"EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "QUIT"}


def message(i: int, size: int = 0) -> PreparedMessage:
    return PreparedMessage(b"Subject: m%d\n\n.leading dot\nbody of %d\n%s" % (i, i, b"x" * size))


def items(n: int, **sizes: int) -> list[TransactionItem]:
    return [("a@example.com", [f"r{i}@example.net"], message(i, sizes.get(f"r{i}", 0)), None) for i in range(n)]


async def _run(script: Script, batch: list[TransactionItem], *, bdat: bool, warmup: bool = False
               ) -> tuple[list[TransactionResult], FaultServer, SmtpSession]:
    script.chunking = bdat
    async with FaultServer(script) as server:
        session = await SmtpSession.open("127.0.0.1", server.port, ehlo_name="client.test", timeouts=TIMEOUTS,
                                         mx_name="mx.test", chunking=bdat)
        try:
            if warmup:
                await session.transaction("w@example.com", ["w@example.net"], message(99))
            results = await session.run_transactions(batch)
        finally:
            await session.close()
        return results, server, session


def run(script: Script, batch: list[TransactionItem], *, bdat: bool, warmup: bool = False
        ) -> tuple[list[TransactionResult], FaultServer, SmtpSession]:
    return asyncio.run(_run(script, batch, bdat=bdat, warmup=warmup))


def outcomes(results: list[TransactionResult]) -> dict[int, Outcome]:
    out: dict[int, Outcome] = {}
    for i, result in enumerate(results):
        (o,), again = transaction_outcomes([i], result)
        assert again == []
        out[i] = o
    return out


def delivered(results: list[TransactionResult]) -> set[int]:
    return {i for i, o in outcomes(results).items() if 200 <= o[1] < 300}


def arrived(server: FaultServer) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    for m in server.messages:
        (rcpt,) = m.rcpts
        assert rcpt not in got, f"{rcpt} arrived twice"
        got[rcpt] = m.body
    return got


@MODES
def test_every_message_arrives_once_and_byte_identical(bdat: bool) -> None:
    """Ten pipelined transactions: each delivered once, with exactly its own content."""
    results, server, _ = run(Script(), items(10), bdat=bdat)
    assert delivered(results) == set(range(10))
    assert arrived(server) == {f"r{i}@example.net": message(i).data for i in range(10)}
    assert set(server.commands) <= VERBS
    assert ("BDAT" in server.commands) is bdat


@MODES
def test_next_transaction_is_sent_before_the_final_reply(bdat: bool) -> None:
    """The server holds every 250 to the end of the data until the next command arrives: only a
    client that writes the next transaction behind the data (one round trip per message) gets on."""
    results, server, _ = run(Script(hold_final=4), items(5), bdat=bdat)
    assert [r.error for r in results] == [None] * 5
    assert delivered(results) == set(range(5)) and len(arrived(server)) == 5


def test_no_rset_between_transactions_after_a_dot() -> None:
    """DATA: the dot's reply ends the transaction (RFC 5321 §4.1.1.4): no RSET inside the batch."""
    _, server, _ = run(Script(), items(4), bdat=False)
    assert server.commands == ["EHLO", *["MAIL", "RCPT", "DATA"] * 4, "QUIT"]


@MODES
def test_a_used_session_starts_the_batch_with_rset(bdat: bool) -> None:
    """A session that already carried a transaction sends RSET before the batch (T01/T09)."""
    results, server, _ = run(Script(), items(2), bdat=bdat, warmup=True)
    assert delivered(results) == {0, 1}
    verbs = server.commands
    second_mail = [n for n, verb in enumerate(verbs) if verb == "MAIL"][1]
    assert verbs[second_mail - 1] == "RSET"  # the batch's first MAIL follows an RSET


@MODES
def test_421_after_a_dot_with_the_next_group_sent(bdat: bool) -> None:
    """421 to the third message's end of data: it is deferred with the 421 (not delivered, not
    unknown), the fourth, already written, is not attempted (451 4.4.2), the fifth never started."""
    results, server, session = run(Script(actions={"dot": "421 4.3.2 shutting down"}, after={"dot": 2}),
                                   items(5), bdat=bdat)
    assert len(results) == 4 and not session.usable
    out = outcomes(results)
    assert {0, 1} == delivered(results)
    assert out[2][1:3] == (421, "4.3.2") and out[2][5] is False
    assert out[3][1:3] == (451, "4.4.2") and "not attempted" in out[3][3] and out[3][5] is False
    assert "r3@example.net" not in arrived(server) and "r4@example.net" not in arrived(server)


@MODES
def test_connection_drop_after_the_dot(bdat: bool) -> None:
    """The server drops the connection on the third end of data: that message is UNKNOWN; the
    fourth is UNKNOWN too when its BDAT LAST had already gone out, else not attempted."""
    results, server, _ = run(Script(actions={"dot": "close"}, after={"dot": 2}), items(5), bdat=bdat)
    out = outcomes(results)
    assert len(results) == 4 and delivered(results) == {0, 1}
    assert out[2][1:3] == (451, "4.4.2") and out[2][5] is True
    assert out[3][1:3] == (451, "4.4.2") and out[3][5] is bdat
    assert set(arrived(server)) >= {"r0@example.net", "r1@example.net"}


@MODES
def test_550_on_the_rcpt_of_the_next_transaction(bdat: bool) -> None:
    """550 to the RCPT of a transaction written behind the previous dot: that recipient bounces,
    its content is never taken, the ones around it are delivered."""
    script = Script(rcpt_replies={"r2@example.net": "550 5.1.1 no such user"})
    results, server, session = run(script, items(5), bdat=bdat)
    out = outcomes(results)
    assert delivered(results) == {0, 1, 3, 4} and session.transactions == 5
    assert out[2][1:3] == (550, "5.1.1") and out[2][4] == "rcpt"
    assert results[2].data is not None and not results[2].data.is_success  # 554 to DATA or BDAT
    assert set(arrived(server)) == {f"r{i}@example.net" for i in (0, 1, 3, 4)}
    assert set(server.commands) <= VERBS  # no content line was taken for a command


@MODES
def test_mail_refused_in_the_middle_of_a_batch(bdat: bool) -> None:
    """451 to one MAIL: that message is deferred with the 451, nothing of it arrives; the others do."""
    results, server, _ = run(Script(actions={"mail": "451 4.3.0 try later"}, after={"mail": 1}, times={"mail": 1}),
                             items(4), bdat=bdat)
    out = outcomes(results)
    assert delivered(results) == {0, 2, 3} and out[1][1:3] == (451, "4.3.0")
    assert set(arrived(server)) == {f"r{i}@example.net" for i in (0, 2, 3)}


def test_data_refused_sends_no_content_and_resets() -> None:
    """DATA answered 451: no content goes out (D07), RSET opens the next transaction, which arrives."""
    script = Script(actions={"data": "451 4.3.0 not now"}, after={"data": 1}, times={"data": 1})
    results, server, _ = run(script, items(3), bdat=False)
    out = outcomes(results)
    assert delivered(results) == {0, 2} and out[1][1:3] == (451, "4.3.0") and out[1][4] == "data"
    assert set(server.commands) <= VERBS
    assert server.commands == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT",
                               "DATA", "QUIT"]
    assert set(arrived(server)) == {"r0@example.net", "r2@example.net"}


def test_no_valid_recipient_means_no_354_and_no_content() -> None:
    """Every RCPT of one transaction refused: its DATA gets 554, no content, the next still arrives."""
    script = Script(rcpt_replies={"r1@example.net": "450 4.2.1 mailbox busy"})
    results, server, _ = run(script, items(3), bdat=False)
    assert results[1].data is not None and results[1].data.code == 554 and results[1].phase == "data"
    assert delivered(results) == {0, 2} and set(server.commands) <= VERBS


@MODES
def test_local_size_refusal_never_touches_the_wire(bdat: bool) -> None:
    """A message over the advertised SIZE is refused locally (552 5.3.4); the batch goes on around it."""
    results, server, _ = run(Script(size=5000), items(4, r1=10_000), bdat=bdat)
    out = outcomes(results)
    assert results[1].local and out[1][1:3] == (552, "5.3.4")
    assert delivered(results) == {0, 2, 3}
    assert server.commands.count("MAIL") == 3


def test_multi_chunk_message_goes_alone_between_pipelined_ones() -> None:
    """A message over one BDAT chunk waits for the others' replies, then goes chunk by chunk."""
    batch = items(4, r2=2_500_000)
    results, server, _ = run(Script(), batch, bdat=True)
    assert delivered(results) == set(range(4))
    assert arrived(server) == {f"r{i}@example.net": item[2].data for i, item in enumerate(batch)}
    assert sum(1 for line in server.received if line.startswith(b"BDAT")) > 4


def test_without_pipelining_transactions_run_one_by_one() -> None:
    """No PIPELINING: lock-step, one transaction after another (RSET between, as ``transaction``)."""
    results, server, _ = run(Script(extensions=["8BITMIME"], hold_final=0), items(3), bdat=False)
    assert delivered(results) == {0, 1, 2}
    assert server.commands == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "RSET", "MAIL",
                               "RCPT", "DATA", "QUIT"]


def test_stalled_final_reply_times_out_with_the_next_unknown_only_for_bdat() -> None:
    """No reply to the second BDAT LAST: a timeout; that message and the one written behind it
    (its content already out) are UNKNOWN: they may have arrived."""
    results, _, _ = run(Script(actions={"dot": "stall"}, after={"dot": 1}), items(4), bdat=True)
    out = outcomes(results)
    assert delivered(results) == {0}
    assert out[1][5] is True and out[2][5] is True and len(results) == 3
