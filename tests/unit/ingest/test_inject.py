"""Inject request validation: KumoMTA shape in, Submission out; malformed means InjectError per field."""

from __future__ import annotations

import pytest

from mta_engine.errors import InjectError
from mta_engine.ingest.inject import parse_request


def parse(body: dict):
    return parse_request(body, now_s=1_700_000_000.0, boundary="b1")


def test_raw_template_content_is_per_recipient() -> None:
    """A raw message with Jinja syntax is a template rendered per recipient."""
    sub = parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nHi {{ first_name }}",
                 "recipients": [{"email": "a@y.test", "substitutions": {"first_name": "A"}}],
                 "campaign": "c", "tenant": "t", "priority": 3})
    assert sub.template and sub.per_recipient
    assert sub.recipients == [("a@y.test", None, {"first_name": "A"})]
    assert (sub.campaign, sub.tenant, sub.priority) == ("c", "t", 3)


def test_raw_plain_content_is_shared() -> None:
    """A raw message without template syntax is one shared body."""
    sub = parse({"envelope_sender": "", "content": "From: s@x.test\n\nsame", "recipients": ["a@y.test", "b@y.test"]})
    assert not sub.template and not sub.per_recipient and sub.sender == ""


def test_invalid_recipients_fail_alone() -> None:
    """Bad addresses go to failed/errors; good ones are kept, in order."""
    sub = parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx",
                 "recipients": ["ok@y.test", "nope", "a@b@c.test", "x@-bad-.test", "ok2@y.test", "jörg@bücher.test"]})
    assert [r[0] for r in sub.recipients] == ["ok@y.test", "ok2@y.test", "jörg@bücher.test"]
    assert sub.failed == ["nope", "a@b@c.test", "x@-bad-.test"]
    assert len(sub.errors) == 3 and sub.errors[0].startswith("recipients[1]: 'nope': ")
    mixed = parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx",
                   "recipients": ["a@y.test", {"email": "nope"}, {"email": "b@y.test", "name": "B"}]})
    assert mixed.recipients == [("a@y.test", None, None), ("b@y.test", "B", None)]
    assert mixed.failed == ["nope"] and mixed.errors[0].startswith("recipients[1]: 'nope': ")


def test_every_bad_field_is_reported_at_once() -> None:
    """One InjectError lists every malformed field by path."""
    with pytest.raises(InjectError) as info:
        parse({"envelope_sender": 5, "content": {"from": "bad", "text_body": 3, "headers": {"Subject": "x"}},
               "recipients": "a@b.test", "priority": "high", "extra": 1})
    fields = info.value.errors
    for key in ("envelope_sender", "content.from.email", "content.text_body", "content.headers.Subject",
                "recipients", "priority", "extra"):
        assert key in fields, (key, fields)


def test_broken_template_is_refused_at_the_door() -> None:
    """A template syntax error is a 400 at ingest, not a bounce at delivery."""
    with pytest.raises(InjectError) as info:
        parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\n{% if %}", "recipients": ["a@y.test"]})
    assert "template syntax error" in info.value.errors["content"]


def test_overlong_line_in_raw_content_is_refused() -> None:
    """A raw line over 998 octets is refused (RFC 5322 §2.1.1)."""
    with pytest.raises(InjectError) as info:
        parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\n" + "x" * 999, "recipients": ["a@y.test"]})
    assert "998" in info.value.errors["content"]


def test_dsn_parameters_are_accepted_and_checked() -> None:
    """NOTIFY/ORCPT per recipient and RET/ENVID per message are stored; bad values are named."""
    sub = parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx",
                 "dsn": {"ret": "FULL", "envid": "batch-7"},
                 "recipients": [{"email": "a@y.test", "notify": "failure,delay", "orcpt": "rfc822;a@y.test"},
                                "b@y.test"]})
    assert (sub.dsn, sub.ret, sub.envid) == (True, "FULL", "batch-7")
    assert sub.dsn_params == [("FAILURE,DELAY", "rfc822;a@y.test"), (None, None)]
    assert parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx", "dsn": False,
                  "recipients": ["a@y.test"]}).dsn is False
    with pytest.raises(InjectError) as info:
        parse({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx", "dsn": {"ret": "ALL"},
               "recipients": [{"email": "a@y.test", "notify": "NEVER,FAILURE"}, {"email": "b@y.test", "orcpt": "x"}]})
    assert set(info.value.errors) == {"dsn.ret", "recipients[0].notify", "recipients[1].orcpt"}
