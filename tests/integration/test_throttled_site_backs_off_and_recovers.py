"""A provider that answers 421 4.7.28 once our rate passes its limit: the site goes into BACKOFF under
the Gmail 4.7.28 throttle rule, recovers step by step, and every recipient still arrives exactly once."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port, wait_for
from tests.support.provider_sink import DEFAULT_RATE_REPLY, ProviderSink

pytestmark = pytest.mark.integration

DOMAIN = "gmail-like.test"
SINK_IP = "127.0.0.54"
PER_WINDOW = 15  # the sink accepts this many messages per trailing window ...
WINDOW_S = 2.0  # ... of this many seconds (7.5/s: a provider's "per minute", scaled down for a test)
SITE_RATE_PER_MIN = 360  # the engine's configured rate for the site (6/s): its first burst
# (6 + 6/s) passes the sink's limit; the backoff (50 %) and the steady rate after recovery do not
N = 60
# The shipped gmail-unusual-rate rule backs off for 1800 s; a user rule file with the same name,
# checked before the shipped rules, keeps its conditions but shortens the times for the test.
RULES = """
[[rule]]
name = "gmail-unusual-rate"
provider = "gmail"
code = [421, 450, 451]
enhanced = "4.7.28"
backoff_s = 2
recovery_step_s = 1
rate_factor = 0.5
concurrency_factor = 0.5
"""
RAW = "From: news@sender.test\nTo: {{ email }}\nSubject: for {{ first_name }}\n\nHello {{ first_name }}\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[DnsServer, ProviderSink, int]]:
    port = free_port(SINK_IP)
    dns = DnsServer(mx={DOMAIN: [(10, "mx.gmail-like.sites.test")]}, a={"mx.gmail-like.sites.test": SINK_IP},
                    listen="127.0.0.53", ttl_s=300)
    sink = ProviderSink(SINK_IP, port, tmp_path / "sink", {
        "store_data": False,
        "rate_limit": {"per_minute": PER_WINDOW, "window_s": WINDOW_S, "reply": DEFAULT_RATE_REPLY}})
    try:
        dns.start()
        sink.start()
        yield dns, sink, port
    finally:
        sink.stop()
        dns.stop()


def test_421_4_7_28_backs_off_recovers_and_loses_nothing(world, tmp_path: Path) -> None:
    dns, sink, port = world
    rules = tmp_path / "throttle-rules.toml"
    rules.write_text(RULES)
    eng = Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port,
                 extra={"queue": {"retry_intervals_s": [1.0]}, "sched": {"throttle_rules": [str(rules)]}})
    with open(eng.config_path, "a") as fh:  # Engine's TOML writer has no arrays of tables
        fh.write(f'[[sched.site]]\ndomain = "{DOMAIN}"\nmessages_per_minute = {SITE_RATE_PER_MIN}\n')
    with eng:
        everyone = [f"user{i}@{DOMAIN}" for i in range(N)]
        eng.inject({"envelope_sender": "b@sender.test", "content": RAW,
                    "recipients": [{"email": a, "substitutions": {"first_name": f"N{i}"}}
                                   for i, a in enumerate(everyone)]})
        finals = eng.wait_final(N, timeout_s=180)
        assert collections.Counter(e["type"] for e in finals) == {"Delivery": N}
        assert {e["recipient"] for e in finals} == set(everyone)

        # the sink did refuse, and those refusals were transient failures, not losses
        assert sink.decisions("rate_limit"), "the sink never hit its rate limit: the test proves nothing"
        transient = eng.events("TransientFailure")
        assert any(e["code"] == 421 and e["enhanced"] == "4.7.28" for e in transient), transient[:3]
        # the rest of a job whose session got the 421 comes back unattempted (451 4.4.2), never bounced
        assert all((e["code"], e["enhanced"]) in {(421, "4.7.28"), (451, "4.4.2")} for e in transient)
        got = collections.Counter(sink.accepted_rcpts())
        assert set(got) == set(everyone) and max(got.values()) == 1, "lost or duplicated at the sink"

        # BACKOFF, named after the rule, then recovery steps and BACKOFF -> NORMAL, all while the
        # campaign was still going (the recovered limits carried the rest of it)
        changes = eng.events("SiteModeChange")
        into_backoff = [c for c in changes if c["mode"] == "BACKOFF" and c["old_mode"] == "NORMAL"]
        assert into_backoff, changes
        first = into_backoff[0]
        assert "gmail-unusual-rate" in first["cause"] and "(gmail)" in first["cause"], first
        steps = [c for c in changes if c["cause"].startswith("recovery step") and c["timestamp"] > first["timestamp"]]
        recovered = [c for c in changes if c["old_mode"] == "BACKOFF" and c["mode"] == "NORMAL"
                     and c["timestamp"] > first["timestamp"]]
        assert steps, changes
        assert recovered and recovered[-1]["cause"].startswith("recovered"), changes
        assert recovered[-1]["timestamp"] < max(e["timestamp"] for e in finals)
        assert eng.status()["sites_not_normal"] == []


def test_idle_site_is_logged_back_to_normal(world, tmp_path: Path) -> None:
    """No configured rate: BACKOFF can only halve the connections, so the site is throttled until its
    last recipient is through. After that, with nothing queued, its backoff still runs out (2 s + 3
    recovery steps of 1 s): the log must say so and status must stop listing it."""
    dns, sink, port = world
    rules = tmp_path / "throttle-rules.toml"
    rules.write_text(RULES)
    with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port,
                extra={"queue": {"retry_intervals_s": [1.0]}, "sched": {"throttle_rules": [str(rules)]}}) as eng:
        eng.inject({"envelope_sender": "b@sender.test", "content": RAW,
                    "recipients": [{"email": f"user{i}@{DOMAIN}", "substitutions": {"first_name": f"N{i}"}}
                                   for i in range(N)]})
        eng.wait_final(N, timeout_s=180)
        assert eng.events("SiteModeChange"), "never throttled: the test proves nothing"

        def back_to_normal() -> bool:
            last = eng.events("SiteModeChange")[-1]
            return last["mode"] == "NORMAL" and eng.status()["sites_not_normal"] == []

        wait_for(back_to_normal, 20, interval_s=0.2, what="the idle site's BACKOFF -> NORMAL record")
