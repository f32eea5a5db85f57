"""Inbound reports: read, correlated through the origin index, and committed with their suppressions."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mta_engine.dsn.classify import Classifier
from mta_engine.dsn.verp import message_id, return_path, sign
from mta_engine.ingest.commit import GroupCommitter, write_submissions
from mta_engine.ingest.inbound import read_report, report_events
from mta_engine.ingest.inject import parse_request
from mta_engine.spool import suppress
from mta_engine.spool.origin import OriginIndex
from mta_engine.spool.store import Spool
from tests.support import reports as R

T0 = 1_700_000_000_000
DOMAINS = frozenset({"bounce.test"})
C = Classifier.default()


_KEY: list[bytes | None] = [None]  # the current test spool's signing key (set by the spool fixture)


@pytest.fixture
def spool(tmp_path: Path):
    s = Spool(tmp_path / "spool", map_size_mb=64)
    _KEY[0] = s.verp_key()
    yield s
    s.close()


@pytest.fixture
def origin(spool: Spool) -> OriginIndex:
    return OriginIndex(spool, retention_s=30 * 86400)


def queue(spool: Spool, origin: OriginIndex, rcpts: list[str], tenant: str | None = "acme") -> int:
    body = {"envelope_sender": "news@sender.test", "content": "From: news@sender.test\n\nx", "recipients": rcpts,
            "campaign": "spring"}
    if tenant:
        body["tenant"] = tenant
    (msg_id,) = write_submissions(spool, [parse_request(body, now_s=T0 / 1000, boundary="b")], T0, origin=origin)
    assert msg_id is not None
    return msg_id


def read(raw: bytes, rcpt: str = "bounces@bounce.test", mail_from: str = ""):
    return read_report(raw, mail_from=mail_from, rcpt_tos=[rcpt], domains=DOMAINS, classifier=C)


def apply(spool: Spool, origin: OriginIndex | None, rep) -> list[dict]:
    with spool.write() as txn:
        return report_events(spool, origin, rep, txn, T0 + 60_000)


def orig(msg_id: int, index: int, to: str) -> str:
    """Returned headers of our message to recipient ``index`` (its signed engine Message-ID)."""
    return R.original_headers(message_id=f"<{message_id(msg_id, index, 'mta.test', _KEY[0])}>", to=to)


def verp(msg_id: int, index: int | None = None) -> str:
    """Our signed VERP address for one recipient, or for a whole message (a shared-body transaction)."""
    return return_path("news@sender.test", msg_id, [index] if index is not None else [0, 1], "bounce.test", _KEY[0])


def suppressed(spool: Spool, tenant: str | None, address: str):
    with spool.read() as txn:
        return suppress.is_suppressed(txn, spool, tenant, address)


def test_verp_bounce_names_our_recipient_and_suppresses_it(spool, origin) -> None:
    """A DSN to bounces+<id>.<index>: OOB with tenant, campaign, the address we sent to; invalid → suppressed."""
    msg_id = queue(spool, origin, ["a@example.net", "gone@example.net"])
    rep = read(R.postfix_dsn("GONE@example.net", R.original_headers(message_id="<x@y>")),
               rcpt=verp(msg_id, 1))
    assert rep.kind == "oob"
    oob, sup = apply(spool, origin, rep)
    assert oob["type"] == "OOB" and oob["queue_id"] == f"{msg_id:016x}.1" and oob["correlation"] == "verp"
    assert (oob["tenant"], oob["campaign"], oob["sender"]) == ("acme", "spring", "news@sender.test")
    assert oob["recipient"] == "gone@example.net" and oob["reported_recipient"] == "GONE@example.net"
    assert (oob["category"], oob["permanence"], oob["enhanced"], oob["code"]) == ("invalid_recipient", "permanent",
                                                                                 "5.1.1", 550)
    assert sup["type"] == "Suppressed" and sup["tenant"] == "acme" and sup["source"] == f"oob:{msg_id:016x}.1"
    entry = suppressed(spool, "acme", "gone@example.net")
    assert entry is not None and entry.reason.startswith("invalid_recipient: 550 5.1.1")
    assert suppressed(spool, "globex", "gone@example.net") is None


@pytest.mark.parametrize("forged", ["unsigned", "wrong_tag", "other_key"])
def test_forged_reference_to_a_real_recipient_suppresses_nothing(spool, origin, forged: str) -> None:
    """Queue ids are sequential: a bounce naming a real one without this spool's tag is not ours to
    trust. It is logged uncorrelated and nobody is suppressed (dsn/verp.py signs every reference)."""
    msg_id = queue(spool, origin, ["victim@example.net"])
    ref = f"{msg_id:016x}.0"
    local = {"unsigned": ref, "wrong_tag": f"{ref}-{'0' * 10}",
             "other_key": f"{ref}-{sign(b'another engine', ref)}"}[forged]
    for rep in (read(R.postfix_dsn("victim@example.net", R.original_headers(message_id="<x@y>")),
                     rcpt=f"bounces+{local}@bounce.test"),
                read(R.gmail_dsn("victim@example.net", R.original_headers(message_id=f"<{local}@mta.test>")))):
        oob = apply(spool, origin, rep)
        assert [e["type"] for e in oob] == ["OOB"], oob
        assert oob[0]["correlation"] == "none" and "tenant" not in oob[0], oob
    assert suppressed(spool, "acme", "victim@example.net") is None


def test_message_id_correlates_when_verp_is_off(spool, origin) -> None:
    """Without VERP, the returned original's Message-ID <queue_id>.<index>@host finds the recipient."""
    msg_id = queue(spool, origin, ["old@exim.example"])
    rep = read(R.exim_text_bounce("old@exim.example", orig(msg_id, 0, "old@exim.example")))
    oob, sup = apply(spool, origin, rep)
    assert oob["correlation"] == "message_id" and oob["category"] == "inactive_mailbox" and oob["format"] == "text"
    assert sup["recipient"] == "old@exim.example"


