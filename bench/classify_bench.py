"""Bounce classifier throughput (issue 5 target: ≥ 50,000 classifications/s).

    python -m bench.classify_bench [--seconds S]

Classifies the labelled corpus (tests/data/bounce_corpus.jsonl) over and over in four modes, each
for about S seconds (default 0.75, so the whole run stays near 3 s):

- ``reply_unique``: ``classify_reply`` on raw multi-line replies, each made unique (a distinct queue
  id appended, as real replies carry), so the LRU cache never hits. The headline figure: it is
  what a worker sees for per-recipient reply texts.
- ``reply_repeated``: the same raw replies repeated, so after one pass everything is a cache hit
  (bulk traffic where one provider repeats one text).
- ``parsed_nocache``: ``classify(code, enhanced, text, phase)`` with the cache disabled: the rule
  engine alone, without reply parsing.
- ``parsed_cached``: the same with the default cache.

Inputs are prepared before each clock starts. Results go to bench/results/classify-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mta_engine.dsn.classify import Classifier, _split_raw

from .run import git_commit, machine

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "bounce_corpus.jsonl"
RESULTS = REPO / "bench" / "results"
TARGET_PER_S = 50_000


def measure(batch: Callable[[], int], seconds: float) -> dict[str, float]:
    """Run ``batch`` (which returns how many it classified) until ``seconds`` pass; report the rate."""
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += batch()
    elapsed = time.perf_counter() - start
    return {"classifications": done, "elapsed_s": round(elapsed, 3), "per_s": round(done / elapsed)}


def readme_section(doc: dict[str, Any]) -> str:
    """The bench/results/README.md section for one classify result (bench/run.py's write_readme)."""
    labels = {
        "reply_unique": "`classify_reply` on unique raw replies (headline; target ≥ 50,000)",
        "reply_repeated": "`classify_reply`, repeated replies (cache hits)",
        "parsed_nocache": "`classify`, parsed replies, cache off (the rule engine alone)",
        "parsed_cached": "`classify`, parsed replies, cache on",
    }
    rows = "\n".join(f"| {labels.get(name, name)} | {fig['per_s']:,} |" for name, fig in doc["modes"].items())
    return f"""## Bounce classifier ({doc['date']}, `{doc['command']}`)

{doc['rules']} rules over the {doc['corpus']['replies']}-reply corpus.

| mode | classifications/s |
|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.classify_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.75, help="time per mode (default 0.75 s)")
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    replies = [(row["reply"], row["phase"]) for row in rows]
    parsed = [(*_split_raw(reply), phase) for reply, phase in replies]
    # Enough unique variants that the run cannot exhaust them: ~4x what the fastest uncached mode
    # manages in the time given (about 60k/s measured), rounded up to whole corpus passes.
    passes = max(1, int(args.seconds * 250_000) // len(replies) + 1)
    unique = [(f"{reply.rstrip()} [queue_id {p:05d}{i:04d}]", phase)
              for p in range(passes) for i, (reply, phase) in enumerate(replies)]

    def unique_batches() -> Callable[[], int]:
        c = Classifier.default()
        it = iter(range(0, len(unique), len(replies)))

        def batch() -> int:
            start = next(it)  # StopIteration would mean the variants ran out: a bug in sizing
            for reply, phase in unique[start : start + len(replies)]:
                c.classify_reply(reply, phase)
            return len(replies)
        return batch

    def reply_batch(c: Classifier) -> Callable[[], int]:
        def batch() -> int:
            for reply, phase in replies:
                c.classify_reply(reply, phase)
            return len(replies)
        return batch

    def parsed_batch(c: Classifier) -> Callable[[], int]:
        def batch() -> int:
            for code, enhanced, text, phase in parsed:
                c.classify(code, enhanced, text, phase)
            return len(parsed)
        return batch

    rules = Classifier.default().rules
    modes: dict[str, dict[str, float]] = {
        "reply_unique": measure(unique_batches(), args.seconds),
        "reply_repeated": measure(reply_batch(Classifier(rules)), args.seconds),
        "parsed_nocache": measure(parsed_batch(Classifier(rules, cache_size=0)), args.seconds),
        "parsed_cached": measure(parsed_batch(Classifier(rules)), args.seconds),
    }
    for name, figures in modes.items():
        print(f"{name:15} {figures['per_s']:>12,} classifications/s  ({figures['classifications']:,} in "
              f"{figures['elapsed_s']} s)")
    headline = modes["reply_unique"]["per_s"]
    verdict = "meets" if headline >= TARGET_PER_S else "MISSES"
    print(f"headline (reply_unique): {headline:,}/s, {verdict} the {TARGET_PER_S:,}/s target")

    date = dt.date.today().isoformat()
    doc: dict[str, Any] = {
        "bench": "classify", "date": date,
        "command": "python -m bench.classify_bench" + (f" {' '.join(argv)}" if argv else " ".join([""] + sys.argv[1:])),
        "corpus": {"path": str(CORPUS.relative_to(REPO)), "replies": len(rows)},
        "rules": len(rules), "seconds_per_mode": args.seconds, "target_per_s": TARGET_PER_S,
        "headline_mode": "reply_unique", "headline_per_s": headline, "modes": modes,
        "machine": machine(), "git_commit": git_commit(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"classify-{date}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
