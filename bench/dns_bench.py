"""CPU of our resolver per lookup on a cold cache, against the bench world's real dnsmasq.

    python -m bench.dns_bench [--rounds R]

Starts the bench world's dnsmasq (127.0.0.9, every domain of ``domain-mix.csv``), then R times:
a fresh ``Resolver`` (empty caches) looks up the MX of the 1,023 domains, their ``_mta-sts`` TXT
records and the A records of the 686 MX hosts with DO+AD (as the worker does with DANE on): the
lookups of a cold W2 run. Prints this process's CPU per lookup of each kind, and how many queries
the UDP fast path answered and how many went through dnspython's resolver. Bounded: R rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from bench.world import DOMAIN_MIX, QuietDnsServer, load_mix
from mta_engine.routing.resolver import Resolver
from tests.support.dnsmasq import spread_sites
from tests.support.procs import free_port

DNS_HOST = "127.0.0.9"


async def one_round(host: str, port: int, domains: list[str]) -> dict[str, float]:
    resolver = Resolver([host], port=port, timeout_s=5.0, ipv6=False)
    c0 = time.process_time()
    plans = await asyncio.gather(*(resolver.resolve_mx(d) for d in domains))
    c1 = time.process_time()
    await asyncio.gather(*(resolver.resolve_txt(f"_mta-sts.{d}") for d in domains))
    c2 = time.process_time()
    resolver.authenticated_a = True
    hosts = sorted({h.name for plan in plans for h in plan.hosts})
    await asyncio.gather(*(resolver.resolve_addresses(h) for h in hosts))
    c3 = time.process_time()
    return {"mx_us": 1e6 * (c1 - c0) / len(domains), "txt_us": 1e6 * (c2 - c1) / len(domains),
            "a_us": 1e6 * (c3 - c2) / len(hosts), "fast": getattr(resolver, "fast_answers", 0),
            "full": getattr(resolver, "full_queries", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold-cache rounds (default 3)")
    args = parser.parse_args()
    mix = load_mix()
    server = QuietDnsServer.from_domain_mix(
        DOMAIN_MIX, spread_sites(["127.0.0.10"]), ttl_s=3600, listen=DNS_HOST,
        port=free_port(DNS_HOST))
    server.start()
    try:
        for n in range(args.rounds):
            r = uvloop.run(one_round(server.host, server.port, [d for d, _, _ in mix]))
            print(f"round {n + 1}: MX {r['mx_us']:.0f} us, TXT {r['txt_us']:.0f} us, A (DO+AD) {r['a_us']:.0f} us "
                  f"of CPU per lookup; fast path {r['fast']:.0f} queries, dnspython {r['full']:.0f}", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