def test_mailbox_full_and_delays_are_logged_but_never_suppress(spool, origin) -> None:
    """Only permanent invalid/inactive outcomes suppress (STANDARDS B04); a delay warning never does."""
    msg_id = queue(spool, origin, ["full@example.net", "slow@example.net"])
    full = read(R.postfix_dsn("full@example.net", orig(msg_id, 0, "full@example.net"), status="5.2.2",
                              diagnostic="smtp; 552 5.2.2 Mailbox full"))
    slow = read(R.postfix_dsn("slow@example.net", orig(msg_id, 1, "slow@example.net"), action="delayed",
                              status="4.4.1", diagnostic="X-Postfix; connection timed out"))
    (ev1,) = apply(spool, origin, full)
    (ev2,) = apply(spool, origin, slow)
    assert ev1["category"] == "mailbox_full" and ev2["action"] == "delayed" and ev2["permanence"] == "transient"
    assert suppressed(spool, "acme", "full@example.net") is None and suppressed(spool, "acme", "slow@example.net") is None


def test_uncorrelated_bounce_is_logged_without_tenant_and_suppresses_nothing(spool, origin) -> None:
    """A bounce naming no message we know: an OOB event with correlation none, no suppression."""
    rep = read(R.gmail_dsn("stranger@example.net", R.original_headers(message_id="<abc@elsewhere>")))
    (ev,) = apply(spool, origin, rep)
    assert ev["correlation"] == "none" and ev["queue_id"] is None and "tenant" not in ev
    assert ev["recipient"] == "stranger@example.net"
    assert suppressed(spool, None, "stranger@example.net") is None
    rep = read(R.gmail_dsn("stranger@example.net", orig(0xDEAD, 0, "x@y.test")))  # unknown queue id
    (ev,) = apply(spool, origin, rep)
    assert ev["queue_id"] == f"{0xDEAD:016x}.0" and ev["correlation"] == "none"


def test_message_level_ref_does_not_suppress_an_address_that_was_not_a_recipient(spool, origin) -> None:
    """With only the message known, the reported address must be one of its recipients to be suppressed."""
    msg_id = queue(spool, origin, ["a@example.net", "b@example.net"])
    rep = read(R.postfix_dsn("victim@example.net", R.original_headers(message_id="<x@y>")),
               rcpt=verp(msg_id))
    (ev,) = apply(spool, origin, rep)
    assert ev["recipient_match"] is False and ev["queue_id"] == f"{msg_id:016x}"
    assert suppressed(spool, "acme", "victim@example.net") is None
    rep = read(R.postfix_dsn("b@example.net", R.original_headers(message_id="<x@y>")),
               rcpt=verp(msg_id))
    ev, sup = apply(spool, origin, rep)
    assert "recipient_match" not in ev and sup["recipient"] == "b@example.net"


