"""Greylisting (451 4.7.1 on the first try of a sender/recipient pair): exactly the greylisted
recipients get a TransientFailure and are delivered on the retry; nobody bounces, nobody twice."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port
from tests.support.provider_sink import DEFAULT_GREY_REPLY, ProviderSink, expected_sets

pytestmark = pytest.mark.integration

DOMAINS = ["grey-a.test", "grey-b.test"]
SINK_IP = "127.0.0.56"
SCRIPT = {"store_data": False, "latency_ms": 5,
          "greylist": {"share": 0.25, "seed": 3, "reply": DEFAULT_GREY_REPLY, "min_retry_s": 0.5}}
RAW = "From: news@sender.test\nTo: {{ email }}\nSubject: hi {{ first_name }}\n\nHello {{ first_name }}\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[DnsServer, ProviderSink, int]]:
    port = free_port(SINK_IP)
    dns = DnsServer(mx={d: [(10, "mx.grey.sites.test")] for d in DOMAINS}, a={"mx.grey.sites.test": SINK_IP},
                    listen="127.0.0.55", ttl_s=300)
    sink = ProviderSink(SINK_IP, port, tmp_path / "sink", SCRIPT)
    try:
        dns.start()
        sink.start()
        yield dns, sink, port
    finally:
        sink.stop()
        dns.stop()


@pytest.mark.parametrize("per_recipient", [True, False], ids=["template", "shared-body"])
def test_greylisted_get_one_transient_failure_then_delivery(world, tmp_path: Path, per_recipient: bool) -> None:
    dns, sink, port = world
    everyone = [f"user{i}@{DOMAINS[i % 2]}" for i in range(60)]
    grey = expected_sets(SCRIPT, everyone)["greylist"]
    assert 5 <= len(grey) < len(everyone)  # the share picks some, not all (crc32, seed 3)
    if per_recipient:
        content = RAW
        rcpts: list = [{"email": a, "substitutions": {"first_name": f"N{i}"}} for i, a in enumerate(everyone)]
    else:
        content = "From: news@sender.test\nSubject: same\n\nOne body for all.\n"
        rcpts = everyone
    with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port,
                extra={"queue": {"retry_intervals_s": [1.0]}}) as eng:
        answer = eng.inject({"envelope_sender": "b@sender.test", "content": content, "recipients": rcpts})
        assert answer["success_count"] == len(everyone)
        finals = eng.wait_final(len(everyone), timeout_s=120)

        assert collections.Counter(e["type"] for e in finals) == {"Delivery": len(everyone)}
        assert {e["recipient"] for e in finals} == set(everyone)
        assert eng.events("Bounce") == []

        transient = eng.events("TransientFailure")
        assert {e["recipient"] for e in transient} == grey
        assert all(e["code"] == 451 and e["enhanced"] == "4.7.1" for e in transient), transient[:3]
        # each greylisted recipient: its TransientFailure comes before its Delivery
        delivered_at = {e["recipient"]: e["timestamp"] for e in finals}
        assert all(e["timestamp"] <= delivered_at[e["recipient"]] for e in transient)

        # the sink agrees: greylisted once (or more, if a retry came too early), then accepted
        # through the greylist, and every recipient accepted exactly once
        assert {d["rcpt"] for d in sink.decisions("greylist")} == grey
        assert {d["rcpt"] for d in sink.decisions("greylist_passed")} == grey
        got = collections.Counter(sink.accepted_rcpts())
        assert set(got) == set(everyone) and max(got.values()) == 1
        # greylisting is not a throttle signal for the site (shipped exemption rule)
        assert eng.events("SiteModeChange") == []
