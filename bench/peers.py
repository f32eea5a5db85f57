"""Peers for W1/W2: a private Postfix relay (Debian defaults and tuned) and the wire limit (smtp-source).

Postfix gets the same recipients, the same content and the same 8 smtp-sinks as the engine, but no DNS:
it cannot be pointed at our dnsmasq on a non-standard port (Postfix has no resolver-port setting and uses
the system resolver), so it relays by an explicit transport map (``domain smtp:[sink-ip]:port``) that
mirrors the MX records dnsmasq serves (``routes_from_domain_mix`` with the same ``spread_sites``).
Consequence: Postfix groups deliveries by next hop ``[ip]:port`` (8 destinations), not by the 686 MX
sites, so in W2 it may put recipients of different domains into one transaction.

Injection is over SMTP, as fast as Postfix accepts: pre-rendered messages (W1: one per recipient,
rendered with the engine's own ``MessageTemplate`` before the clock starts; W2: the shared body with up
to ``W2_RCPTS_PER_TXN`` RCPTs per transaction), ``INJECT_CONNECTIONS`` concurrent pipelined sessions.
End to end = first connection -> ``status=sent`` in the maillog for every recipient and ``postqueue -j``
empty (polled every 50 ms; Postfix's log has one-second timestamps, so the poll time is used).

Wire limit: ``smtp-source`` straight into the 8 smtp-sinks (one process per sink, in parallel), same
message size, same recipients per transaction as the recipient mix gives (per domain, <= 100).
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import re
import subprocess
import time
from typing import Any, Callable

from mta_engine.template.render import MessageTemplate
from tests.support.dnsmasq import spread_sites
from tests.support.postfix import PostfixInstance, routes_from_domain_mix

from .world import DOMAIN_MIX, SENDER, SINK_HOSTS, World, personalised_content, shared_raw_message

SMTP_SOURCE = "/usr/sbin/smtp-source"
INJECT_CONNECTIONS = 8
W2_RCPTS_PER_TXN = 1000  # = the harness's smtpd_recipient_limit
POSTFIX_HOST = "127.0.0.5"
TIME_LIMIT_S = 900.0


# ------------------------------------------------------------------------------------------- content
def dot_stuff(data: bytes) -> bytes:
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def render_w1(rcpts: list[dict[str, Any]]) -> list[tuple[list[str], bytes]]:
    """One dot-stuffed CRLF message per recipient, rendered exactly as the engine's worker would."""
    c = personalised_content()
    tmpl = MessageTemplate({"template": True, "date": "Fri, 28 Nov 2025 09:00:00 +0000", "boundary": "bench",
                            "built": {"subject": c["subject"], "from": c["from"], "text_body": c["text_body"],
                                      "html_body": c["html_body"]}})
    out = []
    for i, r in enumerate(rcpts):
        data = tmpl.render(address=r["email"], name=None, variables=r["substitutions"],
                           message_id=f"bench-{i}@news.sender.test")
        out.append(([r["email"]], dot_stuff(data)))
    return out


def jobs_w2(emails: list[str], per_txn: int = W2_RCPTS_PER_TXN) -> list[tuple[list[str], bytes]]:
    data = dot_stuff(shared_raw_message().replace("\n", "\r\n").encode())
    return [(emails[i:i + per_txn], data) for i in range(0, len(emails), per_txn)]


def mix_rcpts_per_txn(emails: list[str], cap: int = 100) -> float:
    """Mean recipients per transaction when recipients are grouped by domain, <= cap each."""
    per_domain = collections.Counter(e.rsplit("@", 1)[1] for e in emails)
    txns = sum(math.ceil(c / cap) for c in per_domain.values())
    return len(emails) / txns


# ------------------------------------------------------------------------------------------- SMTP client
async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line.decode(errors="replace").rstrip())
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), "\n".join(lines)


