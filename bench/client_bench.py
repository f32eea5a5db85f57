"""CPU of our SMTP client per transaction, against a real Postfix smtp-sink on loopback.

    python -m bench.client_bench [--recipients N] [--transactions T] [--batch B]

Opens one session to an ``smtp-sink`` it starts on 127.0.0.21, warms it up with 50 transactions,
then runs T transactions of the W2 message (~10 KB) to N recipients each and prints this
process's CPU time (user + system) per transaction and per recipient. ``--batch B`` sends them
B at a time through ``run_transactions`` (pipelined across transaction boundaries, RFC 2920
§3.1) instead of one ``transaction`` call each.

It isolates the per-transaction and per-recipient cost of ``delivery/session.py`` and ``smtp/``
(plan, command wire, reply parsing, state machine, socket writes) from scheduling, IPC and DNS,
for before/after figures of a change there. Bounded: T transactions, then it stops.
"""

from __future__ import annotations

import argparse
import time

import uvloop

from bench.world import shared_raw_message
from mta_engine.delivery.session import SmtpSession, SmtpTimeouts
from mta_engine.smtp.body import PreparedMessage, normalize_crlf
from tests.support.sinks import SmtpSink

HOST, PORT = "127.0.0.21", 2526
SENDER = "newsletter@news.sender.test"


async def measure(recipients: int, transactions: int, batch: int) -> dict[str, float]:
    message = PreparedMessage(normalize_crlf(shared_raw_message().encode()))
    rcpts = [f"u{i}@gmail-like.test" for i in range(recipients)]
    session = await SmtpSession.open(HOST, PORT, ehlo_name="bench.test", timeouts=SmtpTimeouts())
    try:
        for _ in range(50):
            await session.transaction(SENDER, rcpts, message)
        cpu0, wall0 = time.process_time(), time.monotonic()
        done = 0
        while done < transactions:
            if batch > 1:
                results = await session.run_transactions([(SENDER, rcpts, message, None)] * batch)
            else:
                results = [await session.transaction(SENDER, rcpts, message)]
            if any(r.data is None or r.data.code != 250 for r in results):
                raise RuntimeError(f"the sink did not take a message: {results[-1]}")
            done += len(results)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        await session.close()
    return {"recipients": recipients, "transactions": done, "batch": batch,
            "cpu_us_per_transaction": round(cpu / done * 1e6, 1),
            "cpu_us_per_recipient": round(cpu / done / recipients * 1e6, 2),
            "wall_us_per_transaction": round(wall / done * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=19, help="RCPTs per transaction (W2 averages 19)")
    ap.add_argument("--transactions", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=1, help="transactions per run_transactions call")
    args = ap.parse_args()
    sink = SmtpSink(HOST, PORT).start()
    try:
        print(uvloop.run(measure(args.recipients, args.transactions, args.batch)))
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
