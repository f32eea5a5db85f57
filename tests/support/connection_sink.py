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

import asyncio  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Any  # noqa: E402

from tests.support import provider_sink  # noqa: E402
from tests.support.provider_sink import ProviderSink, ProviderSMTP, _read_jsonl  # noqa: E402

__all__ = ["ConnectionSink", "peak_open"]


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
    with open(out_dir / "connections.jsonl", "a", buffering=1) as log:
        await provider_sink._serve(host, port, out_dir, script, smtp=functools.partial(LoggingSMTP, log))


def main(argv: list[str] | None = None) -> None:
    provider_sink.main(argv, serve=_serve, description=__doc__)


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


class ConnectionSink(ProviderSink):
    """``python -m tests.support.connection_sink`` in a child process; a context manager."""

    _module = "tests.support.connection_sink"

    def __init__(self, host: str, port: int, out_dir: Path, script: dict[str, Any] | None = None) -> None:
        super().__init__(host, port, out_dir, script)

    def connections(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.out_dir / "connections.jsonl")

    def accepted(self) -> list[dict[str, Any]]:
        """Accepted messages in arrival order (without their bytes)."""
        return _read_jsonl(self.out_dir / "accepted.jsonl")


if __name__ == "__main__":
    main()
