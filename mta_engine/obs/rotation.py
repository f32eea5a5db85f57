"""Accounting log rotation by size and age, safe for the writer's exactly-once replay check.

Contract: ``RotatingWriter`` is the binary file the ``AccountingLog`` appends to. It rotates only
*between* writes, so a line is never split across files, and only after a write has made the file
reach ``max_bytes`` or when a write comes ``max_age_s`` after the file's first line: a quiet log
makes no empty files. Rotating flushes and fsyncs the file, renames it to
``<stem>.<n>.<UTC time><suffix>`` (``accounting.jsonl`` -> ``accounting.000007.20240115T103000Z.jsonl``;
``n`` increases by one per rotation and orders the files) and opens a new, empty current file.
At least the newest rotated file is always kept, because ``last_written_seq`` reads it when the
current file has no complete line (a crash right after a rotation): without it the writer would
write the outbox's events a second time. Rotate with this class, never with an external
``copytruncate``. Errors are ``OSError`` from the file system, not caught here.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

import orjson

__all__ = ["RotatingWriter", "rotated_files", "last_written_seq", "tail_seq"]

_TAIL_BYTES = 1 << 16


def _split(path: str) -> tuple[str, str]:
    """``/var/accounting.jsonl`` -> (``/var/accounting``, ``.jsonl``)."""
    p = Path(path)
    return str(p.with_suffix("")), p.suffix


def rotated_files(path: str) -> list[str]:
    """Rotated files of ``path``, oldest first (by rotation number, not by clock)."""
    return [p for _, p in _numbered(path)]


def _numbered(path: str) -> list[tuple[int, str]]:
    stem, suffix = _split(path)
    d = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(os.path.basename(stem)) + r"\.(\d{6,})\.\d{8}T\d{6}Z" + re.escape(suffix) + "$")
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := pattern.match(name))]
    return [(n, os.path.join(d, name)) for n, name in sorted(found)]


def tail_seq(path: str) -> int | None:
    """The highest ``event_seq`` among the complete lines at the end of ``path``; None when the
    file is missing or holds no complete line with one."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return None
    best: int | None = None
    for line in tail.split(b"\n")[-64:]:
        try:
            seq = int(orjson.loads(line).get("event_seq", 0))
        except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
            continue
        best = seq if best is None else max(best, seq)
    return best


def last_written_seq(path: str) -> int:
    """The highest ``event_seq`` already written to the log at ``path``, rotated files included
    (0 if none): the current file's tail, or the newest rotated file's when the current file is
    missing or has no complete line yet. Drop-in for ``obs.accounting.last_written_seq``."""
    cur = tail_seq(path)
    rotated = rotated_files(path)
    prev = tail_seq(rotated[-1]) if rotated else None
    return max(cur or 0, prev or 0)


class RotatingWriter:
    """An append-only binary file that rotates itself; the ``AccountingLog``'s ``_file``.

    ``max_bytes`` 0 = no size limit; ``max_age_s`` 0 = no age limit; ``keep`` (>= 1) rotated
    files are kept, older ones are deleted.
    """

    def __init__(self, path: str, max_bytes: int = 0, max_age_s: float = 0.0, keep: int = 10, *,
                 clock: Callable[[], float] = time.time) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1: the newest rotated file carries the replay position")
        if max_bytes < 0 or max_age_s < 0:
            raise ValueError("max_bytes and max_age_s must be >= 0 (0 = no limit)")
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.keep = keep
        self.clock = clock
        self.rotations = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._open()

    def __repr__(self) -> str:
        return (f"<RotatingWriter {self.path} size={self._size} max_bytes={self.max_bytes} "
                f"max_age_s={self.max_age_s} keep={self.keep} rotations={self.rotations}>")

    def _open(self) -> None:
        self._file = open(self.path, "ab")
        self._size = self._file.tell()
        # a file left by a previous run counts from its last modification: the best we know
        self._started_at: float | None = os.fstat(self._file.fileno()).st_mtime if self._size else None

    def tell(self) -> int:
        return self._file.tell()

    def write(self, data: bytes) -> int:
        """Append ``data`` (whole lines); rotates first if the file is too old, after if too big."""
        now = self.clock()
        if self._age_due(now):
            self.rotate(now)
        n = self._file.write(data)
        self._size += n
        if self._started_at is None and n:
            self._started_at = now
        if self.max_bytes and self._size >= self.max_bytes:
            self._file.flush()
            self.rotate(now)
        return n

    def _age_due(self, now: float) -> bool:
        return bool(self.max_age_s and self._size and self._started_at is not None
                    and now - self._started_at >= self.max_age_s)

    def rotate_if_due(self, now: float | None = None) -> bool:
        """Rotate an old, non-empty file without waiting for the next write (e.g. from a timer)."""
        now = self.clock() if now is None else now
        if self._age_due(now):
            self.rotate(now)
            return True
        return False

    def rotate(self, now: float | None = None) -> str | None:
        """Close the current file under its rotated name and start an empty one; returns the new
        name (None when the current file is empty: nothing to rotate)."""
        if not self._size:
            return None
        now = self.clock() if now is None else now
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        numbered = _numbered(self.path)
        existing = [p for _, p in numbered]
        n = numbered[-1][0] + 1 if numbered else 1
        stem, suffix = _split(self.path)
        target = f"{stem}.{n:06d}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}{suffix}"
        os.rename(self.path, target)
        self._open()
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self.rotations += 1
        for old in (existing + [target])[:-self.keep]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
        return target

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


def _fsync_dir(path: str) -> None:
    """Make a rename durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
