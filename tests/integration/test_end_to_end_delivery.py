"""End to end: HTTP inject -> LMDB spool -> manager -> workers -> real receivers via real DNS."""

from __future__ import annotations

import collections
import concurrent.futures
from pathlib import Path

import pytest

from tests.support.engine import Engine

pytestmark = pytest.mark.integration

RAW = ("From: News <news@sender.test>\nTo: {{ email }}\nSubject: Hello {{ first_name }}\n"
       "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
       "Hi {{ first_name }},\n.\n..leading dots stay\n.x\r\nbare CR\rline\nbye\n")


def expected_body(email: str, first: str) -> bytes:
    """What the receiver must see: the template filled in, every line ending CRLF."""
    text = RAW.replace("{{ email }}", email).replace("{{ first_name }}", first)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode()


def test_10000_recipients_over_200_domains_arrive_exactly_once(mail, tmp_path: Path) -> None:
    """Every injected recipient arrives exactly once, byte-identical, with one final log line each."""
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port) as eng:
        rcpts = [{"email": f"user{i}@{mail.domains[i % 200]}", "substitutions": {"first_name": f"N{i}"}}
                 for i in range(10_000)]
        batches = [rcpts[i:i + 2000] for i in range(0, 10_000, 2000)]
        with concurrent.futures.ThreadPoolExecutor(5) as pool:  # concurrent requests share commits
            answers = list(pool.map(lambda b: eng.inject({"envelope_sender": "bounces@sender.test",
                                                          "content": RAW, "recipients": b, "campaign": "e2e"}),
                                    batches))
        assert sum(a["success_count"] for a in answers) == 10_000
        assert all(a["fail_count"] == 0 and len(a["queue_ids"]) == 1 for a in answers)
        finals = eng.wait_final(10_000, timeout_s=240)
        assert collections.Counter(e["type"] for e in finals) == {"Delivery": 10_000}
        assert len(eng.events("Reception")) == 5  # one per accepted message
        ids = collections.Counter(e["queue_id"] for e in finals)
        assert len(ids) == 10_000 and max(ids.values()) == 1
        got = collections.Counter(mail.delivered_rcpts())
        assert set(got) == {r["email"] for r in rcpts}
        assert max(got.values()) == 1
        first_names = {r["email"]: r["substitutions"]["first_name"] for r in rcpts}
        checked = 0
        for receiver in mail.receivers:
            for m in receiver.messages():
                (rcpt,) = m["rcpt_tos"]
                assert m["data"] == expected_body(rcpt, first_names[rcpt])
                assert m["mail_from"] == "bounces@sender.test"
                checked += 1
        assert checked > 4000  # half of the domains are on the two aiosmtpd receivers
        st = eng.status()
        assert st["queue"]["recipients"] == 0 and st["queue"]["messages"] == 0


def test_shared_body_is_sent_once_per_transaction_with_many_rcpts(mail, tmp_path: Path) -> None:
    """A body without template syntax goes to up to 100 recipients of one domain in one transaction."""
    raw = "From: news@sender.test\nSubject: same for all\n\nOne body for everyone.\n"
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port) as eng:
        rcpts = [f"u{i}@{mail.domains[0]}" for i in range(250)] + [f"v{i}@{mail.domains[1]}" for i in range(50)]
        eng.inject({"envelope_sender": "b@sender.test", "content": raw, "recipients": rcpts})
        eng.wait_final(300)
        msgs = mail.receivers[0].messages() + mail.receivers[1].messages()
        sizes = sorted(len(m["rcpt_tos"]) for m in msgs)
        assert sum(sizes) == 300
        assert max(sizes) == 100  # default cap of RCPTs per transaction
        assert len(msgs) <= 6  # 250 -> 3 transactions, 50 -> 1 (a few more if jobs interleave)
        assert all(m["data"] == b"From: news@sender.test\r\nSubject: same for all\r\n\r\nOne body for everyone.\r\n"
                   for m in msgs)


def test_rcpt_550_bounces_and_451_defers_exactly_those(mail_with_rules, tmp_path: Path) -> None:
    """A receiver that refuses some local parts with 550 and 451: bounced and deferred exactly those."""
    mail = mail_with_rules
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                extra={"queue": {"retry_intervals_s": [3600.0]}}) as eng:
        ok = [f"ok{i}@{mail.domains[i % 2]}" for i in range(30)]
        bounce = [f"bounce{i}@{mail.domains[i % 2]}" for i in range(7)]
        defer = [f"defer{i}@{mail.domains[i % 2]}" for i in range(5)]
        everyone = ok + bounce + defer
        eng.inject({"envelope_sender": "b@sender.test", "dsn": False,  # DSNs are tested on their own
                    "content": "From: b@sender.test\nSubject: s\n\nbody\n", "recipients": everyone})
        eng.wait_final(len(ok) + len(bounce))

        def by_type(t: str) -> set[str]:
            return {e["recipient"] for e in eng.events(t)}

        assert by_type("Delivery") == set(ok)
        assert by_type("Bounce") == set(bounce)
        assert all(e["code"] == 550 and e["enhanced"] == "5.1.1" for e in eng.events("Bounce"))
        from tests.support.procs import wait_for

        wait_for(lambda: by_type("TransientFailure") == set(defer), 30, what="a TransientFailure per deferred rcpt")
        assert all(e["code"] == 451 and e["enhanced"] == "4.3.0" for e in eng.events("TransientFailure"))
        st = eng.status()
        assert st["queue"]["recipients"] == len(defer)  # the deferred wait for their retry
        assert sorted(mail.delivered_rcpts()) == sorted(ok)


def test_dns_failures_bounce_without_connecting(mail, tmp_path: Path) -> None:
    """NXDOMAIN bounces with 5.1.2 and a null MX (RFC 7505) with 556 5.1.10; nothing is sent."""
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port) as eng:
        eng.inject({"envelope_sender": "b@sender.test", "content": "From: b@sender.test\n\nx\n",
                    "recipients": ["a@nowhere.test", "b@nullmx.test"]})
        finals = {e["recipient"]: e for e in eng.wait_final(2)}
        assert finals["a@nowhere.test"]["type"] == "Bounce" and finals["a@nowhere.test"]["enhanced"] == "5.1.2"
        assert finals["b@nullmx.test"]["code"] == 556 and finals["b@nullmx.test"]["enhanced"] == "5.1.10"
        assert mail.delivered_rcpts() == []
