"""Bench W3: the W1 newsletter against sinks that behave like large providers.

    python -m bench.w3 [--quick] [--messages N] [--seed S]

World: dnsmasq on 127.0.0.9 serving MX for every domain of the domain mix (as bench/world.py) plus
``news.sender.test`` (the envelope sender's domain, so DSNs are delivered and counted). Every site
maps onto one of 8 provider sinks (``tests.support.provider_sink``) on 127.0.0.10-17, except the
Gmail-like site ``site-g``, which has its own sink on 127.0.0.18 that answers ``421 4.7.28`` once
it has accepted more than R messages in the trailing minute (R = 60 % of what the run sends it, so
it always trips). DSNs go to a ninth sink on 127.0.0.19. All sinks: 20 ms before every reply,
1 % of recipients ``550 5.1.1`` and 3 % greylisted once (``451 4.7.1``, accepted on a retry after
1 s: the BENCH.md 60 s is shortened along with the engine's retry interval, 2 s), 100 RCPTs per
transaction (``452 4.5.3`` beyond). Decisions hash the address (crc32, seeded), so the expected
sets are computed here from the same function the sinks use.

Figures: drain time (first inject request -> last final outcome of a campaign recipient), and exact
outcome counts checked against the sinks' script: delivered = total - bounced, bounced = the 1 %
set exactly (550 5.1.1), every greylisted recipient delivered after a 451 4.7.1 TransientFailure,
every recipient accepted exactly once by a sink, one DSN report line per bounced recipient. A
miscount is a failure: the result JSON says ``"ok": false`` and the exit status is 1.
Writes ``bench/results/W3-<date>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import json
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.support.dnsmasq import spread_sites
from tests.support.engine import Engine
from tests.support.provider_sink import (DEFAULT_BOUNCE_REPLY, DEFAULT_GREY_REPLY, DEFAULT_RATE_REPLY,
                                         ProviderSink, expected_sets)

from .run import git_commit, machine, proc_sample, results_dir
from .world import (DNS_HOST, DOMAIN_MIX, SENDER, QuietDnsServer, RecipientGenerator, batches, common_port,
                    personalised_content, start_all, stop_all)

SINK_HOSTS = [f"127.0.0.{i}" for i in range(10, 18)]
THROTTLED_SITE = "site-g"
THROTTLED_HOST = "127.0.0.18"
DSN_HOST = "127.0.0.19"
SENDER_DOMAIN = SENDER.rsplit("@", 1)[1]
WORKERS = 2
BATCH = 2000
CONCURRENCY = 4
TIME_LIMIT_S = 900.0
LATENCY_MS = 20
BOUNCE_SHARE = 0.01
GREY_SHARE = 0.03
GREY_MIN_RETRY_S = 1.0
MAX_RCPT = 100
RETRY_INTERVALS_S = [2.0]
RATE_SHARE_OF_SITE = 0.25  # of the site's messages per minute: reached even during slow start
QUICK_RATE_SHARE_OF_SITE = 0.6
"""--quick: the site's whole share arrives within the first minute anyway; a higher limit keeps the
throttled tail (site messages / limit minutes) short enough for make bench-quick."""
FINAL = {"Delivery", "Bounce", "Expiration", "AdminBounce"}


def sink_script(seed: int, rate_limit_per_minute: int | None = None) -> dict[str, Any]:
    script: dict[str, Any] = {
        "latency_ms": LATENCY_MS, "store_data": False, "max_rcpt": MAX_RCPT,
        "bounce": {"share": BOUNCE_SHARE, "seed": seed, "reply": DEFAULT_BOUNCE_REPLY},
        "greylist": {"share": GREY_SHARE, "seed": seed, "reply": DEFAULT_GREY_REPLY,
                     "min_retry_s": GREY_MIN_RETRY_S},
    }
    if rate_limit_per_minute:
        script["rate_limit"] = {"per_minute": rate_limit_per_minute, "window_s": 60.0, "reply": DEFAULT_RATE_REPLY}
    return script


class W3World:
    """dnsmasq + 8 provider sinks + the rate-limited site's sink + the DSN sink; stopped by PID."""

    def __init__(self, tmp: Path, seed: int, rate_limit_per_minute: int) -> None:
        self.port = common_port([*SINK_HOSTS, THROTTLED_HOST, DSN_HOST])
        spread = spread_sites(SINK_HOSTS)
        self.dns = QuietDnsServer.from_domain_mix(
            DOMAIN_MIX, site_ips=lambda s: THROTTLED_HOST if s == THROTTLED_SITE else spread(s),
            listen=DNS_HOST, ttl_s=3600)
        self.dns.mx[SENDER_DOMAIN] = [(10, "mx.dsn-sink.test")]
        self.dns.a["mx.dsn-sink.test"] = [DSN_HOST]
        self.script = sink_script(seed)
        self.sinks = [ProviderSink(h, self.port, tmp / f"sink-{h}", self.script) for h in SINK_HOSTS]
        self.throttled = ProviderSink(THROTTLED_HOST, self.port, tmp / "sink-throttled",
                                      sink_script(seed, rate_limit_per_minute))
        self.dsn_sink = ProviderSink(DSN_HOST, self.port, tmp / "sink-dsn", {"store_data": True})

    @property
    def all_sinks(self) -> list[ProviderSink]:
        return [*self.sinks, self.throttled, self.dsn_sink]

    def start(self) -> W3World:
        start_all(self.dns, self.all_sinks)
        return self

    def stop(self) -> None:
        stop_all(self.dns, self.all_sinks)


