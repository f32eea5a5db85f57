"""Reply values and the incremental reply parser (RFC 5321 §4.2, RFC 3463; STANDARDS R01-R07)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.errors import RemoteProtocolError
from mta_engine.smtp.reply import MAX_LINE_OCTETS, MAX_REPLY_OCTETS, Reply, ReplyParser


def parse_all(data: bytes) -> list[Reply]:
    return ReplyParser().feed(data)


def test_single_line_reply() -> None:
    """A one-line reply gives its code, its text and no enhanced code."""
    assert parse_all(b"250 OK\r\n") == [Reply(250, ("OK",))]


def test_seven_line_reply_with_empty_lines() -> None:
    """A 7-line reply keeps every line, including lines with no text (R01)."""
    data = b"250-mx.example\r\n250-\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-\r\n250\r\n"
    (reply,) = parse_all(data)
    assert reply.lines == ("mx.example", "", "PIPELINING", "SIZE 1000", "8BITMIME", "", "")
    assert reply.code == 250


def test_bare_lf_line_ends_are_tolerated() -> None:
    """Servers that end lines with a bare LF still parse (tolerant reader)."""
    assert parse_all(b"250-a\n250 b\n") == [Reply(250, ("a", "b"))]


def test_reply_waits_for_the_last_line() -> None:
    """A multi-line reply is not returned until its final (space) line arrives."""
    parser = ReplyParser()
    assert parser.feed(b"250-a\r\n250-b\r") == []
    assert parser.feed(b"\n250 c\r\n") == [Reply(250, ("a", "b", "c"))]


def test_byte_by_byte_feeding() -> None:
    """Feeding one byte at a time yields the same replies as one chunk."""
    data = b"220 hi\r\n250-x\r\n250 y\r\n354 go ahead\r\n"
    parser = ReplyParser()
    out: list[Reply] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    assert out == parse_all(data)
    assert [r.code for r in out] == [220, 250, 354]


@pytest.mark.parametrize(
    ("text", "enhanced"),
    [
        ("5.1.1 no such user", "5.1.1"),
        ("#5.1.0 Address rejected", "5.1.0"),
        ("5.7.606 Access denied, banned sending IP", "5.7.606"),
        ("4.4.7 expired", "4.4.7"),
        ("2.0.0", "2.0.0"),
        ("OK", None),
        ("5.1 nope", None),
        ("3.1.1 class 3 is not a status class", None),
        ("5.1.1234 detail too long", None),
        ("5.1.1-nospace", None),
    ],
)
def test_enhanced_status_code(text: str, enhanced: str | None) -> None:
    """The RFC 3463 class.subject.detail is parsed from the first line's text, with '#' allowed."""
    (reply,) = parse_all(b"550 " + text.encode() + b"\r\n")
    assert reply.enhanced == enhanced
    assert reply.lines == (text,)


def test_basic_and_enhanced_codes_may_disagree() -> None:
    """A 550 carrying 4.4.7 keeps both values without failing (R06)."""
    (reply,) = parse_all(b"550 4.4.7 Message expired\r\n")
    assert (reply.code, reply.enhanced, reply.is_permanent) == (550, "4.4.7", True)


def test_long_line_is_kept_whole() -> None:
    """Lines over 512 octets but under the cap are tolerated and never truncated (R07)."""
    text = "x" * 4000
    (reply,) = parse_all(b"550 " + text.encode() + b"\r\n")
    assert reply.text == text


@pytest.mark.parametrize(
    "data",
    [
        b"250-a\r\n251 b\r\n",  # code changes within a reply
        b"2x0 hi\r\n",  # non-digit code
        b"hello\r\n",
        b"150 preliminary\r\n",  # class 1 is not an SMTP reply class
        b"650 six\r\n",
        b"25\r\n",  # too short
        b"\r\n",  # empty line
    ],
)
def test_malformed_replies_raise(data: bytes) -> None:
    """Mismatched, non-digit or out-of-range codes are RemoteProtocolError (R02)."""
    with pytest.raises(RemoteProtocolError):
        parse_all(data)


def test_line_over_cap_without_newline_raises() -> None:
    """An unterminated line past the 8 KiB cap fails before the newline arrives."""
    parser = ReplyParser()
    with pytest.raises(RemoteProtocolError, match="line longer"):
        parser.feed(b"250 " + b"x" * MAX_LINE_OCTETS)


