"""An SMTP sink that logs when each connection opens and closes and from which address, so a test
can tell how many sessions each source IP held open at once (what a provider counts).

Usage: ``python -m tests.support.connection_sink --host H --port P --out DIR --script JSON``, the
script being provider_sink's (``latency_ms``, ``store_data``, ...). Records, besides
provider_sink's ``accepted.jsonl`` and ``decisions.jsonl``, ``DIR/connections.jsonl``: one line
per event ``{"t": unix time, "event": "open" | "close", "peer": [ip, port]}``, flushed line by
line. Exits cleanly on SIGTERM.
"""

from __future__ import annotations

import warnings

warnings.simplefilter("ignore")  # before importing aiosmtpd

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Any  # noqa: E402

from tests.support.provider_sink import ProviderHandler, ProviderSMTP, _read_jsonl  # noqa: E402

__all__ = ["ConnectionSink", "peak_open"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


class LoggingSMTP(ProviderSMTP):
    """provider_sink's server, plus a line per connection opened and closed."""

    def __init__(self, log: IO[str], *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._log = log
        self._peer: list[Any] = []

    def _event(self, event: str) -> None:
        self._log.write(json.dumps({"t": time.time(), "event": event, "peer": self._peer}) + "\n")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = list(peer[:2]) if isinstance(peer, tuple) else [str(peer), 0]
        self._event("open")
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._event("close")
        super().connection_lost(exc)


async def _serve(host: str, port: int, out_dir: Path, script: dict[str, Any]) -> None:
    handler = ProviderHandler(out_dir, script)
    latency_s = float(script.get("latency_ms", 0)) / 1000.0
    log = open(out_dir / "connections.jsonl", "a", buffering=1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: LoggingSMTP(log, handler, latency_s, hostname="provider.test", enable_SMTPUTF8=True,
                            data_size_limit=0),
        host=host, port=port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), timeout=2.0)
    except asyncio.TimeoutError:
        pass
    handler.rec.close()
    log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--script", default="{}")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args.host, args.port, args.out, json.loads(args.script)))


def peak_open(events: list[dict[str, Any]], ips: set[str] | None = None) -> int:
    """The most connections open at once among ``events`` (from ``ips`` only, when given); at the
    same instant a close counts before an open."""
    order = sorted((e["t"], 0 if e["event"] == "close" else 1) for e in events
                   if ips is None or e["peer"][0] in ips)
    open_now = peak = 0
    for _, kind in order:
        open_now += 1 if kind else -1
        peak = max(peak, open_now)
    return peak


class ConnectionSink:
    """``python -m tests.support.connection_sink`` in a child process; a context manager."""

    def __init__(self, host: str, port: int, out_dir: Path, script: dict[str, Any] | None = None) -> None:
        self.host = host
        self.port = port
        self.out_dir = Path(out_dir)
        self.script = dict(script or {})
        self._proc: Any = None

    def __repr__(self) -> str:
        return f"<ConnectionSink {self.host}:{self.port} out={self.out_dir}>"

    def start(self, timeout_s: float = 15.0) -> ConnectionSink:
        from tests.support.procs import ManagedProcess, wait_port

        self.out_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tests.support.connection_sink", "--host", self.host, "--port", str(self.port),
                "--out", str(self.out_dir), "--script", json.dumps(self.script)]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        self._proc = ManagedProcess(argv, self.out_dir / "connection-sink.log", name="connection-sink", env=env,
                                    cwd=_REPO_ROOT).start()
        wait_port(self.host, self.port, timeout_s, proc=self._proc)
        return self

    def connections(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.out_dir / "connections.jsonl")

    def accepted(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.out_dir / "accepted.jsonl")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> ConnectionSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
