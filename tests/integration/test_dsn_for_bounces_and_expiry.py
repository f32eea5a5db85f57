"""DSNs (RFC 3464): a failure at RCPT, at DATA and by expiry each reach the envelope sender, once."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from tests.integration.conftest import Mail
from tests.support.engine import Engine
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration

RULES = {"rcpt": [{"prefix": "bounce", "reply": "550 5.1.1 No such user here"},
                  {"prefix": "never", "reply": "550 5.1.1 No such user here"},
                  {"prefix": "defer", "reply": "451 4.3.0 Try again later"}],
         "data": [{"prefix": "datarej", "reply": "554 5.7.1 Message content rejected"}]}


def status_blocks(dsn: email.message.Message) -> list[email.message.Message]:
    (status,) = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
    return list(status.get_payload())  # per-message block, then one per recipient


@pytest.fixture
def world(tmp_path: Path):
    w = Mail(tmp_path, rules=RULES, ndomains=2).start()
    yield w
    w.stop()


def test_bounces_and_expiry_send_exactly_the_right_dsns(world: Mail, tmp_path: Path) -> None:
    """RCPT 550s of one message share one DSN; a DATA 554 and an expiry get their own; none for NEVER or <>."""
    extra = {"queue": {"retry_intervals_s": [0.5], "max_age_s": 4.0}}
    with Engine(tmp_path / "engine", dns_port=world.dns.port, dns_host=world.dns.host, smtp_port=world.port,
                extra=extra) as eng:
        owner = "owner@d000.test"
        body = "From: owner@d000.test\nSubject: hello\nMessage-ID: <m1@d000.test>\n\nbody\n"
        a = eng.inject({"envelope_sender": owner, "content": body, "dsn": {"ret": "FULL", "envid": "env-A"},
                        "recipients": ["ok1@d001.test", {"email": "bounce1@d001.test", "orcpt": "rfc822;b1@old.test"},
                                       "bounce2@d001.test", {"email": "never1@d001.test", "notify": "NEVER"}]})
        eng.inject({"envelope_sender": owner, "content": body, "recipients": ["datarej1@d001.test"]})
        eng.inject({"envelope_sender": owner, "content": body, "recipients": ["defer1@d001.test"]})
        eng.inject({"envelope_sender": "", "content": body, "recipients": ["bounce9@d001.test"]})  # null sender
        expected = {"ok1@d001.test", "bounce1@d001.test", "bounce2@d001.test", "never1@d001.test",
                    "datarej1@d001.test", "defer1@d001.test", "bounce9@d001.test"}
        wait_for(lambda: expected <= {e["recipient"] for e in eng.final_events()}, 60,
                 what="a final outcome for every recipient, including the expiry")
        finals = {e["recipient"]: e for e in eng.final_events() if e["recipient"] != owner}
        assert finals["ok1@d001.test"]["type"] == "Delivery"
        assert finals["defer1@d001.test"]["type"] == "Expiration"
        assert all(finals[r]["type"] == "Bounce" for r in ("bounce1@d001.test", "bounce2@d001.test",
                                                            "never1@d001.test", "datarej1@d001.test",
                                                            "bounce9@d001.test"))
        assert finals["bounce9@d001.test"].get("dsn") is None and finals["never1@d001.test"].get("dsn") is None

        def dsns() -> list[dict]:
            return [m for m in world.receivers[0].messages() if m["mail_from"] in ("", "<>")]

        wait_for(lambda: len(dsns()) >= 3, 30, what="three DSNs at the sender's receiver")
        got = {}
        for m in dsns():
            assert m["rcpt_tos"] == [owner]
            msg = email.message_from_bytes(m["data"], policy=email.policy.default)
            assert msg.get_content_type() == "multipart/report"
            assert msg.get_param("report-type") == "delivery-status"
            blocks = status_blocks(msg)
            assert blocks[0]["Reporting-MTA"] == "dns; mta.test"
            rcpts = sorted(b["Final-Recipient"].split(";")[1].strip() for b in blocks[1:])
            got[tuple(rcpts)] = (msg, blocks)
        assert set(got) == {("bounce1@d001.test", "bounce2@d001.test"), ("datarej1@d001.test",),
                            ("defer1@d001.test",)}
        msg, blocks = got[("bounce1@d001.test", "bounce2@d001.test")]
        assert blocks[0]["Original-Envelope-Id"] == "env-A"
        b1 = next(b for b in blocks[1:] if "bounce1" in b["Final-Recipient"])
        assert b1["Action"] == "failed" and b1["Status"] == "5.1.1"
        assert b1["Original-Recipient"].replace(" ", "") == "rfc822;b1@old.test"
        assert "550" in b1["Diagnostic-Code"] and b1["Remote-MTA"]
        assert [p.get_content_type() for p in msg.iter_parts()][2] == "message/rfc822"  # RET=FULL
        _, blocks = got[("datarej1@d001.test",)]
        assert blocks[1]["Status"] == "5.7.1" and "554" in blocks[1]["Diagnostic-Code"]
        msg, blocks = got[("defer1@d001.test",)]
        assert blocks[1]["Action"] == "failed" and blocks[1]["Status"].startswith("4.")
        assert [p.get_content_type() for p in msg.iter_parts()][2] == "text/rfc822-headers"  # RET=HDRS default
        assert a["success_count"] == 4
        wait_for(lambda: len(dsns()) == 3, 5, what="exactly three DSNs")
