"""The resolver's fast-path DNS messages (routing/wire.py), checked against dnspython.

Answers are built with dnspython (which compresses names) or by hand where dnspython would not
write them; ``decode`` must read what dnspython reads, and hand back ``None`` (ask dnspython)
for every shape it does not handle, without raising on any input.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta_engine.routing import wire
from mta_engine.routing.wire import NOT_OURS, WireAnswer, decode, encode_query

QID = 0x1234


def _query(name: str, rdtype: str, dnssec: bool = False) -> dns.message.Message:
    return dns.message.from_wire(encode_query(QID, name, dns.rdatatype.from_text(rdtype), dnssec=dnssec))


def _answer(name: str, rdtype: str, answer: list[tuple[str, int, str, list[str]]] = (),  # type: ignore[assignment]
            authority: list[tuple[str, int, str, list[str]]] = (),  # type: ignore[assignment]
            rcode: int = dns.rcode.NOERROR, flags: int = 0) -> bytes:
    """A response to our query for ``name``/``rdtype``, in dnspython's wire form."""
    response = dns.message.make_response(_query(name, rdtype))
    response.set_rcode(rcode)
    response.flags |= flags
    for section, rows in ((response.answer, answer), (response.authority, authority)):
        for owner, ttl, rtype, texts in rows:
            section.append(dns.rrset.from_text(owner, ttl, "IN", rtype, *texts))
    return response.to_wire()


SOA = ["ns.example. hostmaster.example. 1 3600 600 86400 300"]

# ------------------------------------------------------------------------------ the query


@pytest.mark.parametrize("dnssec", [False, True])
def test_query_is_one_question_with_rd_and_edns0(dnssec: bool) -> None:
    """RD, one IN question, EDNS0 with a 1232-octet payload; DO and AD only for DNSSEC queries."""
    message = _query("_mta-sts.example.com", "TXT", dnssec)
    assert message.id == QID
    assert message.flags & dns.flags.RD
    assert bool(message.flags & dns.flags.AD) is dnssec
    assert bool(message.ednsflags & dns.flags.DO) is dnssec
    assert message.edns == 0 and message.payload == 1232
    [question] = message.question
    assert (question.name, question.rdtype, question.rdclass) == (
        dns.name.from_text("_mta-sts.example.com."), dns.rdatatype.TXT, dns.rdataclass.IN)


@pytest.mark.parametrize("name", ["", "a..b", "x" * 64 + ".test", ".".join(["a" * 63] * 4) + ".test", "bü.test"])
def test_names_that_cannot_be_sent_as_is_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        encode_query(QID, name, wire.MX)


# ------------------------------------------------------------------------------ plain answers


def test_mx_answer_with_compressed_names() -> None:
    data = _answer("example.com", "MX", [("example.com.", 300, "MX", ["10 MX1.Example.com.", "20 mx2.example.com."])])
    got = decode(data, QID, "example.com", wire.MX)
    assert isinstance(got, WireAnswer) and sorted(got.items) == [(10, "mx1.example.com"), (20, "mx2.example.com")]
    assert (got.rcode, got.authenticated, got.ttl_s, got.negative_ttl_s, got.canonical) == (
        0, False, 300.0, None, "example.com")


def test_null_mx_exchange_is_the_empty_name() -> None:
    got = decode(_answer("n.test", "MX", [("n.test.", 60, "MX", ["0 ."])]), QID, "n.test", wire.MX)
    assert got is not None and got.items == ((0, ""),)


def test_cname_chain_is_followed_and_the_smallest_ttl_kept() -> None:
    """The records at the chain's end; the TTL is the smallest in the answer (as the resolver's)."""
    data = _answer("www.a.test", "A", [("www.a.test.", 600, "CNAME", ["Edge.B.test."]),
                                       ("edge.b.test.", 120, "CNAME", ["host.c.test."]),
                                       ("host.c.test.", 3600, "A", ["192.0.2.1", "192.0.2.2"])], flags=dns.flags.AD)
    got = decode(data, QID, "www.a.test", wire.A)
    assert isinstance(got, WireAnswer) and sorted(got.items) == ["192.0.2.1", "192.0.2.2"]  # wire order
    assert (got.rcode, got.authenticated, got.ttl_s, got.negative_ttl_s, got.canonical) == (
        0, True, 120.0, None, "host.c.test")


