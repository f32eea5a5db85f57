"""Pure MTA-STS rules (RFC 8461): the TXT record, the policy file, MX matching and the policy cache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.routing.mta_sts import (
    MAX_AGE_CAP_S,
    PolicyCache,
    PolicyError,
    StsPolicy,
    mx_matches,
    parse_policy,
    parse_txt_records,
)

ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"

# ------------------------------------------------------------------------------ TXT record (§3.1)


def test_txt_record_gives_its_id() -> None:
    """`v=STSv1; id=20160831085700Z;` names policy id 20160831085700Z (the RFC's example)."""
    assert parse_txt_records(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"


def test_txt_record_without_trailing_semicolon_and_with_spaces_is_valid() -> None:
    """The trailing delimiter is optional and white space may surround fields."""
    assert parse_txt_records(["v=STSv1 ;  id=abc123"]) == "abc123"


def test_txt_records_not_starting_with_version_are_discarded() -> None:
    """Other TXT records at the name (SPF, verification tokens) do not count (§3.1)."""
    assert parse_txt_records(["v=spf1 -all", "v=STSv1; id=one", "google-site-verification=x"]) == "one"


def test_two_sts_txt_records_mean_no_policy() -> None:
    """Not exactly one v=STSv1 record: the domain has no available policy (§3.1)."""
    assert parse_txt_records(["v=STSv1; id=one", "v=STSv1; id=two"]) is None


def test_no_txt_record_means_no_policy() -> None:
    """No record at all: no policy."""
    assert parse_txt_records([]) is None


@pytest.mark.parametrize("text", [
    "v=STSv1;",                              # no id
    "v=STSv1; id=",                          # empty id
    "v=STSv1; id=" + "a" * 33,               # id over 32 characters
    "v=STSv1; id=not-alnum",                 # id outside ALPHA / DIGIT
    "v=STSv1; id=ok; junk",                  # a field that is not name=value
    "v=STSv1; id=ok; ext=has space",         # an extension value with SP
    "V=STSv1; id=ok",                        # the version is case-sensitive (%s)
    "v=STSv2; id=ok",                        # unknown version
])
def test_invalid_txt_record_means_no_policy(text: str) -> None:
    """A syntactically invalid record is treated as no policy (§3.1)."""
    assert parse_txt_records([text]) is None


def test_txt_extensions_are_ignored() -> None:
    """Unknown `name=value` extension fields do not disturb the id."""
    assert parse_txt_records(["v=STSv1; ext-1=value:x; id=abc"]) == "abc"


# ------------------------------------------------------------------------------ policy file (§3.2)


def test_policy_with_crlf_lines_parses() -> None:
    """The RFC's example policy: mode, both mx patterns and max_age."""
    policy = parse_policy(ENFORCE)
    assert policy == StsPolicy("enforce", ("mail.example.com", "*.example.net"), 86400)
    assert policy.enforces


def test_policy_with_lf_lines_and_no_final_newline_parses() -> None:
    """LF alone ends a line too, and the last line needs no terminator."""
    policy = parse_policy("version: STSv1\nmode: testing\nmx: mx.example.org\nmax_age: 600")
    assert (policy.mode, policy.mx, policy.max_age_s, policy.enforces) == ("testing", ("mx.example.org",), 600, False)


def test_policy_max_age_is_capped_at_one_year() -> None:
    """max_age above 31557600 s is cut to 31557600 s (§3.2)."""
    policy = parse_policy(ENFORCE.replace("86400", "9999999999"))
    assert policy.max_age_s == MAX_AGE_CAP_S == 31_557_600


def test_policy_mode_none_needs_no_mx() -> None:
    """A `none` policy (how a domain withdraws MTA-STS, §8.3) is valid without mx lines."""
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").mode == "none"


def test_policy_unknown_fields_are_ignored_and_first_value_counts() -> None:
    """Extension keys are skipped; a repeated mode keeps the first one."""
    text = "version: STSv1\nmode: testing\nmode: enforce\nextension_key: whatever\nmx: a.example\nmax_age: 60\n"
    assert parse_policy(text).mode == "testing"


def test_policy_mx_patterns_are_lower_cased_and_deduplicated() -> None:
    """Matching is case-insensitive, so patterns are kept in lower case, each once."""
    policy = parse_policy("version: STSv1\nmode: enforce\nmx: MX.Example.COM.\nmx: mx.example.com\nmax_age: 60\n")
    assert policy.mx == ("mx.example.com",)


@pytest.mark.parametrize("text, why", [
    ("mode: enforce\nmx: a.example\nmax_age: 60\n", "version"),
    ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 60\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 60\n", "mode"),
    ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 60\n", "mode"),
    ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 60\n", "mx"),
    ("version: STSv1\nmode: testing\nmax_age: 60\n", "mx"),
    ("version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 60\n", "wildcard"),
    ("version: STSv1\nmode: enforce\nmx: *\nmax_age: 60\n", "mx"),
    ("version: STSv1\nmode: enforce\nmx: bad_label.example\nmax_age: 60\n", "mx"),
    ("version: STSv1\nmode: enforce\nthis line has no colon\nmx: a.example\nmax_age: 60\n", "line 3"),
    ("<html><body>not found</body></html>", "line 1"),
])
def test_invalid_policy_is_refused(text: str, why: str) -> None:
    """Missing or bad version, mode, max_age or mx, or a line that is not `key: value`, is invalid."""
    with pytest.raises(PolicyError, match=why):
        parse_policy(text)


# ------------------------------------------------------------------------------ MX matching (§4.1)


@pytest.mark.parametrize("pattern, host, expected", [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.Example.Com.", True),
    ("mail.example.com", "mail2.example.com", False),
    ("*.example.net", "mx1.example.net", True),
    ("*.example.net", "MX1.EXAMPLE.NET.", True),
    ("*.example.net", "example.net", False),            # the wildcard needs a label
    ("*.example.net", "a.b.example.net", False),        # and matches exactly one
    ("*.example.net", "mx1.example.net.evil", False),
    ("*.example.net", "mx1example.net", False),
])
def test_mx_matching(pattern: str, host: str, expected: bool) -> None:
    """Exact names match case-insensitively; `*.` stands for one whole left-most label."""
    assert mx_matches(pattern, host) is expected


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True))
def test_wildcard_matches_any_single_label(label: str) -> None:
    """Any one LDH label under the base matches the wildcard, and never the base with two labels."""
    assert mx_matches("*.example.net", f"{label}.example.net")
    assert not mx_matches("*.example.net", f"{label}.x.example.net")


