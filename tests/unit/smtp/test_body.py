"""DATA preparation: CRLF normalization and dot-stuffing (RFC 5321 §4.5.2; STANDARDS D01-D04)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.smtp.body import data_payload, dot_stuff, has_8bit, normalize_crlf, unstuff

# Bytes biased towards the characters that matter: CR, LF, "." and a few letters.
_messages = st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\xe9", b" "]), max_size=60).map(
    b"".join
)


def _has_bare_cr_or_lf(data: bytes) -> bool:
    return data.count(b"\r") != data.count(b"\r\n") or data.count(b"\n") != data.count(b"\r\n")


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        (b"a\nb", b"a\r\nb"),
        (b"a\rb", b"a\r\nb"),
        (b"a\r\nb", b"a\r\nb"),
        (b"a\r\r\nb", b"a\r\n\r\nb"),
        (b"a\n\rb", b"a\r\n\r\nb"),
        (b"", b""),
        # mostly normalized: one bare CR or LF among CRLFs, or as many CRs as LFs with none paired
        (b"a\rb\nc", b"a\r\nb\r\nc"),
        (b"\n\r", b"\r\n\r\n"),
        (b"a\r\n\rb\n", b"a\r\n\r\nb\r\n"),
        (b"\r\r\n\n", b"\r\n\r\n\r\n"),
        (b"x\r\ny\r", b"x\r\ny\r\n"),
        (b"\nx\r\ny", b"\r\nx\r\ny"),
    ],
)
def test_normalize_crlf(raw: bytes, normalized: bytes) -> None:
    """Bare CR and bare LF each become CRLF; CRLF stays one line break, also among bare ones."""
    assert normalize_crlf(raw) == normalized


def test_dot_stuff_lines() -> None:
    """Lines '.', '..', '.foo' and a dot at the very start each get one extra dot (D03)."""
    assert dot_stuff(b".\r\n..\r\n.foo\r\nbar.\r\n") == b"..\r\n...\r\n..foo\r\nbar.\r\n"


@pytest.mark.parametrize("attack", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r\n"])
def test_smuggling_sequences_are_neutralised(attack: bytes) -> None:
    """End-of-data lookalikes inside the body never survive as a terminator (D02)."""
    payload = data_payload(b"Subject: x\r\n\r\nhello" + attack + b"MAIL FROM:<evil@example>\r\n")
    assert payload.count(b"\r\n.\r\n") == 1
    assert payload.endswith(b"\r\n.\r\n")
    assert not _has_bare_cr_or_lf(payload)


def test_payload_adds_missing_final_crlf() -> None:
    """A body without a trailing line break gets one before the terminator (D04)."""
    assert data_payload(b"hello") == b"hello\r\n.\r\n"
    assert data_payload(b"hello\r\n") == b"hello\r\n.\r\n"


def test_empty_message_payload() -> None:
    """An empty message becomes one empty line plus the terminator."""
    assert data_payload(b"") == b"\r\n.\r\n"
    assert unstuff(data_payload(b"")) == b"\r\n"


def test_lone_dot_message() -> None:
    """A message that is a single '.' is sent stuffed, never as the terminator."""
    assert data_payload(b".") == b"..\r\n.\r\n"
    assert data_payload(b".\n") == b"..\r\n.\r\n"


def test_has_8bit() -> None:
    """Any octet >= 0x80 is 8-bit; pure ASCII is not."""
    assert has_8bit(b"caf\xc3\xa9")
    assert not has_8bit(b"plain ascii\r\n")


@given(_messages)
def test_stuff_round_trip(message: bytes) -> None:
    """unstuff(dot_stuff(x)) == x for CRLF-normalized x."""
    normalized = normalize_crlf(message)
    assert unstuff(dot_stuff(normalized)) == normalized


@given(_messages)
def test_payload_round_trip(message: bytes) -> None:
    """unstuff(data_payload(x)) is x normalized and CRLF-terminated."""
    normalized = normalize_crlf(message)
    expected = normalized if normalized.endswith(b"\r\n") else normalized + b"\r\n"
    assert unstuff(data_payload(message)) == expected


@given(_messages)
def test_payload_has_one_terminator_at_the_end(message: bytes) -> None:
    """The payload has exactly one CRLF.CRLF, at the end, and no bare CR or LF (D01, D02)."""
    payload = data_payload(message)
    assert payload.find(b"\r\n.\r\n") == len(payload) - 5
    assert not _has_bare_cr_or_lf(payload)
    assert not payload.startswith(b".\r\n")


@given(_messages)
def test_no_line_is_a_lone_dot(message: bytes) -> None:
    """Apart from the terminator, no line of the payload is a lone '.'."""
    lines = data_payload(message).split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    assert b"." not in lines[:-2]


@given(_messages)
def test_normalize_is_idempotent(message: bytes) -> None:
    """Normalizing twice changes nothing."""
    once = normalize_crlf(message)
    assert normalize_crlf(once) == once
    assert not _has_bare_cr_or_lf(once)


def _three_pass_normalize(data: bytes) -> bytes:
    """The plain rewrite normalize_crlf must match: CRLF to LF, CR to LF, LF to CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("data", [b"a\r\nb\r\n", b"\r\n", b"\r\n\r\n.\r\n", b"caf\xc3\xa9\r\n.x\r\n"])
def test_already_normalized_input_comes_back_unchanged(data: bytes) -> None:
    """Content with CRLF line ends only (every rendered message) is returned as it is."""
    assert normalize_crlf(data) == data


@given(_messages)
def test_normalize_matches_the_three_pass_rewrite(message: bytes) -> None:
    """The already-normalized shortcut never changes the result, whatever the line endings."""
    assert normalize_crlf(message) == _three_pass_normalize(message)
