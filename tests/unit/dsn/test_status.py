"""RFC 3463 status helpers and RFC 3461 xtext (STANDARDS B05, X09)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.dsn.status import (
    default_status,
    is_status,
    parse_enhanced,
    status_for,
    subject_name,
    xtext_decode,
    xtext_encode,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1", (5, 1, 1)),
        ("5.1.1 user unknown", (5, 1, 1)),
        ("550 5.1.1 user unknown", (5, 1, 1)),
        ("550-5.7.26 unauthenticated", (5, 7, 26)),
        ("#4.4.7 expired", (4, 4, 7)),
        ("5.2.121 quota", (5, 2, 121)),
    ],
)
def test_parse_enhanced_finds_the_code(text: str, expected: tuple[int, int, int]) -> None:
    """The enhanced code is found at the start of the text, after any reply code."""
    assert parse_enhanced(text) == expected


@pytest.mark.parametrize("text", ["", "user unknown", "550 user unknown", "3.1.1 x", "5.1 x",
                                  "5.1.1x", "5.1.1.1", "5.1234.1", "550 5.1.1.2 odd"])
def test_parse_enhanced_rejects_non_codes(text: str) -> None:
    """Text that does not start with class.subject.detail (class 2, 4 or 5) gives None."""
    assert parse_enhanced(text) is None


@pytest.mark.parametrize(("code", "expected"), [(250, "2.0.0"), (421, "4.0.0"), (552, "5.0.0")])
def test_default_status_follows_the_reply_class(code: int, expected: str) -> None:
    """A reply without an enhanced code gets X.0.0 of its own class."""
    assert default_status(code) == expected


@pytest.mark.parametrize("code", [354, 199, 600, 0])
def test_default_status_refuses_non_final_codes(code: int) -> None:
    """Codes that are not a final 2xx/4xx/5xx reply have no status class."""
    with pytest.raises(ValueError):
        default_status(code)


def test_status_for_uses_an_agreeing_enhanced_code() -> None:
    """An enhanced code whose class matches the reply code is reported as is (string or tuple)."""
    assert status_for(550, "5.1.1") == "5.1.1"
    assert status_for(451, (4, 7, 1)) == "4.7.1"


def test_status_for_derives_when_classes_disagree() -> None:
    """RFC 3463 §2: a 550 carrying 4.2.2 is contradictory, so the reply code decides."""
    assert status_for(550, "4.2.2") == "5.0.0"
    assert status_for(452, (5, 2, 2)) == "4.0.0"


def test_status_for_derives_when_enhanced_is_missing_or_garbage() -> None:
    """No enhanced code, or an unparsable one, gives the reply class's X.0.0."""
    assert status_for(554, None) == "5.0.0"
    assert status_for(421, "not a code") == "4.0.0"


@pytest.mark.parametrize(
    ("status", "name"),
    [("5.0.0", "other"), ("5.1.1", "addressing"), ("4.2.2", "mailbox"), ("5.3.4", "mail system"),
     ("4.4.1", "network/routing"), ("5.5.1", "protocol"), ("5.6.7", "content/media"),
     ("5.7.26", "security/policy"), ("5.9.1", "other")],
)
def test_subject_name_per_rfc_3463(status: str, name: str) -> None:
    """Each RFC 3463 §3 subject has its triage name; unknown subjects are "other"."""
    assert subject_name(status) == name


def test_subject_name_rejects_non_status() -> None:
    """A string that is not class.subject.detail is refused."""
    assert not is_status("550")
    with pytest.raises(ValueError):
        subject_name("550")


def test_xtext_encodes_plus_equals_space_and_controls() -> None:
    """RFC 3461 §4: "+", "=", space and controls become +XX with upper-case hex."""
    assert xtext_encode("a+b=c d\r") == "a+2Bb+3Dc+20d+0D"
    assert xtext_encode("rfc822;user@example.org") == "rfc822;user@example.org"


def test_xtext_decodes_lower_case_hex() -> None:
    """Lower-case hex digits are accepted when decoding (tolerant reader)."""
    assert xtext_decode("a+2bb") == "a+b"


@pytest.mark.parametrize("bad", ["a+", "a+2", "a+ZZ", "a b", "a=b", "é", "+FF"])
def test_xtext_decode_rejects_malformed(bad: str) -> None:
    """Bad hexchars, characters outside "!".."~", a bare "=" and non-UTF-8 octets are errors."""
    with pytest.raises(ValueError):
        xtext_decode(bad)


@given(st.text())
def test_xtext_round_trips(text: str) -> None:
    """decode(encode(x)) == x for any text, and the encoding is printable ASCII without "="."""
    encoded = xtext_encode(text)
    assert xtext_decode(encoded) == text
    assert all(0x21 <= ord(c) <= 0x7E and c != "=" for c in encoded)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                      blacklist_characters="+=")))
def test_xtext_leaves_xchars_alone(text: str) -> None:
    """Plain xchars encode to themselves."""
    assert xtext_encode(text) == text
