"""`ctl suspend --domain X` holds X's recipients (even on a site shared with other domains, which
keep flowing); status lists the suspension; `resume` delivers them, each exactly once."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterator

import pytest

from mta_engine.control.protocol import request
from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port, wait_for
from tests.support.provider_sink import ProviderSink

pytestmark = pytest.mark.integration

HELD, SAME_SITE, OTHER_SITE = "held.test", "neighbour.test", "elsewhere.test"
IPS = {"mx.shared.sites.test": "127.0.0.58", "mx.other.sites.test": "127.0.0.59"}
MX = {HELD: "mx.shared.sites.test", SAME_SITE: "mx.shared.sites.test", OTHER_SITE: "mx.other.sites.test"}
RAW = "From: news@sender.test\nTo: {{ email }}\nSubject: hi {{ first_name }}\n\nHello {{ first_name }}\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[DnsServer, dict[str, ProviderSink], int]]:
    port = free_port("127.0.0.58")
    dns = DnsServer(mx={d: [(10, h)] for d, h in MX.items()}, a=IPS, listen="127.0.0.57", ttl_s=300)
    sinks = {h: ProviderSink(ip, port, tmp_path / f"sink-{h}", {"store_data": False}) for h, ip in IPS.items()}
    try:
        dns.start()
        for s in sinks.values():
            s.start()
        yield dns, sinks, port
    finally:
        for s in sinks.values():
            s.stop()
        dns.stop()


def rcpts(domain: str, tag: str, n: int) -> list[dict[str, object]]:
    return [{"email": f"{tag}{i}@{domain}", "substitutions": {"first_name": f"N{i}"}} for i in range(n)]


def test_suspended_domain_is_held_until_resumed(world, tmp_path: Path) -> None:
    dns, sinks, port = world

    def at_sinks() -> collections.Counter[str]:
        return collections.Counter(r for s in sinks.values() for r in s.accepted_rcpts())

    with Engine(tmp_path / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port) as eng:
        ans = request(eng.control_path, {"cmd": "suspend", "domain": HELD})
        assert ans["ok"], ans
        assert eng.status()["suspended"] == {"domain": [HELD]}

        held = rcpts(HELD, "h", 20)
        first = rcpts(SAME_SITE, "a", 20) + rcpts(OTHER_SITE, "b", 20)
        # one message mixing all three domains: the hold is per domain, not per message or site
        eng.inject({"envelope_sender": "b@sender.test", "content": RAW, "recipients": held + first})
        finals = eng.wait_final(len(first), timeout_s=60)
        assert {e["recipient"] for e in finals} == {r["email"] for r in first}
        # a later campaign passes the held one: the scheduler went on working while HELD stayed held
        later = rcpts(SAME_SITE, "c", 10)
        eng.inject({"envelope_sender": "b@sender.test", "content": RAW, "recipients": later})
        finals = eng.wait_final(len(first) + len(later), timeout_s=60)
        assert all(e["type"] == "Delivery" for e in finals)
        assert not [e for e in finals if e["recipient"].endswith("@" + HELD)]
        assert not [r for r in at_sinks() if r.endswith("@" + HELD)]
        st = eng.status()
        assert st["suspended"] == {"domain": [HELD]}
        assert st["queue"]["recipients"] == len(held)
        assert st["queue"]["in_flight"] == 0
        assert not [e for e in eng.events("TransientFailure") if e["recipient"].endswith("@" + HELD)]

        ans = request(eng.control_path, {"cmd": "resume", "domain": HELD})
        assert ans["ok"], ans
        everyone = held + first + later
        finals = eng.wait_final(len(everyone), timeout_s=60)
        assert collections.Counter(e["type"] for e in finals) == {"Delivery": len(everyone)}
        assert {e["recipient"] for e in finals} == {r["email"] for r in everyone}
        got = at_sinks()
        assert set(got) == {r["email"] for r in everyone} and max(got.values()) == 1
        assert {r for r in got if r.endswith("@" + HELD)} <= set(sinks["mx.shared.sites.test"].accepted_rcpts())
        wait_for(lambda: eng.status()["queue"]["recipients"] == 0, 10, what="an empty queue")
        assert eng.status()["suspended"] == {}