def read_events(path: Path) -> list[dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    lines.pop()
    return [orjson.loads(line) for line in lines if line.strip()]


class Tail:
    """Counts final outcomes of campaign recipients and of DSNs, incrementally."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""
        self.campaign_finals = 0
        self.dsn_finals = 0
        self.dsn_receptions = 0
        self.delivery_ts: list[float] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            ev = orjson.loads(line)
            t = ev.get("type")
            if t == "Reception" and ev.get("dsn_for"):
                self.dsn_receptions += 1
            elif t in FINAL:
                if ev.get("recipient") == SENDER:
                    self.dsn_finals += 1
                else:
                    self.campaign_finals += 1
                    if t == "Delivery":
                        self.delivery_ts.append(float(ev["timestamp"]))


def check(n: int, emails: list[str], expected: dict[str, set[str]], events: list[dict[str, Any]],
          world: W3World) -> tuple[dict[str, Any], list[str]]:
    """Exact outcome counts against what the sinks were told to do; returns (counts, failures)."""
    fail: list[str] = []
    everyone = set(emails)
    bounce_set, grey_set = expected["bounce"], expected["greylist"]
    campaign = [e for e in events if e.get("recipient") in everyone]
    finals = [e for e in campaign if e["type"] in FINAL]
    per_rcpt = collections.Counter(e["recipient"] for e in finals)
    delivered = {e["recipient"] for e in finals if e["type"] == "Delivery"}
    bounced = {e["recipient"] for e in finals if e["type"] == "Bounce"}
    other_final = [e for e in finals if e["type"] not in ("Delivery", "Bounce")]
    if len(finals) != n or set(per_rcpt) != everyone or max(per_rcpt.values(), default=0) != 1:
        fail.append(f"final outcomes: {len(finals)} for {n} recipients, {len(set(per_rcpt))} distinct, "
                    f"max per recipient {max(per_rcpt.values(), default=0)}")
    if bounced != bounce_set:
        fail.append(f"bounced {len(bounced)} != expected {len(bounce_set)} (unexpected "
                    f"{sorted(bounced - bounce_set)[:5]}, missing {sorted(bounce_set - bounced)[:5]})")
    if delivered != everyone - bounce_set:
        fail.append(f"delivered {len(delivered)} != total - bounced = {n - len(bounce_set)} (missing "
                    f"{sorted((everyone - bounce_set) - delivered)[:5]})")
    wrong_code = [e for e in finals if e["type"] == "Bounce" and (e.get("code"), e.get("enhanced")) != (550, "5.1.1")]
    if wrong_code:
        fail.append(f"{len(wrong_code)} bounces not 550 5.1.1, e.g. {wrong_code[0]}")
    if other_final:
        fail.append(f"{len(other_final)} expirations/admin bounces, e.g. {other_final[0]}")
    transient = [e for e in campaign if e["type"] == "TransientFailure"]
    grey_tf = {e["recipient"] for e in transient if (e.get("code"), e.get("enhanced")) == (451, "4.7.1")}
    if grey_tf != grey_set:
        fail.append(f"451 4.7.1 TransientFailure for {len(grey_tf)} recipients, expected the {len(grey_set)} "
                    f"greylisted (unexpected {sorted(grey_tf - grey_set)[:5]}, missing {sorted(grey_set - grey_tf)[:5]})")
    first_grey = {}
    for e in transient:
        if e["recipient"] in grey_set and (e.get("code"), e.get("enhanced")) == (451, "4.7.1"):
            first_grey.setdefault(e["recipient"], e["timestamp"])
    delivered_at = {e["recipient"]: e["timestamp"] for e in finals if e["type"] == "Delivery"}
    not_after = [r for r in grey_set if r in first_grey and not first_grey[r] <= delivered_at.get(r, -1)]
    if not grey_set <= delivered or not_after:
        fail.append(f"greylisted not delivered after their TransientFailure: {sorted(not_after)[:5]}, "
                    f"undelivered {sorted(grey_set - delivered)[:5]}")
    # the sinks' side: every delivered recipient accepted exactly once, nobody else
    accepted = collections.Counter(r for s in [*world.sinks, world.throttled] for r in s.accepted_rcpts())
    dup = {r: c for r, c in accepted.items() if c > 1}
    if set(accepted) != delivered or dup:
        fail.append(f"sinks accepted {len(accepted)} distinct recipients ({sum(accepted.values())} in all) for "
                    f"{len(delivered)} deliveries; duplicates {len(dup)}, e.g. {list(dup.items())[:3]}")
    decisions = [d for s in [*world.sinks, world.throttled] for d in s.decisions()]
    by_rule = collections.Counter(d["rule"] for d in decisions)
    sink_bounced = {d["rcpt"] for d in decisions if d["rule"] == "bounce"}
    if sink_bounced != bounce_set:
        fail.append(f"sinks refused {len(sink_bounced)} recipients with 550, script says {len(bounce_set)}")
    if not by_rule.get("rate_limit"):
        fail.append(f"the {THROTTLED_SITE} sink never answered 421 4.7.28: the workload did not happen")
    # DSNs: one report line per bounced recipient, each DSN delivered to the sender's sink
    dsn_receptions = [e for e in events if e["type"] == "Reception" and e.get("dsn_for")]
    dsn_finals = [e for e in events if e["type"] in FINAL and e.get("recipient") == SENDER]
    dsn_msgs = world.dsn_sink.accepted()
    reported = collections.Counter()
    for m in dsn_msgs:
        for addr in re.findall(rb"(?im)^Final-Recipient:\s*rfc822;\s*(\S+)\s*$", m["data"]):
            reported[addr.decode()] += 1
    if set(reported) != bounce_set or max(reported.values(), default=1) != 1:
        fail.append(f"DSNs report {len(reported)} recipients ({sum(reported.values())} lines) for "
                    f"{len(bounce_set)} bounces")
    if len(dsn_msgs) != len(dsn_receptions) or any(e["type"] != "Delivery" for e in dsn_finals):
        fail.append(f"{len(dsn_receptions)} DSNs queued, {len(dsn_msgs)} accepted by the DSN sink, "
                    f"finals {collections.Counter(e['type'] for e in dsn_finals)}")
    if any(not e.get("dsn") for e in finals if e["type"] == "Bounce"):
        fail.append("a Bounce record without its DSN id")
    counts = {
        "recipients": n, "delivered": len(delivered), "bounced": len(bounced),
        "expected_bounced": len(bounce_set), "greylisted": len(grey_set),
        "greylisted_delivered_after_451": len(grey_set & delivered) - len(not_after),
        "other_finals": len(other_final),
        "sink_accepted_recipients": sum(accepted.values()), "sink_duplicates": sum(c - 1 for c in dup.values()),
        "sink_decisions": dict(by_rule),
        "transient_failures": len(transient),
        "transient_by_reply": dict(collections.Counter(f"{e.get('code')} {e.get('enhanced')}" for e in transient)),
        "dsns_written": len(dsn_receptions), "dsns_delivered": len(dsn_msgs),
        "dsn_report_lines": sum(reported.values()),
    }
    return counts, fail


def run(n: int, seed: int, keep_dir: bool = False, quick: bool = False) -> dict[str, Any]:
    gen = RecipientGenerator(seed)
    rcpts = gen.generate(n)
    emails = [r["email"] for r in rcpts]
    site_msgs = sum(1 for e in emails if gen.site_of[e.rsplit("@", 1)[1]] == THROTTLED_SITE)
    rate_limit = max(10, int(site_msgs * (QUICK_RATE_SHARE_OF_SITE if quick else RATE_SHARE_OF_SITE)))
    script = sink_script(seed)
    expected = expected_sets(script, emails)
    content = personalised_content()
    payloads = [orjson.dumps({"envelope_sender": SENDER, "content": content, "recipients": b, "campaign": "bench-W3"})
                for b in batches(rcpts, BATCH)]
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-W3-"))
    world = W3World(tmp, seed, rate_limit)
    extra = {"delivery": {"workers": WORKERS}, "queue": {"retry_intervals_s": RETRY_INTERVALS_S}}
    eng: Engine | None = None
    from tqdm import tqdm

    bar = tqdm(total=n, desc=f"W3 {n:,} msgs", unit="rcpt", smoothing=0.1)
    try:
        world.start()
        eng = Engine(tmp / "engine", dns_port=world.dns.port, dns_host=world.dns.host, smtp_port=world.port,
                     workers=WORKERS, extra=extra)
        eng.start(timeout_s=60)
        sup = eng.proc.pid  # type: ignore[union-attr]
        cpu0 = proc_sample(sup)
        url = f"http://127.0.0.1:{eng.http_port}/api/inject/v1"
        inject_errors: list[str] = []
        inject_done = {"t": 0.0}

        def post(data: bytes) -> dict[str, Any]:
            req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                return json.loads(r.read())

        def inject_all() -> None:
            try:
                with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
                    answers = list(pool.map(post, payloads))
                fails = sum(a["fail_count"] for a in answers)
                if fails:
                    inject_errors.append(f"{fails} recipients refused at inject")
            except Exception as exc:
                inject_errors.append(repr(exc))
            inject_done["t"] = time.time()

        tail = Tail(eng.accounting_path)
        t0, m0 = time.time(), time.monotonic()
        injector = threading.Thread(target=inject_all, name="injector", daemon=True)
        injector.start()
        while tail.campaign_finals < n or tail.dsn_finals < tail.dsn_receptions or not inject_done["t"]:
            if time.monotonic() - m0 > TIME_LIMIT_S:
                raise TimeoutError(f"W3: {tail.campaign_finals}/{n} final outcomes, DSNs {tail.dsn_finals}/"
                                   f"{tail.dsn_receptions} after {TIME_LIMIT_S:.0f}s")
            if inject_errors:
                raise RuntimeError(f"inject failed: {inject_errors}")
            eng.proc.check_alive()  # type: ignore[union-attr]
            time.sleep(0.2)  # polling interval of the progress loop
            tail.poll()
            bar.update(tail.campaign_finals - bar.n)
        injector.join(timeout=60)
        st = eng.status()
        cpu1 = proc_sample(sup)
        events = read_events(eng.accounting_path)
    finally:
        bar.close()
        try:
            if eng is not None:
                eng.stop(timeout_s=60)
        finally:
            world.stop()
    try:
        counts, failures = check(n, emails, expected, events, world)
        campaign_final_ts = [float(e["timestamp"]) for e in events
                             if e["type"] in FINAL and e.get("recipient") != SENDER]
        modes = [{"t": round(e["timestamp"] - t0, 3), "site": e["site"], "old": e["old_mode"], "mode": e["mode"],
                  "cause": e["cause"]} for e in events if e["type"] == "SiteModeChange"]
        t_end = max(campaign_final_ts)
        cpu_run = sum(v["user_s"] + v["sys_s"] for v in cpu1.values()) - \
            sum(v["user_s"] + v["sys_s"] for p, v in cpu0.items() if p in cpu1)
        figures = {
            "drain_s": round(t_end - t0, 3),
            "rate_per_s": round(n / (t_end - t0), 1),
            "inject_s": round(inject_done["t"] - t0, 3),
            "first_delivery_s": round(min(tail.delivery_ts) - t0, 3) if tail.delivery_ts else None,
            "last_dsn_final_s": round(max((float(e["timestamp"]) for e in events if e["type"] in FINAL
                                           and e.get("recipient") == SENDER), default=t0) - t0, 3),
            "cpu_s_engine": round(cpu_run, 2), "cpu_ms_per_msg": round(cpu_run / n * 1000, 3),
            "peak_rss_mb_sum": round(sum(v["hwm"] for v in cpu1.values()) / 2**20, 1),
            "site_mode_changes": len(modes),
            "site_mode_changes_first_20": modes[:20],
            "sites_not_normal_at_end": st.get("sites_not_normal"),
            "throttled_site_messages": site_msgs, "throttled_site_rate_limit_per_minute": rate_limit,
            "timeline_delivery_offsets_s": [round(t - t0, 3) for t in sorted(tail.delivery_ts)],
        }
    finally:
        if not keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"counts": counts, "failures": failures, "figures": figures, "ok": not failures,
            "rate_limit_per_minute": rate_limit}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offs = doc["figures"]["timeline_delivery_offsets_s"]
    if not offs:
        return
    bin_s = 1.0
    nb = int(max(offs) / bin_s) + 1
    counts = [0] * nb
    for t in offs:
        counts[min(int(max(t, 0) / bin_s), nb - 1)] += 1
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot([(j + 0.5) * bin_s for j in range(nb)], counts, label="mta-engine delivered/s")
    ax.set_xlabel("seconds since first inject request")
    ax.set_ylabel("delivered messages per second (1 s bins)")
    ax.set_title(f"mta-engine W3: {doc['recipients']:,} messages vs provider sinks "
                 f"(20 ms/reply, 1% 550, 3% greylist, 421 4.7.28 on {THROTTLED_SITE})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.w3", description=(__doc__ or "").strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 messages")
    ap.add_argument("--messages", type=int, default=None, help="messages (default 20,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (spool, logs, sink records)")
    args = ap.parse_args(argv)
    n = args.messages or (5000 if args.quick else 20000)
    command = " ".join(["python -m bench.w3", *(argv if argv is not None else sys.argv[1:])])
    result = run(n, args.seed, keep_dir=args.keep, quick=args.quick)
    date = dt.date.today().isoformat()
    doc = {
        "workload": "W3", "date": date, "command": command, "recipients": n, "ingest": "durable",
        "machine": machine(), "git_commit": git_commit(), "ok": result["ok"], "failures": result["failures"],
        "config": {
            "engine_workers": WORKERS, "inject_batch": BATCH, "inject_concurrency": CONCURRENCY,
            "engine_extra": {"delivery": {"workers": WORKERS}, "queue": {"retry_intervals_s": RETRY_INTERVALS_S}},
            "engine_defaults_from": "tests/support/engine.py + mta_engine/config.py (shipped throttle rules)",
            "sinks": {"provider_sinks": SINK_HOSTS, "throttled_site": THROTTLED_SITE,
                      "throttled_sink": THROTTLED_HOST, "dsn_sink": DSN_HOST,
                      "script": sink_script(args.seed, result["rate_limit_per_minute"]),
                      "rate_limit_rule": f"{RATE_SHARE_OF_SITE:.0%} of the messages the run sends {THROTTLED_SITE}"},
            "greylist_note": "BENCH.md's 60 s greylist delay shortened to 1 s with 2 s retries",
            "world": "dnsmasq 127.0.0.9 (domain mix + news.sender.test); provider sinks 127.0.0.10-19",
            "seed": args.seed, "time_limit_s": TIME_LIMIT_S,
        },
        "counts": result["counts"],
        "figures": result["figures"],
    }
    where = results_dir(args.quick)
    out = where / f"W3-{date}.json"
    out.write_text(json.dumps(doc, indent=1))
    plot(doc, where / f"W3-{date}.png")
    f, c = doc["figures"], doc["counts"]
    print(f"W3 {n:,} messages: drain {f['drain_s']:.1f} s ({f['rate_per_s']:,.0f} msg/s), delivered {c['delivered']}, "
          f"bounced {c['bounced']}/{c['expected_bounced']}, greylisted {c['greylisted']}, "
          f"transient {c['transient_failures']} {c['transient_by_reply']}, DSNs {c['dsns_written']}, "
          f"CPU {f['cpu_ms_per_msg']:.2f} ms/msg -> {out}")
    if result["failures"]:
        print("MISCOUNT:\n  " + "\n  ".join(result["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
