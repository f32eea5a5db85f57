"""Bench W4: a backlog of 1,000,000 recipients (W2 content), queued while delivery is paused, then resumed.

    python -m bench.w4 [--quick] [--messages N] [--window S]

How delivery is paused (honest and simple): the engine runs against the normal world (dnsmasq + 8
smtp-sinks), and before the first inject request the campaign is suspended through the control socket
(``{"cmd": "suspend", "campaign": "bench-W4"}``): nothing of it is dispatched, it only queues. After all
recipients are injected (batches of 20,000, 4 concurrent requests, durable commits) the engine is stopped
(SIGTERM drain) and started again on the same spool; suspensions are kept in the spool, so the campaign is
resumed through the control socket as soon as the restarted engine is ready, and the new manager must
find the whole backlog in the spool.

Figures: inject rate; spool bytes per queued recipient (LMDB files, allocated blocks, after inject and
stop); time from the restart's process start to the first Delivery; manager peak RSS (VmHWM) and all
processes' RSS; then recipients/s delivered over a fixed window (60 s; 20 s with --quick), after which
the engine is stopped (the backlog is not drained). Bounded: inject aborts after INJECT_LIMIT_S.
Writes ``bench/results/W4-<date>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from mta_engine.control.protocol import request
from tests.support.engine import Engine

from .run import LogTail, _rate_series, git_commit, machine, proc_sample, results_dir, spool_bytes
from .world import SENDER, RecipientGenerator, World, shared_raw_message

CAMPAIGN = "bench-W4"
BATCH = 20_000
CONCURRENCY = 4
WORKERS = 2
INJECT_LIMIT_S = 900.0
RESTART_LIMIT_S = 300.0


def _post(url: str, data: bytes) -> dict[str, Any]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def _apparent(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.mdb"))


def run(n: int, window_s: float, seed: int = 1) -> dict[str, Any]:
    from tqdm import tqdm

    content = shared_raw_message()
    gen = RecipientGenerator(seed)
    world = World().start()
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-W4-"))
    eng = Engine(tmp / "engine", dns_port=world.dns.port, dns_host=world.dns.host, smtp_port=world.port,
                 workers=WORKERS, extra={"delivery": {"workers": WORKERS}})
    out: dict[str, Any] = {"workload": "W4", "recipients_target": n, "batch": BATCH}
    try:
        eng.start(timeout_s=60)
        resp = request(eng.control_path, {"cmd": "suspend", "campaign": CAMPAIGN}, timeout_s=10)
        if not resp.get("ok"):
            raise RuntimeError(f"suspend refused: {resp}")
        out["pause"] = f"control socket suspend campaign={CAMPAIGN}: {resp.get('message')}"
        url = f"http://127.0.0.1:{eng.http_port}/api/inject/v1"
        bar = tqdm(total=n, desc=f"W4 inject (paused) {n:,}", unit="rcpt", smoothing=0.1)
        accepted = 0
        aborted = None
        t0 = time.monotonic()
        starts = list(range(0, n, BATCH))

        def one(start: int) -> int:
            if time.monotonic() - t0 > INJECT_LIMIT_S:
                return -1
            emails = [r["email"] for r in gen.generate(min(BATCH, n - start), start=start)]
            body = orjson.dumps({"envelope_sender": SENDER, "content": content, "recipients": emails,
                                 "campaign": CAMPAIGN})
            return int(_post(url, body)["success_count"])

        # gen.generate(k, start) reseeds, so domains repeat per batch; addresses stay unique (u<start+i>)
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            for got in pool.map(one, starts):
                if got < 0:
                    aborted = f"inject stopped after {INJECT_LIMIT_S:.0f}s"
                    continue
                accepted += got
                bar.update(got)
        bar.close()
        inject_s = time.monotonic() - t0
        st = eng.status()
        out.update(accepted=accepted, inject_s=round(inject_s, 2), inject_rate_per_s=round(accepted / inject_s, 1),
                   queue_after_inject=st.get("queue"), delivered_while_paused=st["since_start"].get("delivered"))
        if aborted:
            out["aborted"] = aborted
        sup = eng.proc.pid  # type: ignore[union-attr]
        out["inject_phase_peak_rss_mb"] = {v["role"]: round(v["hwm"] / 2**20, 1)
                                           for v in proc_sample(sup).values()}
        t_stop = time.monotonic()
        eng.stop(timeout_s=120)
        out["stop_s"] = round(time.monotonic() - t_stop, 2)
        spool = eng.dir / "spool"
        out["spool_bytes_allocated"] = spool_bytes(spool)
        out["spool_bytes_apparent"] = _apparent(spool)
        out["spool_bytes_per_rcpt"] = round(out["spool_bytes_allocated"] / max(accepted, 1), 1)

        # ---- restart on the full backlog
        tail = LogTail(eng.accounting_path)
        tail.poll()  # skip the inject phase's lines
        tail.counts.clear(), tail.final_ts.clear(), tail.delivery_ts.clear()
        t_start = time.time()
        m_start = time.monotonic()
        eng.start(timeout_s=RESTART_LIMIT_S)
        out["ready_s"] = round(time.time() - t_start, 3)
        # suspensions are kept in the spool across restarts: the operator resumes the campaign
        resp = request(eng.control_path, {"cmd": "resume", "campaign": CAMPAIGN}, timeout_s=10)
        if not resp.get("ok"):
            raise RuntimeError(f"resume refused: {resp}")
        sup = eng.proc.pid  # type: ignore[union-attr]
        peak: dict[str, float] = {}
        bar = tqdm(total=None, desc=f"W4 resumed, {window_s:.0f}s window", unit="rcpt")
        first = None
        while True:
            time.sleep(0.2)
            tail.poll()
            for v in proc_sample(sup).values():
                peak[v["role"]] = max(peak.get(v["role"], 0.0), v["hwm"] / 2**20)
            bar.update(len(tail.delivery_ts) - bar.n)
            if first is None and tail.delivery_ts:
                first = min(tail.delivery_ts)
            if first is not None and time.time() - first >= window_s:
                break
            if len(tail.delivery_ts) + tail.finals - len(tail.delivery_ts) >= accepted:
                break  # the whole backlog drained inside the window
            if time.monotonic() - m_start > RESTART_LIMIT_S + window_s:
                out["error"] = "no delivery window completed within the limit"
                break
            eng.proc.check_alive()  # type: ignore[union-attr]
        bar.close()
        st = eng.status()
        cpu = proc_sample(sup)
        out["first_delivery_s_from_process_start"] = round(first - t_start, 3) if first else None
        in_window = [t for t in tail.delivery_ts if first is not None and t <= first + window_s]
        drained = tail.finals >= accepted
        span = (max(in_window) - first) if drained and in_window else window_s
        out.update(window_s=window_s, delivered_in_window=len(in_window), drained_in_window=drained,
                   measured_span_s=round(span, 3),
                   rate_per_s=round(len(in_window) / span, 1) if first and span > 0 else None,
                   peak_rss_mb_by_role=({k: round(v, 1) for k, v in peak.items()}),
                   manager_peak_rss_mb=round(peak.get("manager", 0.0), 1),
                   cpu_s_by_role={v["role"]: round(v["user_s"] + v["sys_s"], 2) for v in cpu.values()},
                   other_outcomes={k: v for k, v in tail.counts.items() if k != "Delivery"},
                   queue_at_end=st.get("queue"), sink=world.counters(),
                   timeline_delivery_offsets_s=[round(t - t_start, 3) for t in tail.delivery_ts])
    finally:
        try:
            eng.stop(timeout_s=120)
        finally:
            world.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    x, y = _rate_series(doc["timeline_delivery_offsets_s"], 1.0)
    ax.plot(x, y, label=f"mta-engine: {doc['rate_per_s']:,.0f} rcpt/s over {doc['measured_span_s']:.0f} s")
    if doc.get("first_delivery_s_from_process_start") is not None:
        ax.axvline(doc["first_delivery_s_from_process_start"], color="grey", ls="--", lw=1,
                   label=f"first delivery {doc['first_delivery_s_from_process_start']:.1f} s after start")
    ax.set_xlabel("seconds since the engine process was started on the backlog")
    ax.set_ylabel("delivered rcpt/s (1 s bins)")
    ax.set_title(f"W4 backlog: {doc['accepted']:,} recipients queued (W2 content), then restart", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_section(doc: dict[str, Any]) -> str:
    f = doc["figures"]
    return f"""## W4 backlog ({doc['date']}, `{doc['command']}`)

