"""DANE matching (RFC 7672 §3.1): DANE-EE on the leaf, DANE-TA with chain and name checks,
PKIX usages unusable; certificates are made at test time."""

from __future__ import annotations

import datetime as dt

import pytest

from mta_engine.delivery.dane import TlsaRecord, match_chain, usable
from tests.support.dane_certs import Issued, make_ca, make_leaf, tlsa
from tests.unit.test_layering import IO_MODULES, PKG, imported

MX = "mx.dane.test"
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def leaf(ca: Issued) -> Issued:
    return make_leaf([MX], ca)


def test_dane_module_is_pure() -> None:
    """delivery/dane.py imports nothing that does I/O (STYLE.md layering)."""
    assert not imported(PKG / "delivery/dane.py") & IO_MODULES


@pytest.mark.parametrize(("selector", "mtype"), [(1, 1), (0, 0), (0, 1), (1, 2), (1, 0)])
def test_dane_ee_matches_the_leaf(leaf: Issued, ca: Issued, selector: int, mtype: int) -> None:
    """3 s m: the leaf's certificate or SPKI, in full or by digest, matches (RFC 6698 §2.1)."""
    rec = tlsa(leaf, 3, selector, mtype)
    result = match_chain([leaf.der, ca.der], [rec], [MX], NOW)
    assert result.ok and result.record == rec and result.depth == 0, result


def test_dane_ee_ignores_names_and_expiry() -> None:
    """DANE-EE: a self-signed, expired certificate for another name still matches (§3.1.1)."""
    stale = make_leaf(["elsewhere.test"], days=(-30, -10))
    result = match_chain([stale.der], [tlsa(stale, 3, 1, 1)], [MX], NOW)
    assert result.ok, result


def test_dane_ee_other_key_does_not_match(leaf: Issued) -> None:
    """A record for another key is a mismatch, with a reason for the log."""
    other = make_leaf([MX])
    result = match_chain([leaf.der], [tlsa(other, 3, 1, 1)], [MX], NOW)
    assert not result.ok and result.record is None
    assert "no TLSA record matched" in result.reason


def test_one_matching_record_is_enough(leaf: Issued) -> None:
    """Among several records (a key rollover), any one match authenticates the server."""
    other = make_leaf([MX])
    good = tlsa(leaf, 3, 1, 1)
    result = match_chain([leaf.der], [tlsa(other, 3, 1, 1), good], [MX], NOW)
    assert result.ok and result.record == good


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1), (1, 2)])
def test_dane_ta_matches_the_sent_issuer_with_name(leaf: Issued, ca: Issued, selector: int, mtype: int) -> None:
    """2 s m: the CA the server sent matches, the leaf chains to it and names the MX host (§3.1.2)."""
    rec = tlsa(ca, 2, selector, mtype)
    result = match_chain([leaf.der, ca.der], [rec], [MX], NOW)
    assert result.ok and result.record == rec and result.depth == 1, result


def test_dane_ta_refuses_a_leaf_without_the_mx_name(leaf: Issued, ca: Issued) -> None:
    """DANE-TA checks names (§3.2.2): the right chain for another name is a mismatch."""
    result = match_chain([leaf.der, ca.der], [tlsa(ca, 2, 0, 1)], ["mx.other.test"], NOW)
    assert not result.ok
    assert "names none of ['mx.other.test']" in result.reason


def test_dane_ta_through_an_intermediate() -> None:
    """Root -> intermediate -> leaf: a record for either CA matches at its depth."""
    root = make_ca("root")
    inter = make_ca("intermediate", issuer=root)
    leaf = make_leaf([MX], inter)
    chain = [leaf.der, inter.der, root.der]
    assert match_chain(chain, [tlsa(root, 2, 1, 1)], [MX], NOW).depth == 2
    assert match_chain(chain, [tlsa(inter, 2, 1, 1)], [MX], NOW).depth == 1


