"""Per-site limits: defaults plus domain / site / pattern overrides, most specific wins."""

from __future__ import annotations

import pytest

from mta_engine.config import DeliveryConfig, QueueConfig
from mta_engine.errors import ConfigError
from mta_engine.sched.limits import LimitTable, SiteLimits

GMAIL_SITE = "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com"
GMAIL_MX = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]

OVERRIDES = [
    {"pattern": "*.google.com", "max_connections": 10, "messages_per_minute": 300},
    {"site": GMAIL_SITE, "max_connections": 8, "new_connections_per_minute": 60},
    {"domain": "gmail.com", "max_connections": 5},
    {"pattern": "*.l.google.com", "messages_per_minute": 200},
    {"domain": ["GMAIL.com."], "max_connections": 4},
]


def test_defaults_when_nothing_matches() -> None:
    """A site no override names gets the defaults object itself."""
    t = LimitTable(SiteLimits(), OVERRIDES)
    assert t.for_site("mx.example.net", ["example.net"], ["mx.example.net"]) is t.defaults


def test_most_specific_wins_per_key() -> None:
    """domain > site > pattern > defaults, per key; a later override of the same kind wins."""
    t = LimitTable(SiteLimits(max_recipients_per_transaction=50), OVERRIDES)
    got = t.for_site(GMAIL_SITE, ["gmail.com", "googlemail.com"], GMAIL_MX)
    assert got == SiteLimits(max_connections=4, messages_per_minute=200, new_connections_per_minute=60,
                             max_recipients_per_transaction=50)


def test_pattern_matches_site_key_or_any_mx_host() -> None:
    """A pattern can hit one MX host name even when the site has others."""
    t = LimitTable(SiteLimits(), [{"pattern": "*.yahoodns.net", "max_connections": 3}])
    assert t.for_site("a.example,mta5.am0.yahoodns.net", ["ymail.com"],
                      ["a.example", "MTA5.am0.yahoodns.net."]).max_connections == 3
    assert t.for_site("b.example", ["b.example"], ["b.example"]).max_connections == 20


def test_from_config_reads_sched_table_over_delivery_defaults() -> None:
    """[sched.defaults] lies over the [delivery]/[queue] values; [[sched.site]] is a list of tables."""
    base = SiteLimits.from_config(DeliveryConfig(max_connections_per_site=7), QueueConfig(max_age_s=3600.0))
    assert (base.max_connections, base.max_age_s) == (7, 3600.0)
    t = LimitTable.from_config({"defaults": {"messages_per_hour": 1000},
                                "site": [{"domain": "slow.example", "max_age_s": 86400}]}, base)
    got = t.for_site("mx.slow.example", ["slow.example"], [])
    assert (got.max_connections, got.messages_per_hour, got.max_age_s) == (7, 1000.0, 86400.0)
    assert repr(t).startswith("<LimitTable overrides=1 {'domain': 1, 'site': 0, 'pattern': 0} defaults=SiteLimits(")


@pytest.mark.parametrize(("override", "why"), [
    ({"max_connections": 3}, "exactly one of"),
    ({"domain": "a", "site": "b", "max_connections": 3}, "exactly one of"),
    ({"domain": "", "max_connections": 3}, "non-empty"),
    ({"domain": "a.example", "max_conns": 3}, "unknown limit keys"),
    ({"domain": "a.example", "max_connections": 0}, "must be >= 1"),
    ({"domain": "a.example", "max_connections": 2.5}, "expected an integer"),
    ({"domain": "a.example", "messages_per_minute": "10"}, "expected a number"),
    ({"domain": "a.example", "messages_per_minute": -1}, "unlimited"),
])
def test_bad_overrides_fail_at_load(override: dict, why: str) -> None:
    """Mistakes in [[sched.site]] are reported with the entry index when the table is built."""
    with pytest.raises(ConfigError, match=why) as info:
        LimitTable(SiteLimits(), [{"domain": "ok.example"}, override])
    assert "sched.site[1]" in str(info.value)
