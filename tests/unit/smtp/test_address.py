"""Envelope addresses on the wire: A-label domains without SMTPUTF8, UTF-8 only with it (RFC 6531)."""

from __future__ import annotations

import pytest

from mta_engine.smtp.address import address_needs_smtputf8, to_a_labels, wire_address


@pytest.mark.parametrize(
    ("address", "smtputf8", "wire"),
    [
        ("a@example.com", False, "a@example.com"),
        ("a@bücher.example", False, "a@xn--bcher-kva.example"),
        ("a@bücher.example", True, "a@bücher.example"),
        ("jürgen@example.com", False, None),
        ("jürgen@example.com", True, "jürgen@example.com"),
        ("", False, ""),
    ],
)
def test_wire_address(address: str, smtputf8: bool, wire: str | None) -> None:
    """Domains become A-labels unless SMTPUTF8 is used; UTF-8 local parts have no ASCII form."""
    assert wire_address(address, smtputf8=smtputf8) == wire


def test_invalid_idn_needs_smtputf8() -> None:
    """A non-ASCII domain that is not a valid IDN has no A-label form, so only SMTPUTF8 can carry it."""
    assert to_a_labels("-bücher.example") is None
    assert address_needs_smtputf8("a@-bücher.example")
    assert to_a_labels("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert not address_needs_smtputf8("a@example.com")
