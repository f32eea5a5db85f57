"""A delivered message later bounced out of band (VERP) and complained about (ARF): OOB and Feedback are
logged, both addresses are suppressed for the tenant, and new submissions to them are refused."""
from __future__ import annotations

import email
import email.policy
import re
import smtplib
from pathlib import Path

import pytest

from tests.support import reports as R
from tests.support.engine import Engine
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.integration


def send(port: int, mail_from: str, rcpt: str, raw: bytes) -> tuple[int, bytes]:
    """One SMTP transaction to the inbound listener; the reply to the final dot."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("mx.remote.test")
        code, _ = s.mail(mail_from)
        assert code == 250
        code, reply = s.rcpt(rcpt)
        if code != 250:
            return code, reply
        return s.data(raw)


def test_oob_bounce_and_complaint_are_logged_and_suppress(mail, tmp_path: Path) -> None:
    """VERP bounce → OOB invalid_recipient; redacted JMRP complaint → Feedback abuse; both refuse resubmission."""
    d0, d1 = mail.domains[0], mail.domains[1]
    inbound_port = free_port()
    extra = {"inbound": {"listen": f"127.0.0.1:{inbound_port}", "domains": ["bounce.test"]},
             "delivery": {"verp_domain": "bounce.test"}}
    gone, fan = f"gone@{d0}", f"fan@{d1}"
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                extra=extra) as eng:
        ans = eng.inject({"envelope_sender": "news@sender.test", "tenant": "acme", "campaign": "spring",
                          "content": {"subject": "Spring sale", "from": {"email": "news@sender.test"},
                                      "text_body": "Hello {{ email }}"},
                          "recipients": [gone, fan]})
        assert ans["success_count"] == 2
        eng.wait_final(2)
        qid = ans["queue_ids"][0]
        got = {m["rcpt_tos"][0]: m for r in mail.receivers for m in r.messages()}
        # VERP, one recipient per transaction, each reference signed with the spool's key (dsn/verp.py)
        assert re.fullmatch(rf"bounces\+{qid}\.0-[0-9a-f]{{10}}@bounce\.test", got[gone]["mail_from"]), got[gone]
        assert re.fullmatch(rf"bounces\+{qid}\.1-[0-9a-f]{{10}}@bounce\.test", got[fan]["mail_from"]), got[fan]
        delivered = email.message_from_bytes(got[fan]["data"], policy=email.policy.compat32)
        assert re.fullmatch(rf"<{qid}\.1-[0-9a-f]{{10}}@mta\.test>", delivered["Message-ID"])
        gone_mid = email.message_from_bytes(got[gone]["data"], policy=email.policy.compat32)["Message-ID"]

        # relay attempts are refused at RCPT
        code, _ = send(inbound_port, "", "someone@elsewhere.test", b"Subject: x\r\n\r\nx\r\n")
        assert code == 550
        # the remote host accepted gone@ and bounces it later, to the VERP address
        dsn = R.postfix_dsn(gone, R.original_headers(message_id=gone_mid, to=gone),
                            to=got[gone]["mail_from"])
        code, reply = send(inbound_port, "", got[gone]["mail_from"], dsn)
        assert code == 250 and b"bounce recorded" in reply
        # the complaint: recipient redacted, the original's headers as the provider returns them
        head = got[fan]["data"].replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode().replace("\n", "\r\n") + "\r\n"
        code, reply = send(inbound_port, "staff@hotmail.example", "fbl@bounce.test", R.jmrp_arf(head))
        assert code == 250 and b"feedback report recorded" in reply
        # garbage is accepted and dropped, never retried
        code, reply = send(inbound_port, "promo@spam.example", "fbl@bounce.test",
                           b"From: promo@spam.example\r\nSubject: deals\r\n\r\nBuy\r\n")
        assert code == 250 and b"discarded" in reply

        (oob,) = wait_for(lambda: eng.events("OOB") or None, 30, what="OOB event")
        assert (oob["queue_id"], oob["recipient"], oob["tenant"], oob["campaign"]) == (f"{qid}.0", gone, "acme",
                                                                                    "spring")
        assert (oob["category"], oob["permanence"], oob["code"], oob["enhanced"], oob["correlation"]) == (
            "invalid_recipient", "permanent", 550, "5.1.1", "verp")
        (fb,) = wait_for(lambda: eng.events("Feedback") or None, 30, what="Feedback event")
        assert (fb["queue_id"], fb["recipient"], fb["tenant"], fb["feedback_type"]) == (f"{qid}.1", fan, "acme",
                                                                                      "abuse")
        assert fb["user_agent"] == "Microsoft-JMRP/1.0" and fb["source_ip"] == "192.0.2.10"
        sup = wait_for(lambda: (lambda s: s if len(s) == 2 else None)(eng.events("Suppressed")), 30,
                       what="two Suppressed events")
        assert {(s["recipient"], s["tenant"]) for s in sup} == {(gone, "acme"), (fan, "acme")}

        ans = eng.inject({"envelope_sender": "news@sender.test", "tenant": "acme",
                          "content": "From: news@sender.test\n\nagain\n", "recipients": [gone, fan]})
        assert ans["success_count"] == 0 and sorted(ans["failed_recipients"]) == sorted([gone, fan]), ans
        reasons = " | ".join(ans["errors"])
        assert "complaint: abuse report from Microsoft-JMRP/1.0" in reasons and "invalid_recipient: 550 5.1.1" in reasons
        ans = eng.inject({"envelope_sender": "news@sender.test", "tenant": "globex",
                          "content": "From: news@sender.test\n\nother tenant\n", "recipients": [fan]})
        assert ans["success_count"] == 1  # suppression is per tenant


def test_inbound_listener_offers_starttls_and_records_reports_over_it(mail, tmp_path: Path) -> None:
    """[inbound] tls_cert/tls_key: STARTTLS is advertised (RFC 3207), a report sent after it is
    taken as usual, and a client that stays in plaintext is still served (bounces must get through).
    It connects as soon as the engine is ready: ingest's /health answers only once its inbound
    listener accepts (it once failed here with "connection refused" when HTTP came up first)."""
    import ssl

    from tests.support.certs import make_certs

    certs = make_certs(tmp_path / "certs", ["bounce.test"])
    port = free_port()
    extra = {"inbound": {"listen": f"127.0.0.1:{port}", "domains": ["bounce.test"],
                         "tls_cert": certs.cert_file, "tls_key": certs.key_file}}
    garbage = b"From: promo@spam.example\r\nSubject: deals\r\n\r\nBuy\r\n"
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                extra=extra):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("remote.example")
            assert s.has_extn("starttls")
            ctx = ssl.create_default_context(cafile=certs.ca_file)
            ctx.check_hostname = False  # connected by address; the chain is still verified
            s.starttls(context=ctx)
            assert isinstance(s.sock, ssl.SSLSocket) and s.sock.version() in ("TLSv1.2", "TLSv1.3")
            s.ehlo("remote.example")
            assert not s.has_extn("starttls")
            s.mail("")
            code, _ = s.rcpt("fbl@bounce.test")
            assert code == 250
            code, reply = s.data(garbage)
            assert code == 250 and b"discarded" in reply
        code, reply = send(port, "", "fbl@bounce.test", garbage)  # plaintext still works
        assert code == 250 and b"discarded" in reply
