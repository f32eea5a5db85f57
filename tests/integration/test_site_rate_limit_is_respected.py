"""A `[[sched.site]]` rate limit (messages_per_minute) is a smooth token bucket: over any window of w
seconds a limited site receives at most rate * w + burst messages, while an unlimited site is not held
back by it."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.dnsmasq import DnsServer
from tests.support.engine import Engine
from tests.support.procs import free_port
from tests.support.provider_sink import ProviderSink

pytestmark = pytest.mark.integration

LIMITED, CONTROL = "limited.test", "control.test"
IPS = {LIMITED: "127.0.0.51", CONTROL: "127.0.0.52"}
RATE_PER_MIN = 600  # 10 per second
RATE_PER_S = RATE_PER_MIN / 60
BURST = RATE_PER_S * 1.0  # the engine's default burst: one second's worth
N = 80
RAW = ("From: News <news@sender.test>\nTo: {{ email }}\nSubject: Hello {{ first_name }}\n\n"
       "Hi {{ first_name }}, this is for you alone.\n")


class World:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port(IPS[LIMITED])
        mx = {d: [(10, f"mx.{d.split('.')[0]}.sites.test")] for d in IPS}
        a = {f"mx.{d.split('.')[0]}.sites.test": ip for d, ip in IPS.items()}
        self.dns = DnsServer(mx=mx, a=a, listen="127.0.0.50", ttl_s=300)
        self.sinks = {d: ProviderSink(ip, self.port, tmp / f"sink-{d}", {"store_data": False})
                      for d, ip in IPS.items()}

    def start(self) -> "World":
        self.dns.start()
        for s in self.sinks.values():
            s.start()
        return self

    def stop(self) -> None:
        for s in self.sinks.values():
            s.stop()
        self.dns.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w.start()
    finally:
        w.stop()


def rcpts(domain: str) -> list[dict[str, object]]:
    return [{"email": f"user{i}@{domain}", "substitutions": {"first_name": f"N{i}"}} for i in range(N)]


def worst_window(ts: list[float]) -> tuple[float, int, float]:
    """The window [ts[i], ts[j]] (at least 1 s long) that comes closest to breaking the bound:
    returns (slack, count, w) with slack = 1.1 * rate * w + burst - count (negative = broken)."""
    ts = sorted(ts)
    worst = (float("inf"), 0, 0.0)
    for i in range(len(ts)):
        for j in range(i, len(ts)):
            w = max(1.0, ts[j] - ts[i])
            count = j - i + 1
            slack = 1.1 * RATE_PER_S * w + BURST - count
            if slack < worst[0]:
                worst = (slack, count, w)
    return worst


def test_messages_per_minute_is_a_smooth_token_bucket(world: World, tmp_path: Path) -> None:
    eng = Engine(tmp_path / "engine", dns_port=world.dns.port, dns_host=world.dns.host, smtp_port=world.port)
    with open(eng.config_path, "a") as fh:  # Engine's TOML writer has no arrays of tables
        fh.write(f'[[sched.site]]\ndomain = ["{LIMITED}"]\nmessages_per_minute = {RATE_PER_MIN}\n')
    with eng:
        for domain in (LIMITED, CONTROL):
            answer = eng.inject({"envelope_sender": "b@sender.test", "content": RAW, "recipients": rcpts(domain)})
            assert answer["success_count"] == N and answer["fail_count"] == 0
        finals = eng.wait_final(2 * N, timeout_s=120)
        assert collections.Counter(e["type"] for e in finals) == {"Delivery": 2 * N}, finals[:5]

        by_domain: dict[str, list[float]] = {LIMITED: [], CONTROL: []}
        for e in finals:
            by_domain[e["recipient"].rsplit("@", 1)[1]].append(float(e["timestamp"]))
        limited, control = sorted(by_domain[LIMITED]), sorted(by_domain[CONTROL])
        assert len(limited) == len(control) == N

        # every recipient arrived exactly once, each at its own site
        for domain in (LIMITED, CONTROL):
            got = collections.Counter(world.sinks[domain].accepted_rcpts())
            assert set(got) == {f"user{i}@{domain}" for i in range(N)} and max(got.values()) == 1

        # the bucket holds: in every window [t, t + w], w from 1 s to the whole run
        slack, count, w = worst_window(limited)
        assert slack >= 0, f"{count} deliveries in {w:.2f}s > 1.1 * {RATE_PER_S:g}/s * w + {BURST:g}"
        # ... the same bound holds where the messages arrived (the sink's clock)
        slack, count, w = worst_window([m["t"] for m in world.sinks[LIMITED].accepted()])
        assert slack >= 0, f"sink saw {count} messages in {w:.2f}s"
        # the limit really was in force (80 messages at 10/s after a 10-message burst take >= 7 s) -
        # this is the bucket's arithmetic, not a speed figure
        assert limited[-1] - limited[0] >= (N - BURST) / RATE_PER_S * 0.9
        # the unlimited site is not held back by its neighbour's limit
        assert control[-1] < limited[-1]
