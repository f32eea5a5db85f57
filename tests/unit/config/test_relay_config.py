"""[relay]: defaults, routing, credentials from the environment, validation naming the key, redaction."""

from __future__ import annotations

import pytest

from mta_engine.config import Config, from_dict, to_dict
from mta_engine.errors import ConfigError


def test_defaults_mean_no_relay() -> None:
    relay = Config().relay
    assert relay.host == "" and relay.port == 587 and relay.tls == "starttls" and relay.verify
    assert not relay.routes("example.com")
    assert relay.credentials() is None


def test_routes_all_or_listed_domains() -> None:
    everything = from_dict({"relay": {"host": "smarthost.example"}}).relay
    assert everything.routes("any.example") and everything.site == "relay:smarthost.example:587"
    some = from_dict({"relay": {"host": "127.0.0.9", "port": 465, "tls": "implicit",
                                "domains": ["Relayed.test"]}}).relay
    assert some.routes("relayed.test") and some.routes("RELAYED.TEST.")
    assert not some.routes("other.test")


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PW", "from-env")
    relay = from_dict({"relay": {"host": "h", "username": "u", "password_env": "RELAY_PW"}}).relay
    assert relay.credentials() == ("u", "from-env")


@pytest.mark.parametrize(
    ("relay", "key"),
    [
        ({"host": "h", "port": 0}, "relay.port"),
        ({"host": "h", "tls": "ssl"}, "relay.tls"),
        ({"host": "h", "ca_file": "/nonexistent/ca.pem"}, "relay.ca_file"),
        ({"host": "h", "username": "u", "password": "p", "password_env": "X"}, "relay.password_env"),
        ({"host": "h", "password": "p"}, "relay.username"),
        ({"host": "h", "username": "u", "password_env": "MTA_TEST_SURELY_UNSET"}, "relay.password_env"),
        ({"host": "h", "username": "u", "password": "p", "tls": "none"}, "relay.auth_without_tls"),
        ({"domains": ["a.test"]}, "relay.domains"),
        ({"host": "h", "domains": ["not a domain"]}, "relay.domains[0]"),
        ({"host": "h", "verify": "yes"}, "relay.verify"),
    ],
)
def test_validation_names_the_key(relay: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"relay": relay})
    assert key in str(info.value)
    assert "hunter" not in str(info.value)


def test_password_never_printed() -> None:
    cfg = from_dict({"relay": {"host": "h", "username": "u", "password": "hunter2"}})
    assert "hunter2" not in repr(cfg)
    assert to_dict(cfg)["relay"]["password"] == "<redacted>"
