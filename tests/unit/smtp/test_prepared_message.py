"""PreparedMessage: RFC 1870 size, 8-bit detection, DATA and BDAT forms, 7-bit conversion (RFC 6152)."""

from __future__ import annotations

import email

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp.body import PreparedMessage, data_payload, envelope_needs_smtputf8, unstuff
from mta_engine.smtp.events import Payload

_messages = st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\xc3\xa9", b" "]), max_size=60).map(
    b"".join
)
_TEXT_8BIT = (
    b"From: a@example.com\nSubject: hi\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n\ncaf\xc3\xa9 = ok\n.leading dot\n"
)


def test_size_counts_crlf_but_not_stuffing() -> None:
    """size is the normalized octet count with CRLFs, without dot-stuffing or terminator (RFC 1870 §5)."""
    message = PreparedMessage(b".a\n..b\nc")
    assert message.data == b".a\r\n..b\r\nc\r\n"
    assert message.size == 12
    assert len(message.dot_stuffed) == 12 + 2 + 3  # two stuffed dots, ".\r\n"


def test_dot_stuffed_is_the_data_payload_form() -> None:
    """dot_stuffed equals data_payload of the same input and is computed once."""
    message = PreparedMessage(_TEXT_8BIT)
    assert message.dot_stuffed == data_payload(_TEXT_8BIT)
    assert message.dot_stuffed is message.dot_stuffed


@given(_messages, st.integers(min_value=1, max_value=17))
def test_chunks_join_to_the_data(raw: bytes, size: int) -> None:
    """BDAT chunks are the unstuffed content, in order, none longer than asked and none empty."""
    message = PreparedMessage(raw)
    chunks = message.chunks(size)
    assert b"".join(chunks) == message.data
    assert all(0 < len(c) <= size for c in chunks)


@given(_messages)
def test_dot_stuffed_round_trips(raw: bytes) -> None:
    """unstuff(dot_stuffed) gives back the normalized data."""
    message = PreparedMessage(raw)
    assert unstuff(message.dot_stuffed) == message.data


def test_is_8bit_and_smtputf8_flags() -> None:
    """is_8bit follows the content; needs_smtputf8 is what the caller said."""
    assert PreparedMessage(_TEXT_8BIT).is_8bit
    assert not PreparedMessage(b"Subject: x\n\nascii").is_8bit
    assert PreparedMessage(b"x", smtputf8=True).needs_smtputf8
    assert repr(PreparedMessage(b"\xc3\xa9", smtputf8=True)) == "<PreparedMessage 4 octets 8bit smtputf8>"


def test_seven_bit_of_ascii_is_itself() -> None:
    """A 7-bit message needs no conversion."""
    message = PreparedMessage(b"Subject: x\n\nascii\n")
    assert message.seven_bit() is message


def test_seven_bit_reencodes_text_as_quoted_printable() -> None:
    """An 8bit text part becomes quoted-printable; headers keep their bytes; content decodes back."""
    seven = PreparedMessage(_TEXT_8BIT).seven_bit()
    assert seven is not None and not seven.is_8bit
    head, _, _ = seven.data.partition(b"\r\n\r\n")
    assert head.startswith(b"From: a@example.com\r\nSubject: hi\r\nMIME-Version: 1.0\r\n")
    assert b"Content-Transfer-Encoding: quoted-printable" in head
    parsed = email.message_from_bytes(seven.data)
    assert parsed.get_payload(decode=True).replace(b"\r\n", b"\n") == b"caf\xc3\xa9 = ok\n.leading dot\n"


def test_seven_bit_missing_cte_and_mime_version_are_added() -> None:
    """8-bit text without Content-Transfer-Encoding gets quoted-printable and MIME-Version (RFC 2045 §4)."""
    seven = PreparedMessage(b"Subject: x\n\nna\xc3\xafve\n").seven_bit()
    assert seven is not None
    assert b"MIME-Version: 1.0\r\n" in seven.data and b"na=C3=AFve" in seven.data


def test_seven_bit_multipart_binary_part_becomes_base64() -> None:
    """In a multipart, a binary attachment is re-encoded as base64 and the text part as QP."""
    raw = (
        b"From: a@b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nh\xc3\xa9\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\xff\r\n"
        b"--XX--\r\n"
    )
    seven = PreparedMessage(raw).seven_bit()
    assert seven is not None and not seven.is_8bit
    parts = [p for p in email.message_from_bytes(seven.data).walk() if not p.is_multipart()]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", "base64"]
    assert parts[1].get_payload(decode=True) == b"\x00\xff"


def test_seven_bit_impossible_with_8bit_headers() -> None:
    """8-bit headers cannot be downgraded: seven_bit() is None (the caller bounces)."""
    assert PreparedMessage(b"Subject: caf\xc3\xa9\n\nbody \xc3\xa9\n").seven_bit() is None


def test_envelope_needs_smtputf8_only_for_utf8_local_parts() -> None:
    """A UTF-8 local part needs SMTPUTF8; a UTF-8 domain alone does not (A-labels, RFC 5890)."""
    assert not envelope_needs_smtputf8("a@example.com", ["b@bücher.example"])
    assert envelope_needs_smtputf8("a@example.com", ["jürgen@example.com"])
    assert envelope_needs_smtputf8("ä@example.com", [])


@given(_messages)
def test_payload_is_what_the_checking_constructor_accepts(raw: bytes) -> None:
    """The unchecked payload passes the smuggling check and equals the data_payload form (D01-D02)."""
    message = PreparedMessage(raw)
    assert Payload(message.payload.data) == message.payload
    assert message.payload.data == data_payload(raw)
    assert message.payload is message.payload


def test_payload_of_already_crlf_content_is_checked_form() -> None:
    """Content that is CRLF already (a rendered message), dot lines included, gives a valid payload."""
    message = PreparedMessage(b"Subject: x\r\n\r\n.\r\n..\r\nend\r\n")
    assert message.payload == Payload(b"Subject: x\r\n\r\n..\r\n...\r\nend\r\n.\r\n")


def test_outside_bytes_are_still_checked() -> None:
    """Payload(data) keeps rejecting bytes that are not in data_payload form."""
    for bad in (b"a\n.\r\n", b"a\r\n.\r\nb\r\n.\r\n", b"a\rb\r\n.\r\n"):
        with pytest.raises(LocalProtocolError):
            Payload(bad)