def test_nodata_and_nxdomain_carry_the_soa_negative_ttl() -> None:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM)."""
    nodata = decode(_answer("a.test", "MX", authority=[("test.", 900, "SOA", SOA)]), QID, "a.test", wire.MX)
    assert nodata == WireAnswer(0, False, (), 0.0, 300.0, "a.test")
    nx = decode(_answer("b.test", "MX", authority=[("test.", 120, "SOA", SOA)], rcode=dns.rcode.NXDOMAIN),
                QID, "b.test", wire.MX)
    assert nx == WireAnswer(dns.rcode.NXDOMAIN, False, (), 0.0, 120.0, "b.test")


def test_txt_strings_are_joined_and_bad_utf8_replaced() -> None:
    data = _answer("_mta-sts.a.test", "TXT", [("_mta-sts.a.test.", 60, "TXT", ['"v=STSv1; " "id=1"', '"\\255x"'])])
    got = decode(data, QID, "_mta-sts.a.test", wire.TXT)
    assert got is not None and sorted(got.items) == ["v=STSv1; id=1", "\ufffdx"]


def test_aaaa_and_tlsa_records() -> None:
    aaaa = decode(_answer("h.test", "AAAA", [("h.test.", 60, "AAAA", ["2001:db8::1"])]), QID, "h.test", wire.AAAA)
    assert aaaa is not None and aaaa.items == ("2001:db8::1",)
    tlsa = decode(_answer("_25._tcp.h.test", "TLSA", [("_25._tcp.h.test.", 60, "TLSA", ["3 1 0 abcdef"])]),
                  QID, "_25._tcp.h.test", wire.TLSA)
    assert tlsa is not None and tlsa.items == ((3, 1, 0, bytes.fromhex("abcdef")),)


def test_repeated_records_count_once() -> None:
    """dnspython merges a repeated record into one; so does decode (names compared without case)."""
    head = struct.pack("!HHHHHH", QID, 0x8180, 1, 3, 0, 0) + b"\x01a\x04test\x00" + struct.pack("!HH", 15, 1)
    def mx(exchange: bytes, ttl: int) -> bytes:
        rdata = b"\x00\x0a" + exchange
        return b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, ttl, len(rdata)) + rdata
    data = head + mx(b"\x02mx\x01a\x04test\x00", 60) + mx(b"\x02MX\xc0\x0c", 30) + mx(b"\x03mx2\xc0\x0c", 90)
    got = decode(data, QID, "a.test", wire.MX)
    assert got is not None and got.items == ((10, "mx.a.test"), (10, "mx2.a.test")) and got.ttl_s == 30.0
    assert sorted((r.preference, r.exchange.to_text()) for r in dns.message.from_wire(data).answer[0]) == [
        (10, "mx.a.test."), (10, "mx2.a.test.")]


def test_servfail_and_refused_are_returned_for_the_resolver_to_map() -> None:
    for rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
        got = decode(_answer("f.test", "MX", rcode=rcode), QID, "f.test", wire.MX)
        assert got is not None and got.rcode == rcode and got.items == ()


# ------------------------------------------------------------------------------ not ours / not plain


def test_a_datagram_that_does_not_answer_this_query_is_not_ours() -> None:
    good = _answer("a.test", "MX", [("a.test.", 60, "MX", ["10 mx.a.test."])])
    assert decode(good, QID + 1, "a.test", wire.MX) is NOT_OURS  # another ID
    assert decode(good[:12], QID, "a.test", wire.MX) is None  # ours, cut short
    assert decode(good[:11], QID, "a.test", wire.MX) is NOT_OURS
    query = encode_query(QID, "a.test", wire.MX)
    assert decode(query, QID, "a.test", wire.MX) is NOT_OURS  # QR clear: our own query echoed


@pytest.mark.parametrize("case", ["truncated", "formerr", "opcode", "other name", "other type", "nx with answers",
                                  "badvers", "trailing junk", "escaped name", "long chain", "cname loop"])
def test_unusual_answers_go_to_dnspython(case: str) -> None:
    name, rdtype, answer, rcode, flags = "a.test", "MX", [("a.test.", 60, "MX", ["10 mx.a.test."])], 0, 0
    if case == "truncated":
        flags = dns.flags.TC
    elif case == "formerr":
        rcode = dns.rcode.FORMERR
    elif case == "nx with answers":
        answer, rcode = [("a.test.", 60, "CNAME", ["gone.test."])], dns.rcode.NXDOMAIN
    elif case == "escaped name":
        answer = [("a.test.", 60, "MX", ["10 mx\\032host.a.test."])]
    elif case == "long chain":
        answer = [(f"c{i}.test." if i else "a.test.", 60, "CNAME", [f"c{i + 1}.test."]) for i in range(17)]
    elif case == "cname loop":
        answer = [("a.test.", 60, "CNAME", ["b.test."]), ("b.test.", 60, "CNAME", ["a.test."])]
    data = _answer(name, rdtype, answer, rcode=rcode, flags=flags)
    if case == "opcode":
        data = data[:2] + bytes([data[2] | 0x10]) + data[3:]  # opcode 2 (STATUS)
    elif case == "other name":
        data = _answer("b.test", rdtype, [("b.test.", 60, "MX", ["10 mx.a.test."])])
    elif case == "other type":
        data = _answer(name, "A", [("a.test.", 60, "A", ["192.0.2.1"])])
    elif case == "badvers":
        response = dns.message.make_response(_query(name, rdtype))
        response.use_edns(0, 0, 1232)
        response.set_rcode(dns.rcode.BADVERS)
        data = response.to_wire()
    elif case == "trailing junk":
        data += b"\x00"
    assert decode(data, QID, name, wire.MX) is None


def test_compression_pointers_must_point_backwards() -> None:
    """A pointer to itself or forward (the way to build a loop) is refused, not followed."""
    head = struct.pack("!HHHHHH", QID, 0x8180, 1, 1, 0, 0) + b"\x01a\x04test\x00" + struct.pack("!HH", 15, 1)
    for exchange_at in (0, 2):  # the pointer at rdata offset 2 points to itself, or past itself
        start = len(head) + 12 + 2
        rdata = b"\x00\x0a" + struct.pack("!H", 0xC000 | (start + exchange_at))
        data = head + b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 60, len(rdata)) + rdata
        assert decode(data, QID, "a.test", wire.MX) is None


def test_every_prefix_and_byte_flip_of_an_answer_is_handled() -> None:
    """Cut or corrupted answers give None, NOT_OURS or an answer, never an exception."""
    data = _answer("www.a.test", "A", [("www.a.test.", 600, "CNAME", ["edge.b.test."]),
                                       ("edge.b.test.", 120, "A", ["192.0.2.1"])],
                   authority=[("b.test.", 60, "SOA", SOA)])
    rng = random.Random(7)
    for cut in range(len(data)):
        assert not isinstance(decode(data[:cut], QID, "www.a.test", wire.A), WireAnswer)
    for _ in range(3000):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(12, len(data))] = rng.randrange(256)
        decode(bytes(flipped), QID, "www.a.test", wire.A)


# ------------------------------------------------------------------------------ against dnspython


def _reference(data: bytes, name: str, rdtype: int) -> tuple[Any, ...]:
    """What the resolver's dnspython path makes of ``data``: (rcode, items, ttl, negative, canonical)."""
    message = dns.message.from_wire(data)
    negative = None
    for rrset in message.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            negative = float(min(rrset.ttl, rrset[0].minimum))
            break
    chain = message.resolve_chaining()
    canonical = chain.canonical_name.to_text().lower().rstrip(".")
    if chain.answer is None:
        return message.rcode(), (), 0.0, negative, canonical
    ttl = float(min([chain.answer.ttl, *(r.ttl for r in message.answer)]))
    items: list[Any] = []
    for r in chain.answer:
        if rdtype == wire.MX:
            items.append((r.preference, r.exchange.to_text().lower().rstrip(".")))
        elif rdtype == wire.TXT:
            items.append(b"".join(r.strings).decode("utf-8", "replace"))
        else:
            items.append(str(ipaddress.ip_address(r.address)))
    return message.rcode(), tuple(items), ttl, negative, canonical


