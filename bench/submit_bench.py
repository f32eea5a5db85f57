"""Bench: durable SMTP submission intake (messages/s answered 250 after a synced commit).

    python -m bench.submit_bench [--messages N] [--sessions K] [--size BYTES] [--seed S]

The submission listener runs in this process on uvloop (as in the ingest process), with a real
GroupCommitter over a real LMDB spool in a temporary directory. A separate client process opens K
sessions on 127.0.0.1 and sends N messages between them, each transaction pipelined (RFC 2920:
MAIL, RCPT and DATA in one write, then the body after the 354). The figure is N divided by the
time from the first connect to the last ``250 2.0.0 ... queued as``; every 250 is durable, and
the spool is checked to hold exactly N messages afterwards. Writes
``bench/results/SUBMIT-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def message(rng: random.Random, size: int, n: int) -> bytes:
    words = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima", "oscar", "romeo", "tango"]
    body, line = [], []
    while sum(map(len, body)) < size:
        line.append(rng.choice(words))
        if len(" ".join(line)) > 70:
            body.append(" ".join(line))
            line = []
    head = f"From: bench@sender.test\r\nTo: r{n}@rcpt.test\r\nSubject: bench {n}\r\nMessage-ID: <{n}@bench.test>\r\n"
    return (head + "\r\n" + "\r\n".join(body) + "\r\n").encode()


# --- client (separate process) --------------------------------------------------------------------

async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the session")
        if line[3:4] != b"-":
            return line


async def _session(port: int, bodies: list[bytes], take: Any, done: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.write(b"EHLO bench.test\r\n")
    await _reply(reader)
    while (n := take()) is not None:
        writer.write(b"MAIL FROM:<bench@sender.test>\r\nRCPT TO:<r%d@rcpt.test>\r\nDATA\r\n" % n)
        for want in (b"250", b"250", b"354"):
            line = await _reply(reader)
            assert line.startswith(want), line
        writer.write(bodies[n % len(bodies)] + b".\r\n")
        line = await _reply(reader)
        assert line.startswith(b"250 2.0.0"), line
        done.append(time.perf_counter())
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()


async def client_main(port: int, messages: int, sessions: int, size: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    bodies = [message(rng, size, i) for i in range(64)]
    counter = iter(range(messages))
    done: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_session(port, bodies, lambda: next(counter, None), done) for _ in range(sessions)))
    elapsed = time.perf_counter() - start
    return {"messages": len(done), "elapsed_s": elapsed, "msgs_per_s": len(done) / elapsed}


# --- server (this process) ------------------------------------------------------------------------

async def server_main(args: argparse.Namespace) -> dict[str, Any]:
    from mta_engine.ingest.commit import GroupCommitter
    from mta_engine.ingest.smtp_submit import SubmissionConfig, start_submission
    from mta_engine.spool.store import Spool

    with tempfile.TemporaryDirectory(prefix="submit-bench-") as tmp:
        spool = Spool(Path(tmp) / "spool", map_size_mb=4096)
        committer = GroupCommitter(spool)
        listener = await start_submission(committer, SubmissionConfig(listen="127.0.0.1:0"), hostname="bench.test")
        assert listener.address is not None
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.submit_bench", "--client", str(listener.address[1]),
            "--messages", str(args.messages), "--sessions", str(args.sessions), "--size", str(args.size),
            "--seed", str(args.seed), stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        client = json.loads(out.decode().strip().splitlines()[-1])
        await listener.close()
        committer.close()
        stored = spool.stat()["msg"]
        spool.close()
    return {"bench": "submit", "date": dt.date.today().isoformat(), "messages": args.messages,
            "sessions": args.sessions, "size_bytes": args.size, "seed": args.seed, **client,
            "stored": stored, "commits": committer.commits,
            "msgs_per_commit": committer.submissions / max(committer.commits, 1),
            "ok": stored == args.messages == client["messages"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", type=int, default=2048, help="approximate body size in bytes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(client_main(args.client, args.messages, args.sessions, args.size, args.seed))))
        return 0
    import logging

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    import uvloop

    result = uvloop.run(server_main(args))
    out = Path(__file__).parent / "results" / f"SUBMIT-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
