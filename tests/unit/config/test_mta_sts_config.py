"""[mta_sts]: defaults, overrides, and validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta_engine.config import Config, from_dict
from mta_engine.errors import ConfigError


def test_defaults_enable_mta_sts_on_port_443_with_system_trust() -> None:
    """Out of the box MTA-STS is applied, policies come from port 443, and only system CAs are trusted."""
    sts = Config().mta_sts
    assert (sts.enabled, sts.port, sts.ca_file, sts.fetch_timeout_s) == (True, 443, "", 10.0)


def test_section_overrides(tmp_path: Path) -> None:
    """Tests point the fetch at a local port and add their CA; operators may turn MTA-STS off."""
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    sts = from_dict({"mta_sts": {"enabled": False, "port": 8443, "ca_file": str(ca), "fetch_timeout_s": 2}}).mta_sts
    assert (sts.enabled, sts.port, sts.ca_file, sts.fetch_timeout_s) == (False, 8443, str(ca), 2.0)


@pytest.mark.parametrize(("section", "key"), [
    ({"port": 0}, "mta_sts.port"),
    ({"port": 70000}, "mta_sts.port"),
    ({"ca_file": "/nonexistent/ca.pem"}, "mta_sts.ca_file"),
    ({"fetch_timeout_s": 0}, "mta_sts.fetch_timeout_s"),
    ({"enabled": "yes"}, "mta_sts.enabled"),
    ({"resolve_host": "127.0.0.1"}, "mta_sts.resolve_host"),
])
def test_invalid_values_are_refused_naming_the_key(section: dict[str, object], key: str) -> None:
    """A bad value or an unknown key stops startup with a message that names it."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict({"mta_sts": section})