async def _session(host: str, port: int, queue: collections.deque, stats: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        code, text = await _reply(reader)
        assert code == 220, text
        writer.write(b"EHLO bench.test\r\n")
        code, text = await _reply(reader)
        assert code == 250, text
        while queue:
            rcpts, data = queue.popleft()
            cmds = [f"MAIL FROM:<{SENDER}>\r\n".encode()] + [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts] \
                + [b"DATA\r\n"]
            writer.write(b"".join(cmds))  # PIPELINING
            code, text = await _reply(reader)
            assert code == 250, text
            ok = 0
            for _ in rcpts:
                code, text = await _reply(reader)
                if code == 250:
                    ok += 1
                else:
                    stats["rcpt_refused"] += 1
            code, text = await _reply(reader)
            if code != 354:  # no valid recipient: DATA refused
                stats["txn_failed"] += 1
                continue
            writer.write(data)
            code, text = await _reply(reader)
            if code == 250:
                stats["accepted"] += ok
            else:
                stats["txn_failed"] += 1
                stats["data_refused"] += ok
        writer.write(b"QUIT\r\n")
        await writer.drain()
        try:
            await asyncio.wait_for(_reply(reader), 5)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    finally:
        writer.close()


def smtp_inject(host: str, port: int, jobs: list[tuple[list[str], bytes]], connections: int) -> dict[str, int]:
    """Send every job over ``connections`` concurrent pipelined sessions; returns counters."""
    queue = collections.deque(jobs)
    stats = collections.Counter({"accepted": 0, "rcpt_refused": 0, "txn_failed": 0, "data_refused": 0})

    async def main() -> None:
        await asyncio.gather(*(_session(host, port, queue, stats) for _ in range(min(connections, len(jobs)))))

    asyncio.run(main())
    return dict(stats)


# ------------------------------------------------------------------------------------------- Postfix
def _cpu_of(pids: list[int]) -> tuple[float, float]:
    """(own user+sys of the pids, reaped-children cutime+cstime of the pids)."""
    tck = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            own += (int(f[11]) + int(f[12])) / tck
            children += (int(f[13]) + int(f[14])) / tck
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return own, children


def _rss_of(pids: list[int]) -> int:
    tot = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        tot += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return tot


_STATUS = re.compile(rb" status=(sent|bounced|deferred|expired)")


def run_postfix(workload: str, rcpts: list[dict[str, Any]], *, tuned: bool,
                progress: Callable[[int], None] | None = None, time_limit_s: float = TIME_LIMIT_S) -> dict[str, Any]:
    n = len(rcpts)
    emails = [r["email"] for r in rcpts]
    jobs = render_w1(rcpts) if workload == "W1" else jobs_w2(emails)
    world = World().start()
    pf = None
    try:
        routes = routes_from_domain_mix(DOMAIN_MIX, spread_sites(SINK_HOSTS), world.port)
        pf = PostfixInstance(role="relay", host=POSTFIX_HOST, routes=routes, tuned=tuned,
                             hostname="postfix-peer.test").start()
        master = pf.master_pid
        assert master is not None
        cpu0_own, cpu0_children = _cpu_of(pf.processes())
        log = pf.log_path
        offset, partial = 0, b""
        counts = collections.Counter()
        timeline: list[tuple[float, int]] = []
        rss_peak = 0
        inject: dict[str, Any] = {}

        def do_inject() -> None:
            try:
                inject["stats"] = smtp_inject(pf.host, pf.port, jobs, INJECT_CONNECTIONS)
            except Exception as exc:  # noqa: BLE001 - reported below
                inject["error"] = repr(exc)
            inject["t"] = time.time()

        import threading

        t0 = time.time()
        m0 = time.monotonic()
        th = threading.Thread(target=do_inject, daemon=True, name="smtp-inject")
        th.start()
        last_rss = 0.0
        while True:
            if time.monotonic() - m0 > time_limit_s:
                raise TimeoutError(f"Postfix {workload}: {counts['sent']}/{n} sent after {time_limit_s:.0f}s")
            if "error" in inject:
                raise RuntimeError(f"SMTP inject into Postfix failed: {inject['error']}")
            time.sleep(0.05)
            try:
                with open(log, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            data = partial + data
            lines = data.split(b"\n")
            partial = lines.pop()
            for line in lines:
                m = _STATUS.search(line)
                if m:
                    counts[m.group(1).decode()] += 1
            now = time.time()
            timeline.append((now - t0, counts["sent"]))
            if progress:
                progress(counts["sent"])
            if time.monotonic() - last_rss > 0.5:
                last_rss = time.monotonic()
                rss_peak = max(rss_peak, _rss_of(pf.processes()))
            final = counts["sent"] + counts["bounced"] + counts["expired"]
            if final >= n and "t" in inject and pf.queue_empty():
                t_end = now
                break
        th.join(timeout=30)
        pids = pf.processes()
        own1, children1 = _cpu_of(pids)
        cpu = own1 + children1 - cpu0_own - cpu0_children
        sink = _settled(world)
    finally:
        if pf is not None:
            pf.cleanup()
        world.stop()
    elapsed = t_end - t0
    # delivered per 0.5 s from the poll samples, as offsets (one entry per delivered recipient)
    offs: list[float] = []
    prev = 0
    for t, c in timeline:
        offs.extend([round(t, 3)] * (c - prev))
        prev = c
    return {
        "peer": "postfix-tuned" if tuned else "postfix-default", "workload": workload, "recipients": n,
        "elapsed_s": round(elapsed, 3), "rate_per_s": round(n / elapsed, 1),
        "inject_s": round(inject["t"] - t0, 3), "inject": inject.get("stats"),
        "first_delivery_s": next((round(t, 3) for t, c in timeline if c), None),
        "sent": counts["sent"], "bounced": counts["bounced"], "deferred_events": counts["deferred"],
        "cpu_s_total_approx": round(cpu, 2), "cpu_s_per_1000_approx": round(cpu / n * 1000, 3),
        "peak_rss_mb_sum_sampled": round(rss_peak / 2**20, 1),
        "sink": sink, "rcpt_per_transaction": round(counts["sent"] / sink["mesg"], 2) if sink["mesg"] else None,
        "timeline_delivery_offsets_s": offs,
    }


def _settled(world: World, timeout_s: float = 5.0) -> dict[str, int]:
    last, deadline = world.counters(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = world.counters()
        if now == last:
            return now
        last = now
    return last


# ------------------------------------------------------------------------------------------- wire limit
def run_wire(workload: str, rcpts: list[dict[str, Any]], *, sessions_per_sink: int = 4,
             time_limit_s: float = 300.0) -> dict[str, Any]:
    """smtp-source into the 8 smtp-sinks: same message size and recipients per transaction."""
    n = len(rcpts)
    if workload == "W1":
        size = round(sum(len(d) for _, d in render_w1(rcpts[:200])) / min(200, n))
        per_txn = 1
    else:
        size = len(shared_raw_message().replace("\n", "\r\n").encode())
        per_txn = max(1, round(mix_rcpts_per_txn([r["email"] for r in rcpts])))
    msgs = math.ceil(n / per_txn)
    share = [msgs // len(SINK_HOSTS) + (1 if i < msgs % len(SINK_HOSTS) else 0) for i in range(len(SINK_HOSTS))]
    world = World().start()
    try:
        t0 = time.time()
        procs = [subprocess.Popen([SMTP_SOURCE, "-c", "-d", "-l", str(size), "-m", str(m), "-r", str(per_txn),
                                   "-s", str(sessions_per_sink), "-f", SENDER, "-t", "rcpt@wire.test",
                                   f"{h}:{world.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for h, m in zip(SINK_HOSTS, share) if m]
        errs = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=max(1.0, time_limit_s - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                errs.append("timeout")
            if p.returncode:
                errs.append(err.decode(errors="replace")[-300:])
        elapsed = time.time() - t0
        sink = _settled(world)
    finally:
        world.stop()
    return {"peer": "wire", "workload": workload, "recipients": msgs * per_txn, "messages": msgs,
            "message_bytes": size, "rcpt_per_transaction": per_txn,
            "sessions": sessions_per_sink * len(SINK_HOSTS), "elapsed_s": round(elapsed, 3),
            "rate_per_s": round(msgs * per_txn / elapsed, 1), "sink": sink,
            **({"errors": errs} if errs else {})}
