"""The new sans-IO modules (address, transaction) follow the layering rule of STYLE.md."""

from __future__ import annotations

import pytest

from tests.unit.test_layering import IO_MODULES, PKG, imported


@pytest.mark.parametrize("module", ["smtp/address.py", "smtp/transaction.py"])
def test_new_smtp_module_does_no_io(module: str) -> None:
    """address.py and transaction.py import nothing that does I/O."""
    assert not imported(PKG / module) & IO_MODULES
