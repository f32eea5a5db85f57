"""Rendering: shared bodies render once; templates per recipient; built messages are valid MIME."""

from __future__ import annotations

import email
import email.policy

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.ingest.inject import parse_request
from mta_engine.template.render import MAX_LINE_OCTETS, MessageTemplate, _encode_part, fold_header


def spec_of(content, **extra):
    body = {"envelope_sender": "s@x.test", "content": content, "recipients": ["a@y.test"], **extra}
    return parse_request(body, now_s=1_700_000_000.0, boundary="b1").spec


def test_shared_body_is_the_same_object_for_everyone() -> None:
    """A body without template syntax is rendered once and shared."""
    t = MessageTemplate(spec_of("From: s@x.test\n\nsame\n"))
    a = t.render(address="a@y.test", name=None, variables=None, message_id="1@x")
    b = t.render(address="b@y.test", name=None, variables={"q": 1}, message_id="2@x")
    assert a is b and a == b"From: s@x.test\r\n\r\nsame\r\n"


def test_variables_precedence() -> None:
    """Recipient substitutions override email/name, which override top-level substitutions."""
    t = MessageTemplate(spec_of("From: s@x.test\n\n{{ a }} {{ email }} {{ name }}", substitutions={"a": "top", "email": "z"}))
    out = t.render(address="r@y.test", name="R", variables={"a": "mine"}, message_id="m@x")
    assert out.endswith(b"mine r@y.test R")


def test_built_message_parses_and_keeps_8bit_text() -> None:
    """A built message parses with the stdlib; non-ASCII text is 8bit (converted per server), headers RFC 2047."""
    spec = spec_of({"subject": "Grüße {{ n }}", "from": {"email": "s@x.test", "name": "Sénder"},
                    "text_body": "Hallo {{ n }} — schön", "html_body": "<p>{{ n }}</p>",
                    "reply_to": "r@x.test", "headers": {"X-Campaign-Id": "{{ n }}-7"}})
    t = MessageTemplate(spec)
    raw = t.render(address="a@y.test", name="Ä B", variables={"n": "Jo"}, message_id="q.0@mta.test")
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert head.isascii() and not raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Grüße Jo"
    assert msg["From"] == "Sénder <s@x.test>" and msg["To"] == "Ä B <a@y.test>"
    assert msg["Message-ID"] == "<q.0@mta.test>" and msg["X-Campaign-Id"] == "Jo-7"
    assert msg["Reply-To"] == "r@x.test"
    plain = msg.get_body(("plain",))
    assert plain["Content-Transfer-Encoding"] == "8bit"
    assert plain.get_content().rstrip() == "Hallo Jo — schön"
    assert msg.get_body(("html",))["Content-Transfer-Encoding"] == "7bit"


def test_fold_header_keeps_lines_short() -> None:
    """Long header values are folded to at most 78 characters per line (RFC 5322 §2.1.1)."""
    folded = fold_header("Subject", "word " * 40)
    assert all(len(line) <= 78 for line in folded.split("\r\n"))
    assert folded.endswith("\r\n")


def test_overlong_line_is_quoted_printable() -> None:
    """A part with a line over 998 octets is quoted-printable encoded (RFC 5322 §2.1.1)."""
    t = MessageTemplate(spec_of({"subject": "s", "from": {"email": "s@x.test"}, "text_body": "y" * 1500}))
    raw = t.render(address="a@y.test", name=None, variables=None, message_id="q.0@mta.test")
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_templates_see_jinja_globals_and_variables_win_over_them() -> None:
    """The fast render path keeps Template.render's lookups: globals (range...) exist, variables override them."""
    t = MessageTemplate(spec_of({"subject": "{% for i in range(3) %}{{ i }}{% endfor %} {{ cycler }}",
                                 "from": "s@x.test", "text_body": "{% set n = 5 %}{{ n }} {{ joiner is defined }}"},
                                substitutions={"cycler": "mine"}))
    raw = t.render(address="a@y.test", name=None, variables=None, message_id="m@x")
    assert b"Subject: 012 mine\r\n" in raw
    assert b"5 True" in raw


def test_set_in_one_part_does_not_leak_into_another() -> None:
    t = MessageTemplate(spec_of({"subject": "{% set who = 'S' %}{{ who }}", "from": "s@x.test",
                                 "text_body": "[{{ who }}]"}, substitutions={"who": "T"}))
    raw = t.render(address="a@y.test", name=None, variables=None, message_id="m@x")
    assert b"Subject: S\r\n" in raw and raw.endswith(b"[T]")


def test_a_template_error_at_render_time_raises() -> None:
    t = MessageTemplate(spec_of("From: s@x.test\n\n{{ 1 // zero }}", substitutions={"zero": 0}))
    with pytest.raises(ZeroDivisionError):
        t.render(address="a@y.test", name=None, variables=None, message_id="m@x")


