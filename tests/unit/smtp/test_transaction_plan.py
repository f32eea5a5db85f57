"""plan_transaction: SIZE, 8BITMIME, SMTPUTF8 and CHUNKING decided before anything is sent."""

from __future__ import annotations

import pytest

from mta_engine.smtp.body import PreparedMessage
from mta_engine.smtp.events import Bdat, BdatLast, Payload
from mta_engine.smtp.reply import Reply
from mta_engine.smtp.transaction import TransactionPlan, plan_transaction

ASCII = PreparedMessage(b"Subject: x\n\nhello\n")  # 21 octets with CRLFs
EIGHT = PreparedMessage(b"Subject: x\nContent-Type: text/plain; charset=utf-8\n\ncaf\xc3\xa9\n")
EIGHT_HEADERS = PreparedMessage(b"Subject: caf\xc3\xa9\n\ncaf\xc3\xa9\n")


def plan(extensions: dict[str, str], message: PreparedMessage = ASCII, rcpts: list[str] | None = None,
         **kwargs: object) -> TransactionPlan | Reply:
    return plan_transaction(extensions, "a@example.com", rcpts or ["b@example.net"], message,
                            server="mx.test", **kwargs)  # type: ignore[arg-type]


def test_no_extensions_means_plain_mail_and_data() -> None:
    """Without extensions MAIL has no parameters and the body goes with DATA."""
    p = plan({})
    assert isinstance(p, TransactionPlan)
    assert p.mail.to_bytes() == b"MAIL FROM:<a@example.com>\r\n"
    assert p.body == Payload(ASCII.dot_stuffed) and not p.uses_bdat


@pytest.mark.parametrize("advertised", ["", "0", "21", "junk"])
def test_size_parameter_when_advertised(advertised: str) -> None:
    """SIZE=<octets> goes on MAIL whenever SIZE is advertised; alone, 0 or garbage is no limit (RFC 1870 §3)."""
    p = plan({"SIZE": advertised})
    assert isinstance(p, TransactionPlan)
    assert p.mail.params == ("SIZE=21",)


def test_size_over_limit_is_refused_locally() -> None:
    """A message over the advertised limit gets a local 552 5.3.4 naming both sizes (RFC 1870 §4, X04)."""
    refusal = plan({"SIZE": "20"})
    assert refusal == Reply(552, ("5.3.4 message size 21 exceeds the limit 20 advertised by mx.test",))
    assert refusal.enhanced == "5.3.4"


def test_8bit_uses_body_8bitmime_when_advertised() -> None:
    """8-bit content with 8BITMIME advertised sends BODY=8BITMIME and the content unchanged (RFC 6152 §3)."""
    p = plan({"8BITMIME": "", "SIZE": ""}, EIGHT)
    assert isinstance(p, TransactionPlan)
    assert p.mail.params == (f"SIZE={EIGHT.size}", "BODY=8BITMIME")
    assert p.body == Payload(EIGHT.dot_stuffed)


def test_8bit_to_7bit_server_is_converted() -> None:
    """Without 8BITMIME the 7-bit form is sent, with no BODY parameter and its own SIZE."""
    seven = EIGHT.seven_bit()
    assert seven is not None
    p = plan({"SIZE": ""}, EIGHT)
    assert isinstance(p, TransactionPlan)
    assert p.mail.params == (f"SIZE={seven.size}",)
    assert isinstance(p.body, Payload) and p.body.data.isascii()


def test_8bit_headers_to_7bit_server_is_554_5_6_3() -> None:
    """Unconvertible 8-bit content to a 7-bit server is refused locally with 5.6.3, never sent raw (X06)."""
    refusal = plan({}, EIGHT_HEADERS)
    assert isinstance(refusal, Reply) and (refusal.code, refusal.enhanced) == (554, "5.6.3")


def test_smtputf8_message_without_extension_is_553_5_6_7() -> None:
    """A message that needs SMTPUTF8 is refused locally when it is not advertised (RFC 6531 §3.4, X08)."""
    refusal = plan({"8BITMIME": ""}, PreparedMessage(b"x", smtputf8=True))
    assert isinstance(refusal, Reply) and (refusal.code, refusal.enhanced) == (553, "5.6.7")
    refusal = plan_transaction({}, "jö@example.com", ["b@example.net"], ASCII, server="mx.test")
    assert isinstance(refusal, Reply) and refusal.enhanced == "5.6.7"