def test_complaint_with_redacted_recipient_suppresses_the_address_we_sent_to(spool, origin) -> None:
    """An Outlook JMRP abuse report (recipient redacted) → Feedback + 'complaint' suppression of our address."""
    msg_id = queue(spool, origin, ["x@example.net", "fan@outlook.example"], tenant=None)
    rep = read(R.jmrp_arf(orig(msg_id, 1, "fan@outlook.example")), rcpt="fbl@bounce.test")
    assert rep.kind == "feedback"
    fb, sup = apply(spool, origin, rep)
    assert fb["type"] == "Feedback" and fb["feedback_type"] == "abuse" and fb["user_agent"] == "Microsoft-JMRP/1.0"
    assert fb["recipient"] == "fan@outlook.example" and fb["queue_id"] == f"{msg_id:016x}.1"
    assert fb["source_ip"] == "192.0.2.10" and fb["campaign"] == "spring" and fb["tenant"] is None
    entry = suppressed(spool, None, "fan@outlook.example")
    assert entry is not None and entry.reason == "complaint: abuse report from Microsoft-JMRP/1.0"
    assert sup["source"] == f"fbl:{msg_id:016x}.1"


def test_not_spam_feedback_is_logged_but_does_not_suppress(spool, origin) -> None:
    """Only abuse complaints suppress; not-spam is recorded as a Feedback event only."""
    msg_id = queue(spool, origin, ["c@yahoo.example"])
    rep = read(R.yahoo_arf("c@yahoo.example", orig(msg_id, 0, "c@yahoo.example"),
                           mail_from=verp(msg_id, 0), feedback_type="not-spam"))
    (fb,) = apply(spool, origin, rep)
    assert fb["feedback_type"] == "not-spam" and fb["correlation"] == "verp"
    assert suppressed(spool, "acme", "c@yahoo.example") is None


def test_garbage_and_autoreplies_are_classified_not_recorded(spool, origin) -> None:
    """Spam to the bounce domain is unparsable; a success-only DSN is ignored; neither writes events."""
    spam = read(b"From: promo@spam.example\r\nSubject: Cheap watches\r\n\r\nBuy now\r\n", mail_from="promo@spam.example")
    ok = read(R.postfix_dsn("ok@example.net", orig(1, 0, "ok@example.net"), action="delivered", status="2.0.0"))
    assert spam.kind == "unparsable" and ok.kind == "ignored"
    ooo = b"From: Al <al@x.test>\r\nSubject: Away\r\n\r\nI am away; <al@x.test> 550 no\r\n"
    assert read(ooo, mail_from="<>").kind == "oob"  # the null sender as aiosmtpd reports it counts as null
    assert read(ooo, mail_from="al@x.test").kind == "unparsable"
    assert apply(spool, origin, spam) == [] and apply(spool, origin, ok) == []
    assert read(b"\x00\xff\xfe" * 1000).kind == "unparsable"


def test_inbound_events_share_the_group_commit_and_reach_the_outbox(spool, origin) -> None:
    """submit_op runs in the same synced commit as submissions; its events land in the outbox in order."""
    msg_id = queue(spool, origin, ["gone@example.net"])
    rep = read(R.gmail_dsn("gone@example.net", orig(msg_id, 0, "gone@example.net")))
    committer = GroupCommitter(spool, origin=origin, clock=lambda: T0 / 1000 + 60)

    async def run() -> int | None:
        body = {"envelope_sender": "n@s.test", "content": "From: n@s.test\n\nx", "recipients": ["gone@example.net"],
                "tenant": "acme"}
        sub = parse_request(body, now_s=T0 / 1000, boundary="b")
        from functools import partial
        op = partial(report_events, spool, origin, rep)
        done = await asyncio.gather(committer.submit_op(op), committer.submit(sub))
        return done[1]

    try:
        second = asyncio.run(run())
    finally:
        committer.close()
    # one commit: submissions are checked before the batch's reports apply, so this one was still queued
    assert committer.commits == 1 and committer.submissions == 1 and second is not None
    with spool.read() as txn:
        types = [e["type"] for e in spool.events_after(txn, 0)]
    assert types == ["Reception", "Reception", "OOB", "Suppressed"]
    assert suppressed(spool, "acme", "gone@example.net") is not None
