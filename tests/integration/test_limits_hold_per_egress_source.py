"""With two egress sources, a site's connection limit holds per source: the receiver sees sessions
from both source addresses, never more than the limit open at once from either, and more than the
limit in all (so the limit is not a site total). A per-source override narrows one source only."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

from tests.support.connection_sink import ConnectionSink, peak_open
from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

SOURCES = ["127.0.0.141", "127.0.0.142"]
SINK_IP, DNS_IP = "127.0.0.143", "127.0.0.144"
DOMAIN = "persource.test"
N = 60


def run(tmp: Path, site_limits: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                              dict[str, Any]]:
    """Send N one-recipient messages to DOMAIN from two sources; return the sink's connection
    events, its accepted messages and the engine's status at the end."""
    port = free_port(SINK_IP)
    dns = DnsServer(mx={DOMAIN: [(10, f"mx.{DOMAIN}")]}, a={f"mx.{DOMAIN}": SINK_IP}, listen=DNS_IP).start()
    # every reply 60 ms late: sessions overlap, so the windows (not the sink's speed) bound them
    sink = ConnectionSink(SINK_IP, port, tmp / "sink", {"latency_ms": 60, "store_data": False}).start()
    try:
        sources = [{"ip": SOURCES[0], "ehlo_name": "out1.test"}, {"ip": SOURCES[1], "ehlo_name": "out2.test"}]
        extra = {"delivery": {"sources": sources, "max_messages_per_connection": 1000},
                 "sched": {"site": site_limits}}
        with Engine(tmp / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1,
                    extra=extra) as eng:
            for i in range(N):  # N messages: N jobs for the one site
                eng.inject({"envelope_sender": "a@sender.test", "dsn": False,
                            "content": f"From: a@sender.test\nSubject: {i}\n\nx\n", "recipients": [f"u{i}@{DOMAIN}"]})
            finals = eng.wait_final(N)
            assert collections.Counter(e["type"] for e in finals) == {"Delivery": N}
            status = eng.status()
        events, accepted = sink.connections(), sink.accepted()
    finally:
        sink.stop()
        dns.stop()
    assert {m["peer"][0] for m in accepted} == set(SOURCES)  # every message came from a configured source
    assert sorted(r for m in accepted for r in m["rcpt_tos"]) == sorted(f"u{i}@{DOMAIN}" for i in range(N))
    return events, accepted, status


def test_connection_limit_holds_per_source(tmp_path: Path) -> None:
    """max_connections = 3 and two sources: at most 3 sessions per source IP, more than 3 in all."""
    limit = 3
    events, _, status = run(tmp_path, [{"domain": DOMAIN, "max_connections": limit, "initial_connections": limit}])
    for ip in SOURCES:
        assert peak_open(events, {ip}) <= limit, f"{ip} held more than {limit} sessions at once"
    assert peak_open(events, set(SOURCES)) > limit, "the two sources never worked side by side"
    site = next(s for s in status["sites_top10"] if DOMAIN in s["site"])
    assert [(s["source"], s["window_limit"]) for s in site["sources"]] == [(ip, limit) for ip in SOURCES]


def test_source_override_narrows_one_source(tmp_path: Path) -> None:
    """A [[sched.site]] entry with source = the first IP: one session from it, several from the other."""
    events, accepted, _ = run(tmp_path, [
        {"domain": DOMAIN, "max_connections": 3, "initial_connections": 3},
        {"domain": DOMAIN, "source": SOURCES[0], "max_connections": 1}])
    assert peak_open(events, {SOURCES[0]}) == 1
    assert 2 <= peak_open(events, {SOURCES[1]}) <= 3
