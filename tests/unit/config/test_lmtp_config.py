"""[lmtp]: routes from destination domains to LMTP endpoints, their sites, and validation naming the key."""

from __future__ import annotations

import pytest

from mta_engine.config import Config, from_dict, parse_lmtp_endpoint
from mta_engine.errors import ConfigError


def test_defaults_route_nothing() -> None:
    """No routes: every domain goes by MX (or the relay)."""
    assert Config().lmtp.routes == {} and Config().lmtp.endpoint_for("example.org") is None


def test_routes_are_case_and_dot_insensitive() -> None:
    """Domains match whatever their case and a trailing dot; each endpoint is its own site."""
    lmtp = from_dict({"lmtp": {"routes": {"Mail.Test": "unix:/run/dovecot/lmtp", "b.test": "127.0.0.1:24"}}}).lmtp
    assert lmtp.endpoint_for("mail.test.") == "unix:/run/dovecot/lmtp"
    assert lmtp.endpoint_for("B.TEST") == "127.0.0.1:24"
    assert lmtp.endpoint_for("other.test") is None
    assert lmtp.site("127.0.0.1:24") == "lmtp:127.0.0.1:24"


@pytest.mark.parametrize(("text", "parsed"), [
    ("unix:/run/dovecot/lmtp", "/run/dovecot/lmtp"),
    ("127.0.0.1:24", ("127.0.0.1", 24)),
    ("[::1]:2003", ("::1", 2003)),
    ("lmtp.internal:24", ("lmtp.internal", 24)),
])
def test_parse_endpoint(text: str, parsed: object) -> None:
    """unix:/path is a socket path; host:port and [IPv6]:port are TCP."""
    assert parse_lmtp_endpoint(text) == parsed


@pytest.mark.parametrize(("endpoint", "needle"), [
    ("127.0.0.1:25", "port 25"),
    ("unix:relative/path", "absolute"),
    ("127.0.0.1", "host:port"),
    ("127.0.0.1:0", "host:port"),
    ("unix:/" + "x" * 200, "107"),
    (24, "string"),
])
def test_bad_endpoint_names_the_key(endpoint: object, needle: str) -> None:
    """A bad endpoint stops startup with lmtp.routes.<domain> and the reason."""
    with pytest.raises(ConfigError) as info:
        from_dict({"lmtp": {"routes": {"mail.test": endpoint}}})
    assert "lmtp.routes.mail.test" in str(info.value) and needle in str(info.value)


def test_bad_domain_names_the_key() -> None:
    """A route key that is not a domain name is refused."""
    with pytest.raises(ConfigError) as info:
        from_dict({"lmtp": {"routes": {"user@mail.test": "127.0.0.1:24"}}})
    assert "lmtp.routes.user@mail.test" in str(info.value)
