"""Fixtures shared by the scheduler tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta_engine.spool.store import Spool


@pytest.fixture
def spool(tmp_path: Path):
    """A real LMDB spool, closed after the test."""
    s = Spool(tmp_path / "spool", map_size_mb=64)
    yield s
    s.close()