_LABEL = st.text("abcXYZ019-_", min_size=1, max_size=12).filter(lambda s: s[0] != "-")


@settings(max_examples=300, deadline=None)
@given(qtype=st.sampled_from(["A", "AAAA", "MX", "TXT"]), hops=st.integers(0, 3),
       labels=st.lists(_LABEL, min_size=1, max_size=3), data=st.data())
def test_decode_agrees_with_dnspython(qtype: str, hops: int, labels: list[str], data: st.DataObject) -> None:
    """Random answers (CNAME chains, mixed case, several TTLs, SOA) read as the dnspython path reads them."""
    name = ".".join(labels).lower() + ".test"
    owners = [name] + [f"alias{i}.{labels[0]}.test" for i in range(hops)]
    answer = []
    for i in range(hops):
        target = owners[i + 1]
        answer.append((owners[i].upper() if i % 2 else owners[i], data.draw(st.integers(0, 2**31 - 1)), "CNAME",
                       [target + "."]))
    count = data.draw(st.integers(0, 3))
    rdata = {"A": lambda i: f"192.0.2.{i}", "AAAA": lambda i: f"2001:db8::{i}",
             "MX": lambda i: f"{i} mx{i}.{labels[-1]}.test.", "TXT": lambda i: f'"v=x{i}" "more"'}[qtype]
    if count:
        answer.append((owners[-1], data.draw(st.integers(0, 86400)), qtype, [rdata(i) for i in range(count)]))
    authority = [("test.", data.draw(st.integers(0, 9999)), "SOA", SOA)] if not count else []
    wire_bytes = _answer(name, qtype, [(o + ".", t, ty, v) for o, t, ty, v in answer], authority)
    rdtype = dns.rdatatype.from_text(qtype)
    got = decode(wire_bytes, QID, name, rdtype)
    assert isinstance(got, WireAnswer)
    want = _reference(wire_bytes, name, rdtype)
    items = tuple(str(ipaddress.ip_address(i)) for i in got.items) if qtype in ("A", "AAAA") else got.items
    assert (got.rcode, items, got.ttl_s, got.negative_ttl_s, got.canonical) == want
