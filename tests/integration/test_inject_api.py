"""The HTTP inject API refuses malformed requests with reasons and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engine import Engine

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(mail, tmp_path: Path):
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                workers=1) as eng:
        yield eng


@pytest.mark.parametrize("body, field", [
    ({"content": "From: a@b.test\n\nx", "recipients": ["a@d000.test"]}, "envelope_sender"),
    ({"envelope_sender": "a@b.test", "recipients": ["a@d000.test"]}, "content"),
    ({"envelope_sender": "a@b.test", "content": "From: a@b.test\n\nx", "recipients": []}, "recipients"),
    ({"envelope_sender": "a@b.test", "content": "no header separator", "recipients": ["a@d000.test"]}, "content"),
    ({"envelope_sender": "a@b.test", "content": "From: a@b.test\n\n{{ oops", "recipients": ["a@d000.test"]},
     "content"),
    ({"envelope_sender": "a@b.test", "content": {"from": {"email": "a@b.test"}}, "recipients": ["a@d000.test"]},
     "content"),
    ({"envelope_sender": "a@b.test", "content": "From: a@b.test\n\nx", "recipients": ["a@d000.test"],
      "priority": 42}, "priority"),
    ({"envelope_sender": "a@b.test", "content": "From: a@b.test\n\nx", "recipients": ["a@d000.test"],
      "colour": "blue"}, "colour"),
])
def test_malformed_request_is_400_with_reason_and_writes_nothing(engine: Engine, body: dict, field: str) -> None:
    """Each malformed request gets 400 naming the bad field, and the spool stays empty."""
    answer = engine.inject(body, expect_status=400)
    assert field in answer["fields"], answer
    assert answer["fields"][field]
    q = engine.status()["queue"]
    assert q["messages"] == 0 and q["recipients"] == 0


def test_invalid_recipient_fails_only_that_recipient(engine: Engine, mail) -> None:
    """An invalid address is listed in failed_recipients; the others are queued and delivered."""
    answer = engine.inject({"envelope_sender": "a@sender.test", "content": "From: a@sender.test\n\nx\n",
                            "recipients": ["good@d000.test", "no-at-sign", {"email": "a b@d000.test"}]})
    assert answer["success_count"] == 1 and answer["fail_count"] == 2
    assert answer["failed_recipients"] == ["no-at-sign", "a b@d000.test"]
    assert len(answer["errors"]) == 2 and len(answer["queue_ids"]) == 1
    finals = engine.wait_final(1)
    assert [(e["recipient"], e["type"]) for e in finals] == [("good@d000.test", "Delivery")]


def test_built_content_renders_per_recipient(engine: Engine, mail) -> None:
    """The content object form builds a multipart message with the recipient's own variables."""
    engine.inject({"envelope_sender": "a@sender.test", "campaign": "spring", "tenant": "acme",
                   "substitutions": {"brand": "Acme"},
                   "content": {"subject": "Hi {{ first_name }} from {{ brand }}",
                               "from": {"email": "news@sender.test", "name": "News"},
                               "text_body": "Hello {{ first_name }}", "html_body": "<b>{{ first_name }}</b>",
                               "headers": {"List-Unsubscribe": "<https://u.test/{{ email }}>"}},
                   "recipients": [{"email": "ann@d000.test", "name": "Ann", "substitutions": {"first_name": "Ann"}},
                                  {"email": "bob@d000.test", "substitutions": {"first_name": "Bob"}}]})
    finals = engine.wait_final(2)
    assert {e["campaign"] for e in finals} == {"spring"} and {e["tenant"] for e in finals} == {"acme"}
    (reception,) = engine.events("Reception")  # logged once per message, before its outcomes
    assert reception["recipient_count"] == 2 and reception["campaign"] == "spring"
    assert reception["event_seq"] < min(e["event_seq"] for e in finals)
    import email
    import email.policy

    msgs = {m["rcpt_tos"][0]: email.message_from_bytes(m["data"], policy=email.policy.default)
            for m in mail.receivers[0].messages()}
    ann = msgs["ann@d000.test"]
    assert ann["Subject"] == "Hi Ann from Acme"
    assert ann["To"] == "Ann <ann@d000.test>"
    assert ann["From"] == "News <news@sender.test>"
    assert ann.get_content_type() == "multipart/alternative"
    assert ann.get_body(("plain",)).get_content().strip() == "Hello Ann"
    assert ann.get_body(("html",)).get_content().strip() == "<b>Ann</b>"
    assert msgs["bob@d000.test"]["Subject"] == "Hi Bob from Acme"
    assert ann["Message-ID"] != msgs["bob@d000.test"]["Message-ID"]
    assert ann["Date"] and ann["MIME-Version"] == "1.0"
