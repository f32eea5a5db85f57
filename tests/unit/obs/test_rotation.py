"""Accounting log rotation: by size and age, whole lines only, and the replay position survives it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mta_engine.obs.rotation import RotatingWriter, last_written_seq, rotated_files


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def line(seq: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "Delivery", "event_seq": seq, "x": "y" * pad}).encode() + b"\n"


def seqs(path: str) -> list[int]:
    return [json.loads(x)["event_seq"] for x in Path(path).read_bytes().splitlines() if x.strip()]


def test_rotates_after_a_write_reaches_max_bytes(tmp_path: Path) -> None:
    """A write that makes the file reach max_bytes closes it under a numbered name; lines stay whole."""
    path = str(tmp_path / "accounting.jsonl")
    w = RotatingWriter(path, max_bytes=200, keep=5, clock=Clock())
    for seq in range(1, 11):
        w.write(line(seq, pad=40))
    w.close()
    files = rotated_files(path)
    assert [os.path.basename(f) for f in files][0] == "accounting.000001.20231114T221320Z.jsonl"
    all_seqs = [s for f in files + [path] for s in seqs(f)]
    assert all_seqs == list(range(1, 11))
    assert all(os.path.getsize(f) >= 200 for f in files)


def test_rotates_on_age_at_the_next_write(tmp_path: Path) -> None:
    """After max_age_s the next write goes to a fresh file; a quiet log makes no empty files."""
    clock = Clock()
    path = str(tmp_path / "acct.jsonl")
    w = RotatingWriter(path, max_age_s=60, keep=3, clock=clock)
    w.write(line(1))
    clock.t += 59
    w.write(line(2))
    assert rotated_files(path) == []
    clock.t += 1
    w.write(line(3))
    w.flush()
    assert [seqs(f) for f in rotated_files(path)] == [[1, 2]]
    assert seqs(path) == [3]
    clock.t += 1000
    assert w.rotate_if_due() is True
    assert w.rotate_if_due() is False  # the current file is empty: nothing to rotate
    assert len(rotated_files(path)) == 2 and os.path.getsize(path) == 0
    w.close()


def test_keeps_only_the_newest_rotated_files(tmp_path: Path) -> None:
    """Rotated files beyond `keep` are deleted, oldest first; numbering keeps increasing."""
    path = str(tmp_path / "a.jsonl")
    w = RotatingWriter(path, max_bytes=1, keep=2, clock=Clock())
    for seq in range(1, 6):
        w.write(line(seq))
    w.close()
    files = rotated_files(path)
    assert [os.path.basename(f).split(".")[1] for f in files] == ["000004", "000005"]
    assert [seqs(f) for f in files] == [[4], [5]]
    assert repr(w).startswith(f"<RotatingWriter {path} size=0 max_bytes=1 max_age_s=0.0 keep=2 rotations=5>")


def test_last_written_seq_reads_the_newest_rotated_file_when_current_is_empty(tmp_path: Path) -> None:
    """Right after a rotation the current file is empty: the replay position comes from the rotated one."""
    path = str(tmp_path / "accounting.jsonl")
    assert last_written_seq(path) == 0
    w = RotatingWriter(path, max_bytes=1, keep=1, clock=Clock())
    w.write(line(41) + line(42))
    assert os.path.getsize(path) == 0
    assert last_written_seq(path) == 42
    w.write(line(43))
    w.close()
    os.unlink(path)  # a crash between rename and open leaves no current file
    assert last_written_seq(path) == 43


def test_last_written_seq_ignores_a_partial_last_line(tmp_path: Path) -> None:
    """A line cut short by a crash does not count; the complete ones before it do."""
    path = tmp_path / "accounting.jsonl"
    path.write_bytes(line(5) + line(6)[:-8])
    assert last_written_seq(str(path)) == 5


def test_continues_numbering_across_restarts(tmp_path: Path) -> None:
    """A new writer on an existing log appends, and numbers its rotations after the existing files."""
    path = str(tmp_path / "accounting.jsonl")
    w = RotatingWriter(path, max_bytes=1, keep=10, clock=Clock())
    w.write(line(1))
    w.close()
    w = RotatingWriter(path, max_bytes=1000, keep=10, clock=Clock())
    w.write(line(2))
    assert w.tell() == len(line(2))
    w.rotate()
    w.close()
    assert [seqs(f) for f in rotated_files(path)] == [[1], [2]]


def test_keep_zero_is_refused(tmp_path: Path) -> None:
    """Keeping no rotated file would lose the replay position: refused."""
    with pytest.raises(ValueError, match="keep"):
        RotatingWriter(str(tmp_path / "a.jsonl"), keep=0)


def test_accounting_log_over_rotating_writer_is_exactly_once(tmp_path: Path) -> None:
    """AccountingLog with a RotatingWriter skips replayed events after a rotation-then-restart."""
    from mta_engine.obs.accounting import AccountingLog

    path = str(tmp_path / "accounting.jsonl")

    def open_log() -> AccountingLog:
        log = AccountingLog.__new__(AccountingLog)  # how AccountingLog.__init__ will look once wired
        log.path = path
        log.written_seq = last_written_seq(path)
        log._file = RotatingWriter(path, max_bytes=1, keep=2, clock=Clock())  # type: ignore[assignment]
        log._truncate_partial_line()
        import orjson

        log._dumps = orjson.dumps
        return log

    log = open_log()
    log.write([{"type": "Delivery", "event_seq": s} for s in (1, 2, 3)])
    log.close()
    log = open_log()
    assert log.written_seq == 3
    log.write([{"type": "Delivery", "event_seq": s} for s in (2, 3, 4)])
    log.close()
    assert [s for f in rotated_files(path) + [path] for s in seqs(f)] == [1, 2, 3, 4]
