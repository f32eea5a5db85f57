"""The accounting log: one JSON line per event (KumoMTA record types), written exactly once.

Contract: events reach this writer only from the spool outbox, after the transaction that made
them committed. Each event carries its outbox ``event_seq``; at start the writer reads the last
complete line of the file to learn the highest sequence already written, so events replayed from
the outbox after a crash are skipped instead of written twice. Lines are rendered by structlog's
serializer (orjson, directly: this is a per-recipient hot path), one ``write`` per batch. "-" writes to stderr (no replay check possible).
"""

from __future__ import annotations

import os
import sys
from typing import Any, BinaryIO, Iterable

import orjson

_TAIL_BYTES = 1 << 16


def last_written_seq(path: str) -> int:
    """The highest ``event_seq`` among the complete lines at the end of ``path`` (0 if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return 0
    best = 0
    for line in tail.split(b"\n")[-64:]:
        try:
            best = max(best, int(orjson.loads(line).get("event_seq", 0)))
        except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
            continue
    return best


class AccountingLog:
    """Appends accounting events; ``write`` is called by the manager after each commit."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path == "-":
            self._file: BinaryIO = sys.stderr.buffer
            self.written_seq = 0
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.written_seq = last_written_seq(path)
            self._file = open(path, "ab")
            self._truncate_partial_line()
        self._dumps = orjson.dumps

    def _truncate_partial_line(self) -> None:
        """A line cut short by a crash would glue onto the next one: end it first."""
        if self._file.tell() > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._file.write(b"\n")

    def write(self, events: Iterable[dict[str, Any]]) -> int:
        """Write events not yet in the file; returns the highest sequence now written."""
        out = []
        for ev in events:
            seq = ev.get("event_seq", 0)
            if seq and seq <= self.written_seq and self.path != "-":
                continue
            out.append(self._dumps({k: v for k, v in ev.items() if v is not None}))
            self.written_seq = max(self.written_seq, seq)
        if out:
            self._file.write(b"\n".join(out) + b"\n")
            self._file.flush()
        return self.written_seq

    def close(self) -> None:
        if self.path != "-":
            self._file.close()