def test_dane_ta_intermediates_in_any_order() -> None:
    """Servers send intermediates in odd orders; the path is found by signatures, not positions."""
    root = make_ca("root")
    inter = make_ca("intermediate", issuer=root)
    leaf = make_leaf([MX], inter)
    assert match_chain([leaf.der, root.der, inter.der], [tlsa(root, 2, 1, 1)], [MX], NOW).ok


def test_dane_ta_leaf_not_issued_by_the_anchor(ca: Issued) -> None:
    """The anchor was sent, but the leaf is signed by another CA: a mismatch."""
    stranger = make_leaf([MX], make_ca("another CA"))
    result = match_chain([stranger.der, ca.der], [tlsa(ca, 2, 1, 1)], [MX], NOW)
    assert not result.ok and "does not chain" in result.reason


def test_dane_ta_checks_the_leaf_validity(ca: Issued) -> None:
    """Below the anchor the validity dates count (unlike DANE-EE)."""
    expired = make_leaf([MX], ca, days=(-30, -1))
    result = match_chain([expired.der, ca.der], [tlsa(ca, 2, 1, 1)], [MX], NOW)
    assert not result.ok and "validity" in result.reason


def test_dane_ta_full_certificate_record_need_not_be_sent(leaf: Issued, ca: Issued) -> None:
    """"2 0 0" carries the anchor itself: the server may send only its leaf (§3.1.2)."""
    result = match_chain([leaf.der], [tlsa(ca, 2, 0, 0)], [MX], NOW)
    assert result.ok and result.depth == -1, result


def test_dane_ta_record_for_the_leaf_is_not_an_anchor(leaf: Issued, ca: Issued) -> None:
    """A DANE-TA digest of the leaf itself does not authenticate it as its own anchor."""
    assert not match_chain([leaf.der, ca.der], [tlsa(leaf, 2, 1, 1)], [MX], NOW).ok


@pytest.mark.parametrize(("presented", "reference", "ok"), [
    ("*.dane.test", MX, True),
    ("*.dane.test", "a.mx.dane.test", False),
    ("*.dane.test", "dane.test", False),
    ("MX.DANE.TEST", MX, True),
    ("mx*.dane.test", MX, False),
])
def test_dane_ta_wildcards(ca: Issued, presented: str, reference: str, ok: bool) -> None:
    """"*" matches exactly one whole left-most label (§3.2.3); names compare without case."""
    leaf = make_leaf([presented], ca)
    assert match_chain([leaf.der, ca.der], [tlsa(ca, 2, 1, 1)], [reference], NOW).ok is ok


def test_dane_ta_common_name_without_san(ca: Issued) -> None:
    """Without DNS subjectAltNames the subject CN is the presented name (§3.2.2)."""
    leaf = make_leaf([MX], ca, san=False)
    assert match_chain([leaf.der, ca.der], [tlsa(ca, 2, 1, 1)], [MX], NOW).ok


def test_dane_ta_san_wins_over_common_name(ca: Issued) -> None:
    """With a DNS subjectAltName the CN is not consulted."""
    leaf = make_leaf(["other.test"], ca, cn=MX)
    assert not match_chain([leaf.der, ca.der], [tlsa(ca, 2, 1, 1)], [MX], NOW).ok


def test_pkix_usages_are_unusable(leaf: Issued, ca: Issued) -> None:
    """PKIX-TA(0)/PKIX-EE(1) records are unusable (§3.1.3): only them means no DANE at all."""
    records = [tlsa(ca, 0, 1, 1), tlsa(leaf, 1, 1, 1)]
    assert usable(records) == ()
    result = match_chain([leaf.der, ca.der], records, [MX], NOW)
    assert not result.ok and result.reason == "no usable TLSA record"