def test_policy_matches_any_of_its_patterns() -> None:
    """A host is valid when one pattern matches it."""
    policy = parse_policy(ENFORCE)
    assert policy.matches("mail.example.com") and policy.matches("mx7.example.net")
    assert not policy.matches("mail.example.org")


# ------------------------------------------------------------------------------ cache (§3.3, §5.1)

TESTING = StsPolicy("testing", ("mx.example",), 3600)
LONG = StsPolicy("enforce", ("mx.example",), 86400)


def cache() -> PolicyCache:
    return PolicyCache(recheck_s=300, no_policy_s=600, failure_s=60)


def test_first_record_needs_a_fetch_and_the_policy_holds_for_max_age() -> None:
    """A new id is fetched; the policy then applies until max_age, with TXT checks in between."""
    c = cache()
    assert c.due("d.example", 0.0) and c.needs_fetch("d.example", "id1", 0.0)
    entry = c.fetched("d.example", "id1", LONG, 0.0)
    assert (entry.active(0.0), entry.check_at, entry.expires_at) == (LONG, 300.0, 86400.0)
    assert not c.due("d.example", 299.0) and c.due("d.example", 300.0)
    assert entry.active(86400.0) is None  # expired


def test_same_id_needs_no_fetch_until_the_policy_nears_its_end() -> None:
    """The same id keeps the cached policy; a refresh is due within recheck_s of expiry."""
    c = cache()
    c.fetched("d.example", "id1", LONG, 0.0)
    assert not c.needs_fetch("d.example", "id1", 300.0)
    entry = c.checked("d.example", "id1", 300.0)
    assert (entry.active(300.0), entry.check_at) == (LONG, 600.0)
    assert c.needs_fetch("d.example", "id1", 86400.0 - 300.0)