def test_utf8_recipient_without_extension_is_refused_alone() -> None:
    """Only the recipient with a UTF-8 local part is refused; the others go, domains as A-labels."""
    p = plan({}, rcpts=["jö@example.net", "b@bücher.example"])
    assert isinstance(p, TransactionPlan)
    assert [(i, r.address) for i, r in p.rcpts] == [(1, "b@xn--bcher-kva.example")]
    assert list(p.refused) == [0] and p.refused[0].code == 553


def test_all_recipients_refused_is_a_local_refusal() -> None:
    """When no recipient can be sent, the whole transaction is refused locally."""
    refusal = plan({}, rcpts=["jö@example.net"])
    assert isinstance(refusal, Reply) and refusal.code == 553


def test_smtputf8_parameter_only_when_needed() -> None:
    """SMTPUTF8 goes on MAIL only when an address or the message needs it; UTF-8 then stays UTF-8."""
    ext = {"SMTPUTF8": "", "8BITMIME": ""}
    ascii_plan = plan(ext, rcpts=["b@bücher.example"])
    assert isinstance(ascii_plan, TransactionPlan) and "SMTPUTF8" not in ascii_plan.mail.params
    assert ascii_plan.rcpts[0][1].address == "b@xn--bcher-kva.example"
    utf8_plan = plan(ext, rcpts=["b@example.net", "jö@bücher.example"])
    assert isinstance(utf8_plan, TransactionPlan) and utf8_plan.mail.params == ("SMTPUTF8",)
    assert [r.address for _, r in utf8_plan.rcpts] == ["b@example.net", "jö@bücher.example"]


def test_chunking_only_when_enabled_and_advertised() -> None:
    """BDAT replaces DATA only when both sides want it; chunks end with one BdatLast (RFC 3030 §2)."""
    assert not plan({"CHUNKING": ""}).uses_bdat  # type: ignore[union-attr]
    assert not plan({}, chunking=True).uses_bdat  # type: ignore[union-attr]
    p = plan({"CHUNKING": ""}, chunking=True, chunk_octets=8)
    assert isinstance(p, TransactionPlan) and isinstance(p.body, tuple)
    assert [type(c) for c in p.body] == [Bdat, Bdat, BdatLast]
    assert b"".join(c.chunk for c in p.body) == ASCII.data


def test_caller_mail_params_come_last() -> None:
    """Parameters given by the caller follow the ones the plan adds."""
    p = plan({"SIZE": ""}, mail_params=("RET=HDRS",))
    assert isinstance(p, TransactionPlan) and p.mail.params == ("SIZE=21", "RET=HDRS")


def test_dsn_parameters_are_passed_on_only_when_advertised() -> None:
    """RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT go out (xtext-encoded) only to a server with DSN (RFC 3461)."""
    from mta_engine.smtp.body import PreparedMessage as PM
    from mta_engine.smtp.transaction import DsnParams, plan_transaction

    msg = PM(b"Subject: x\r\n\r\nbody\r\n")
    dsn = DsnParams("HDRS", "batch 7+", (("FAILURE,DELAY", "rfc822;old=addr@x.test"), (None, None)))
    plan = plan_transaction({"DSN": ""}, "s@x.test", ["a@y.test", "b@y.test"], msg, server="mx", dsn=dsn)
    assert "RET=HDRS" in plan.mail.params and "ENVID=batch+207+2B" in plan.mail.params
    (_, first), (_, second) = plan.rcpts
    assert first.params == ("NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;old+3Daddr@x.test")
    assert second.params == ()
    plain = plan_transaction({}, "s@x.test", ["a@y.test", "b@y.test"], msg, server="mx", dsn=dsn)
    assert not any(p.startswith(("RET=", "ENVID=")) for p in plain.mail.params)
    assert all(r.params == () for _, r in plain.rcpts)


def test_a_shared_body_is_checked_once_and_the_same_payload_goes_to_every_transaction() -> None:
    """Plans for the same PreparedMessage share one validated Payload (it scans every octet)."""
    message = PreparedMessage(b"Subject: s\r\n\r\n.leading dot\r\nbody\r\n")
    ext = {"PIPELINING": "", "SIZE": "0"}
    first = plan_transaction(ext, "s@x.test", ["a@y.test"], message, server="mx")
    second = plan_transaction(ext, "s@x.test", ["b@y.test"], message, server="mx")
    assert isinstance(first, TransactionPlan) and isinstance(second, TransactionPlan)
    assert first.body is second.body is message.payload
    assert isinstance(first.body, Payload) and first.body.data.endswith(b"\r\n..leading dot\r\nbody\r\n.\r\n")