@pytest.mark.parametrize("record", [
    TlsaRecord(3, 1, 1, b"\x00" * 31),  # a SHA-256 digest of the wrong length
    TlsaRecord(3, 1, 2, b"\x00" * 32),  # a SHA-512 digest of the wrong length
    TlsaRecord(3, 2, 1, b"\x00" * 32),  # unknown selector
    TlsaRecord(3, 1, 3, b"\x00" * 32),  # unknown matching type
    TlsaRecord(4, 1, 1, b"\x00" * 32),  # unknown usage
    TlsaRecord(3, 0, 0, b""),  # empty full data
])
def test_malformed_records_are_unusable(record: TlsaRecord) -> None:
    """Records a client cannot apply are unusable (RFC 7671 §4.1), not mismatches."""
    assert not record.usable


def test_unusable_records_beside_usable_ones_are_skipped(leaf: Issued, ca: Issued) -> None:
    """A PKIX-EE record that would match does not authenticate; the usable one decides."""
    other = make_leaf([MX])
    assert not match_chain([leaf.der], [tlsa(leaf, 1, 1, 1), tlsa(other, 3, 1, 1)], [MX], NOW).ok


@pytest.mark.parametrize("chain", [[], [b"garbage"], [b"\x30\x03\x02\x01\x00"]])
def test_bad_chains_never_raise(leaf: Issued, chain: list[bytes]) -> None:
    """No certificate or an unparsable one is a mismatch with a reason, never an exception."""
    result = match_chain(chain, [tlsa(leaf, 3, 1, 1)], [MX], NOW)
    assert not result.ok and result.reason


def test_garbage_in_the_chain_after_the_leaf_is_ignored(leaf: Issued, ca: Issued) -> None:
    """An unparsable intermediate does not stop DANE-TA matching through the real one."""
    assert match_chain([leaf.der, b"junk", ca.der], [tlsa(ca, 2, 1, 1)], [MX], NOW).ok


def test_record_text_is_presentation_form(leaf: Issued) -> None:
    """str() is "usage selector mtype hex", full-data records shortened for logs."""
    assert str(TlsaRecord(3, 1, 1, bytes(range(32)))) == "3 1 1 " + bytes(range(32)).hex()
    full = str(tlsa(leaf, 3, 0, 0))
    assert full.startswith("3 0 0 ") and full.endswith("...") and len(full) == len("3 0 0 ") + 35


def test_dane_policy_is_required_tls_and_hashable(leaf: Issued) -> None:
    """TlsPolicy.for_dane: TLS required, no PKIX in the handshake, usable as a cache key."""
    from mta_engine.delivery.tls import TlsPolicy

    rec = tlsa(leaf, 3, 1, 1)
    policy = TlsPolicy.for_dane([rec], [MX])
    assert policy.requires_tls and not policy.verifies and policy.dane == (rec,)
    assert hash(policy) == hash(TlsPolicy.for_dane([rec], [MX])) and policy.context().check_hostname is False
    with pytest.raises(ValueError):
        TlsPolicy("opportunistic", dane=(rec,))
    with pytest.raises(ValueError):
        TlsPolicy("required", dane=())


def test_peer_chain_returns_every_certificate_sent(tmp_path: object, leaf: Issued, ca: Issued) -> None:
    """peer_chain reads the chain the server sent (leaf first) from an unverified handshake."""
    import ssl
    from pathlib import Path

    from mta_engine.delivery.tls import TlsPolicy, peer_chain, tls_info
    from tests.support.dane_certs import write_chain

    cert_file, key_file = write_chain(Path(str(tmp_path)), leaf, [ca])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = TlsPolicy.for_dane([tlsa(leaf, 3, 1, 1)], [MX]).context()
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=MX)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):  # a bounded in-memory handshake: bytes move between the two BIO pairs
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    assert peer_chain(client) == [leaf.der, ca.der]
    result = match_chain(peer_chain(client), [tlsa(ca, 2, 1, 1)], [MX], NOW)
    info = tls_info(client, verified=False, dane=result)
    assert info is not None and info["dane"] is True and info["verified"] is True
    assert info["dane_record"] == str(tlsa(ca, 2, 1, 1))
    assert tls_info(client, verified=False)["dane"] is False  # type: ignore[index]