def test_changed_id_needs_a_fetch() -> None:
    """A new id in the TXT record means the policy changed (§3.1)."""
    c = cache()
    c.fetched("d.example", "id1", LONG, 0.0)
    assert c.needs_fetch("d.example", "id2", 300.0)


def test_no_record_without_cached_policy_is_remembered_for_a_while() -> None:
    """A domain without a record is not asked again for no_policy_s."""
    c = cache()
    assert not c.needs_fetch("d.example", None, 0.0)
    entry = c.checked("d.example", None, 0.0)
    assert entry.active(0.0) is None and entry.check_at == 600.0
    assert not c.due("d.example", 599.0) and c.due("d.example", 600.0)


def test_dns_failure_without_cached_policy_is_retried_soon() -> None:
    """A failed TXT lookup is no policy, asked again after failure_s rather than no_policy_s."""
    assert cache().checked("d.example", None, 0.0, dns_failed=True).check_at == 60.0


def test_vanished_record_keeps_the_cached_policy() -> None:
    """A TXT record that disappears (or is stripped) does not end an unexpired policy (§8.3)."""
    c = cache()
    c.fetched("d.example", "id1", LONG, 0.0)
    entry = c.checked("d.example", None, 1000.0)
    assert entry.active(1000.0) == LONG and entry.policy_id == "id1"


def test_failed_fetch_keeps_an_unexpired_policy() -> None:
    """A fetch that fails after an id change keeps the old policy and retries after failure_s (§5.1)."""
    c = cache()
    c.fetched("d.example", "id1", LONG, 0.0)
    entry = c.fetch_failed("d.example", 1000.0)
    assert (entry.active(1000.0), entry.policy_id, entry.check_at) == (LONG, "id1", 1060.0)


def test_failed_fetch_without_policy_is_no_policy_briefly() -> None:
    """With nothing cached, a failed fetch means no policy, tried again after failure_s."""
    entry = cache().fetch_failed("d.example", 0.0)
    assert entry.active(0.0) is None and entry.check_at == 60.0


def test_check_is_never_later_than_the_policy_expiry() -> None:
    """A policy shorter than recheck_s is looked at again when it expires, not later."""
    c = cache()
    entry = c.fetched("d.example", "id1", StsPolicy("enforce", ("mx.example",), 100), 0.0)
    assert entry.check_at == 100.0


def test_none_policy_is_cached_but_not_applied() -> None:
    """`mode: none` is remembered (no refetch for the same id) but applies nothing."""
    c = cache()
    entry = c.fetched("d.example", "id1", StsPolicy("none", (), 3600), 0.0)
    assert entry.active(0.0) is None and not c.needs_fetch("d.example", "id1", 10.0)


def test_testing_policy_is_active() -> None:
    """`mode: testing` is applied (logged, not enforced) by the caller."""
    assert cache().fetched("d.example", "id1", TESTING, 0.0).active(0.0) is TESTING


def test_cache_is_bounded() -> None:
    """Past max_entries the oldest domain is dropped."""
    c = PolicyCache(max_entries=3)
    for i in range(5):
        c.checked(f"d{i}.example", None, 0.0)
    assert len(c) == 3 and c.get("d0.example") is None and c.get("d4.example") is not None
    assert repr(c) == "<PolicyCache domains=3 policies=0>"
