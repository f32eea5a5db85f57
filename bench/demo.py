"""`make demo`: a 10,000-recipient personalised newsletter through the real engine, on loopback.

Starts dnsmasq (127.0.0.9) + 8 smtp-sinks (127.0.0.10-17) + the engine, injects the newsletter from
/work/shared/data with per-recipient first name, email and unsubscribe URL, shows a progress bar of
delivered/10,000, prints a summary and stops everything it started (also on Ctrl-C or an error).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from .run import run_once
from .world import World

N = 10_000


def main() -> int:
    print("starting dnsmasq on 127.0.0.9 and 8 smtp-sinks on 127.0.0.10-17 ...", flush=True)
    world = World()
    bar = None
    try:
        world.start()
        print(f"sinks listening on port {world.port}; starting the engine and injecting {N:,} recipients "
              "(durable ingest)", flush=True)
        bar = tqdm(total=N, desc="delivered", unit="msg")

        def progress(delivered: int, finals: int) -> None:
            assert bar is not None
            bar.update(delivered - bar.n)

        t = time.monotonic()
        r = run_once("W1", N, progress=progress, world=world, time_limit_s=600)
        bar.update(r["delivered"] - bar.n)
        bar.close()
        bar = None
        print()
        print(f"delivered : {r['delivered']:,}")
        print(f"deferred  : {r['deferred_events']:,} (transient failures, retried)")
        print(f"bounced   : {r['bounced']:,}")
        print(f"msgs/s    : {r['rate_per_s']:,.0f} (end to end: first inject request -> last delivery)")
        print(f"elapsed   : {r['elapsed_s']:.2f} s (engine start excluded; {time.monotonic() - t:.1f} s wall "
              "with start/stop)")
        print(f"engine CPU: {r['cpu_ms_per_msg']:.2f} ms/msg, peak RSS {r['peak_rss_mb_sum']:.0f} MB over "
              f"{len(r['cpu_by_role'])} processes; sinks counted {r['sink']['mesg']:,} messages")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        world.stop()


if __name__ == "__main__":
    sys.exit(main())
