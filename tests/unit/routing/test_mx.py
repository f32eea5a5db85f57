"""Pure MX rules: ordering, equal-preference shuffle, null MX, site keys, IDNA."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.routing.mx import MxHost, MxPlan, below_self, is_null_mx, normalize_domain, order_mx, site_key


def _hosts(*pairs: tuple[int, str]) -> list[MxHost]:
    return [MxHost(pref, name) for pref, name in pairs]


def test_order_mx_sorts_by_ascending_preference() -> None:
    """Lower preference comes first regardless of input order (RFC 5321 §5.1)."""
    hosts = _hosts((30, "c.test"), (10, "a.test"), (20, "b.test"))
    ordered = order_mx(hosts, random.Random(1))
    assert [h.preference for h in ordered] == [10, 20, 30]


def test_order_mx_is_deterministic_for_a_seed() -> None:
    """The same seed gives the same order, so attempts are reproducible in tests."""
    hosts = _hosts(*[(10, f"mx{i}.test") for i in range(6)])
    assert order_mx(hosts, random.Random(42)) == order_mx(list(reversed(hosts)), random.Random(42))


def test_order_mx_shuffles_equal_preference_across_seeds() -> None:
    """Equal-preference hosts come out in different orders for different seeds (§5.1 spread)."""
    hosts = _hosts((5, "primary.test"), *[(10, f"mx{i}.test") for i in range(4)])
    orders = {tuple(h.name for h in order_mx(hosts, random.Random(seed))) for seed in range(50)}
    assert len(orders) > 5
    assert all(order[0] == "primary.test" for order in orders)


def test_order_mx_does_not_mutate_input() -> None:
    """The caller's sequence is left as given."""
    hosts = _hosts((20, "b.test"), (10, "a.test"))
    order_mx(hosts, random.Random(0))
    assert hosts == _hosts((20, "b.test"), (10, "a.test"))


@given(
    st.lists(st.tuples(st.integers(0, 65535), st.from_regex(r"[a-z]{1,8}\.test", fullmatch=True))),
    st.integers(),
)
def test_order_mx_is_a_sorted_permutation(pairs: list[tuple[int, str]], seed: int) -> None:
    """Ordering keeps every host exactly once and never decreases preference."""
    hosts = _hosts(*pairs)
    ordered = order_mx(hosts, random.Random(seed))
    assert sorted(ordered, key=repr) == sorted(hosts, key=repr)
    prefs = [h.preference for h in ordered]
    assert prefs == sorted(prefs)


@pytest.mark.parametrize("name", [".", ""])
def test_is_null_mx_detects_single_root_exchange(name: str) -> None:
    """One record, preference 0, exchange the root is a null MX (RFC 7505 §3)."""
    assert is_null_mx(_hosts((0, name)))


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [(0, "mx.test")],
        [(10, ".")],
        [(0, "."), (10, "mx.test")],
    ],
)
def test_is_null_mx_rejects_everything_else(pairs: list[tuple[int, str]]) -> None:
    """Empty sets, real exchanges, non-zero preference and mixed sets are not null MX."""
    assert not is_null_mx(_hosts(*pairs))


def test_site_key_is_sorted_unique_lowercase_without_trailing_dot() -> None:
    """The site key ignores case, trailing dots, duplicates, order and preferences."""
    a = _hosts((10, "MX2.Farm.test."), (10, "mx1.farm.test"), (20, "mx1.farm.test."))
    b = _hosts((5, "mx1.farm.test"), (5, "mx2.farm.test"))
    assert site_key(a) == "mx1.farm.test,mx2.farm.test"
    assert site_key(a) == site_key(b)


def test_mx_values_are_frozen() -> None:
    """MxHost and MxPlan are immutable values."""
    plan = MxPlan("a.test", (MxHost(0, "a.test"),), implicit=True, site="a.test", ttl_s=60.0)
    with pytest.raises(AttributeError):
        plan.domain = "b.test"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        plan.hosts[0].name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("Bücher.Example.", "xn--bcher-kva.example"),
        ("EXAMPLE.test.", "example.test"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c1.test", "a-b.c1.test"),
    ],
)
def test_normalize_domain_lowercases_strips_dot_and_encodes_idna(raw: str, expected: str) -> None:
    """Domains become lower-case A-labels without the trailing dot."""
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", ".", "a..test", "-a.test", "a-.test", "a b.test", "a_b.test", "x" * 64 + ".test",
     ("a" * 60 + ".") * 5 + "test"],
)
def test_normalize_domain_rejects_invalid_names(raw: str) -> None:
    """Empty, non-LDH and over-long names raise ValueError."""
    with pytest.raises(ValueError):
        normalize_domain(raw)


def test_m05_hosts_at_or_above_our_own_preference_are_dropped() -> None:
    """We are listed as MX 20: only the preference-10 hosts remain (RFC 5321 §5.1: no loop back to us)."""
    hosts = [MxHost(10, "a.example"), MxHost(10, "b.example"), MxHost(20, "MTA1.Example.com."),
             MxHost(20, "c.example"), MxHost(30, "d.example")]
    assert below_self(hosts, ["mta1.example.com"]) == [MxHost(10, "a.example"), MxHost(10, "b.example")]


def test_m05_we_are_the_best_mx_leaves_nothing_to_try() -> None:
    assert below_self([MxHost(5, "mta1.example.com"), MxHost(10, "b.example")], ["mta1.example.com"]) == []


def test_m05_without_our_names_the_list_is_unchanged() -> None:
    hosts = [MxHost(10, "a.example"), MxHost(20, "b.example")]
    assert below_self(hosts, ["mta1.example.com", ""]) == hosts