def test_reply_over_cap_raises() -> None:
    """A multi-line reply past 64 KiB in total fails."""
    line = b"250-" + b"y" * 1000 + b"\r\n"
    with pytest.raises(RemoteProtocolError, match="reply longer"):
        parse_all(line * (MAX_REPLY_OCTETS // len(line) + 1) + b"250 end\r\n")


def test_parser_stays_failed() -> None:
    """After a protocol error every later call raises too, even with good data."""
    parser = ReplyParser()
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"999 bad\r\n")
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"250 ok\r\n")


@pytest.mark.parametrize(
    ("code", "flags"),
    [
        (250, (True, False, False, False)),
        (354, (False, True, False, False)),
        (452, (False, False, True, False)),
        (550, (False, False, False, True)),
    ],
)
def test_reply_classes(code: int, flags: tuple[bool, bool, bool, bool]) -> None:
    """is_success/is_intermediate/is_transient/is_permanent follow the first digit (R04)."""
    reply = Reply(code, ("x",))
    assert (reply.is_success, reply.is_intermediate, reply.is_transient, reply.is_permanent) == flags


def test_str_is_wire_like() -> None:
    """str() renders the reply as it looked on the wire, one line per text line."""
    assert str(Reply(550, ("5.1.1 no such user",))) == "550 5.1.1 no such user"
    assert str(Reply(250, ("mx", "PIPELINING"))) == "250-mx\n250 PIPELINING"
    assert str(Reply(250, ("",))) == "250"


def test_text_joins_lines() -> None:
    """text joins all lines with newlines."""
    assert Reply(250, ("a", "b")).text == "a\nb"


_text_line = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(
    replies=st.lists(
        st.tuples(st.integers(200, 599), st.lists(_text_line, min_size=1, max_size=5)),
        min_size=1,
        max_size=5,
    ),
    cuts=st.lists(st.integers(1, 30), max_size=50),
    bare_lf=st.booleans(),
)
def test_any_chunking_gives_the_same_replies(
    replies: list[tuple[int, list[str]]], cuts: list[int], bare_lf: bool
) -> None:
    """Serialized replies parse back identically however the bytes are split."""
    eol = b"\n" if bare_lf else b"\r\n"
    wire = b""
    for code, lines in replies:
        for i, line in enumerate(lines):
            sep = b" " if i == len(lines) - 1 else b"-"
            wire += str(code).encode() + sep + line.encode() + eol
    parser = ReplyParser()
    got: list[Reply] = []
    pos = 0
    for cut in cuts:
        got += parser.feed(wire[pos : pos + cut])
        pos += cut
    got += parser.feed(wire[pos:])
    assert [(r.code, list(r.lines)) for r in got] == replies


def test_a_repeated_one_line_reply_is_parsed_once_and_stays_exact() -> None:
    """One-line replies are remembered by their line: the 100th "250 2.1.5 Ok" is the same object
    as the first, and a multi-line reply that ends with that same line is still parsed whole."""
    parser = ReplyParser()
    first, second = parser.feed(b"250 2.1.5 Ok\r\n250 2.1.5 Ok\n")  # bare LF: the same line
    assert first is second and first == Reply(250, ("2.1.5 Ok",)) and first.enhanced == "2.1.5"
    (multi,) = parser.feed(b"250-2.1.5 first\r\n250 2.1.5 Ok\r\n")
    assert multi.lines == ("2.1.5 first", "2.1.5 Ok")
    assert ReplyParser().feed(b"550 5.1.1 no\r\n250 2.1.5 Ok\r\n") == [Reply(550, ("5.1.1 no",)), first]
    assert parser.buffered == 0


def test_remembered_replies_are_bounded_and_never_change_a_result() -> None:
    """Many distinct lines (more than the table holds) parse as a fresh parser would; a reply
    code change inside a multi-line reply is still refused after its lines were seen alone."""
    data = b"".join(b"250 2.0.0 queued as %d\r\n" % i for i in range(3000))
    replies = ReplyParser().feed(data)
    assert [r.lines[0] for r in replies] == [f"2.0.0 queued as {i}" for i in range(3000)]
    assert ReplyParser().feed(b"250 ok\r\n") == [Reply(250, ("ok",))]
    with pytest.raises(RemoteProtocolError):
        ReplyParser().feed(b"250-ok\r\n251 ok\r\n")