def test_non_ascii_subject_is_encoded_once_per_campaign() -> None:
    """The slow RFC 2047 path is cached: a constant non-ASCII Subject costs one encoding, same bytes every time."""
    from mta_engine.template import render

    t = MessageTemplate(spec_of({"subject": "Orchard Letter — November", "from": "s@x.test", "text_body": "{{ n }}"}))
    before = render._fold_slow.cache_info()
    outs = {t.render(address=f"a{i}@y.test", name=None, variables={"n": i}, message_id="m@x").split(b"\r\n\r\n")[0]
            .split(b"Subject: ")[1].split(b"\r\n")[0] for i in range(5)}
    after = render._fold_slow.cache_info()
    assert outs == {b"=?utf-8?q?Orchard_Letter_=E2=80=94_November?="}
    assert after.hits - before.hits >= 4


def _reference_encode_part(text: str) -> tuple[bytes, str]:
    """The plain form of _encode_part: split into lines for the longest, CRLF-convert the text."""
    data = text.encode("utf-8")
    if max(map(len, data.split(b"\n"))) <= MAX_LINE_OCTETS:
        crlf = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
        return crlf.encode("utf-8"), "7bit" if data.isascii() else "8bit"
    qp = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True)
    return qp.replace(b"\n", b"\r\n"), "quoted-printable"


@pytest.mark.parametrize(
    ("text", "octets", "cte"),
    [
        ("a\r\nb", b"a\r\nb", "7bit"),
        ("a\rb", b"a\r\nb", "7bit"),
        ("a\nb\n", b"a\r\nb\r\n", "7bit"),
        ("a\r\nb\rc\nd\n\r", b"a\r\nb\r\nc\r\nd\r\n\r\n", "7bit"),
        ("caf\u00e9\r\n.x\r", "caf\u00e9\r\n.x\r\n".encode(), "8bit"),
        ("", b"", "7bit"),
    ],
)
def test_text_part_gets_crlf_line_ends(text: str, octets: bytes, cte: str) -> None:
    """CRLF, bare CR and bare LF in a text part all become CRLF in its octets."""
    assert _encode_part(text) == (octets, cte)


@pytest.mark.parametrize(
    ("text", "cte"),
    [
        ("y" * MAX_LINE_OCTETS, "7bit"),
        ("y" * (MAX_LINE_OCTETS + 1), "quoted-printable"),
        ("y" * MAX_LINE_OCTETS + "\r\nz", "quoted-printable"),  # the CR is counted before conversion
        ("y" * (MAX_LINE_OCTETS - 1) + "\r\nz", "7bit"),
        ("x" * 5 + "\n" + "y" * (MAX_LINE_OCTETS + 1) + "\nz", "quoted-printable"),  # spans one probe
        ("x" * 500 + "\n" + "y" * MAX_LINE_OCTETS + "\n" + "z" * MAX_LINE_OCTETS, "7bit"),
        (("y" * MAX_LINE_OCTETS + "\n") * 5, "7bit"),
        ("y" * 3000, "quoted-printable"),
        ("x" * 2500 + "\n" + "y" * 1200, "quoted-printable"),  # the long line comes last
        ("\u00e9" * 499 + "\n", "8bit"),  # 499 characters, 998 octets: fits
        ("\u00e9" * 500, "quoted-printable"),  # 500 characters, 1,000 octets
    ],
)
def test_only_a_line_over_998_octets_makes_a_part_quoted_printable(text: str, cte: str) -> None:
    """Line length is counted in octets between LFs, wherever the long line sits in the part."""
    assert _encode_part(text) == _reference_encode_part(text)
    assert _encode_part(text)[1] == cte


def test_a_long_line_is_found_wherever_it_starts() -> None:
    """At every offset, ended by an LF or by the part, 999 octets is quoted-printable and 998 is not."""
    for start in range(MAX_LINE_OCTETS + 2):
        lead = "x" * (start - 1) + "\n" if start else ""
        for tail in ("", "\nz"):
            assert _encode_part(lead + "y" * (MAX_LINE_OCTETS + 1) + tail)[1] == "quoted-printable", (start, tail)
            assert _encode_part(lead + "y" * MAX_LINE_OCTETS + tail)[1] == "7bit", (start, tail)


_part_texts = st.lists(
    st.one_of(st.sampled_from(["\r", "\n", "\r\n", ".", "\u00e9", " "]),
              st.integers(min_value=0, max_value=2100).map(lambda n: "y" * n)),
    max_size=8,
).map("".join)


@given(_part_texts)
def test_encode_part_matches_splitting_into_lines(text: str) -> None:
    """Octets and Content-Transfer-Encoding are those of the plain split-and-convert form."""
    assert _encode_part(text) == _reference_encode_part(text)


@pytest.mark.parametrize("template", [False, True])
def test_raw_message_with_mixed_line_ends_renders_with_crlf_only(template: bool) -> None:
    """A raw message's CRLF, bare CR and bare LF all come out as CRLF, shared or per recipient."""
    tail = "{{ n }}" if template else "x"
    t = MessageTemplate(spec_of(f"From: s@x.test\r\nSubject: caf\u00e9\n\na\rb\r\n.c\n{tail}\r"))
    raw = t.render(address="a@y.test", name=None, variables={"n": "x"}, message_id="m@x")
    assert raw == "From: s@x.test\r\nSubject: caf\u00e9\r\n\r\na\r\nb\r\n.c\r\nx\r\n".encode()