{f['accepted']:,} recipients of the W2 body queued with delivery paused (campaign suspended through the control
socket before the first inject; suspensions survive a restart, so the campaign is resumed through the
control socket as soon as the restarted engine is ready), injected in batches of
{BATCH:,} ({CONCURRENCY} concurrent requests) at {f['inject_rate_per_s']:,.0f} rcpt/s; then the engine was
stopped and started again on the same spool.

| figure | value |
|---|---|
| spool after inject (allocated LMDB blocks) | {f['spool_bytes_allocated'] / 2**20:,.0f} MB = {f['spool_bytes_per_rcpt']:,.0f} B per queued recipient (apparent size {f['spool_bytes_apparent'] / 2**20:,.0f} MB) |
| engine ready after restart (ingest up, workers connected) | {f['ready_s']:.2f} s |
| process start → first Delivery | {f['first_delivery_s_from_process_start']} s |
| manager peak RSS (VmHWM) on the backlog | {f['manager_peak_rss_mb']:,.0f} MB (all roles: {f['peak_rss_mb_by_role']}) |
| delivered in the first {f['window_s']:.0f} s after the first delivery | {f['delivered_in_window']:,} in {f['measured_span_s']:.1f} s = **{f['rate_per_s']:,.0f} rcpt/s**{' (backlog fully drained inside the window)' if f['drained_in_window'] else ''} |
| other outcomes in the window | {f['other_outcomes']} |
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.w4", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 recipients, 20 s window")
    ap.add_argument("--messages", type=int, default=None, help="recipients (default 1,000,000)")
    ap.add_argument("--window", type=float, default=None, help="seconds of delivery measured (default 60)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n = args.messages or (100_000 if args.quick else 1_000_000)
    window = args.window or (20.0 if args.quick else 60.0)
    command = " ".join(["python -m bench.w4", *(argv if argv is not None else sys.argv[1:])])
    figures = run(n, window, args.seed)
    date = dt.date.today().isoformat()
    doc = {"workload": "W4", "date": date, "command": command, "machine": machine(), "git_commit": git_commit(),
           "config": {"engine_workers": WORKERS, "inject_batch": BATCH, "inject_concurrency": CONCURRENCY,
                      "pause": "suspend campaign via control socket, stop + restart, resume via control socket",
                      "inject_limit_s": INJECT_LIMIT_S},
           "figures": figures}
    where = results_dir(args.quick)
    (where / f"W4-{date}.json").write_text(json.dumps(doc, indent=1))
    if figures.get("rate_per_s") is not None:
        plot(figures, where / f"W4-{date}.png")
    print(json.dumps({k: v for k, v in figures.items() if k != "timeline_delivery_offsets_s"}, indent=1))
    if not args.quick:
        from .run import write_readme

        write_readme({})
    return 0 if figures.get("rate_per_s") and "error" not in figures else 1


if __name__ == "__main__":
    sys.exit(main())
