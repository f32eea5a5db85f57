"""The accounting log: one JSON line per event (KumoMTA record types), written exactly once.

Contract: events reach this writer only from the spool outbox, after the transaction that made
them committed. Each event carries its outbox ``event_seq``; at start the writer reads the last
complete line of the file to learn the highest sequence already written, so events replayed from
the outbox after a crash are skipped instead of written twice. Lines are serialised with orjson
directly (a per-recipient hot path), one ``write`` per batch. "-" writes to stderr (no replay
check possible). Rotation: ``obs/rotation.py``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable

import orjson

from .rotation import RotatingWriter, last_written_seq



class AccountingLog:
    """Appends accounting events; ``write`` is called by the manager after each commit."""

    def __init__(self, path: str, *, max_bytes: int = 0, max_age_s: float = 0.0, keep: int = 10) -> None:
        self.path = path
        self._file: Any
        if path == "-":
            self._file = sys.stderr.buffer
            self.written_seq = 0
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.written_seq = last_written_seq(path)  # also reads the newest rotated file
            self._truncate_partial_line()
            self._file = RotatingWriter(path, max_bytes, max_age_s, keep) if (max_bytes or max_age_s) \
                else open(path, "ab")
        self._dumps = orjson.dumps

    def _truncate_partial_line(self) -> None:
        """A line cut short by a crash would glue onto the next one: end it first."""
        try:
            with open(self.path, "rb+") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
        except FileNotFoundError:
            pass

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
