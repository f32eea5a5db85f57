"""[redis] and the per-source / fleet-wide keys of [[sched.site]]: defaults and errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from mta_engine.config import from_dict
from mta_engine.errors import ConfigError


def test_redis_is_off_by_default() -> None:
    """No [redis] url: no shared state, and the documented defaults."""
    cfg = from_dict({})
    r = cfg.redis
    assert (r.url, r.key_prefix, r.timeout_s, r.retry_s, r.fleet_size, r.batch_s) == \
        ("", "mta-engine:", 0.25, 5.0, 1, 1.0)


def test_shared_site_with_redis_and_source_override_load() -> None:
    """A shared site rate and a per-source override of a configured source are accepted."""
    cfg = from_dict({"redis": {"url": "redis://127.0.0.1:6379/0", "fleet_size": 3},
                     "delivery": {"sources": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11"}]},
                     "sched": {"site": [{"domain": "gmail.com", "messages_per_minute": 600, "shared": True},
                                        {"domain": "gmail.com", "source": "192.0.2.11", "max_connections": 2}]}})
    assert cfg.redis.fleet_size == 3 and cfg.sched.site[0]["shared"] is True


@pytest.mark.parametrize(("data", "needle"), [
    ({"redis": {"url": "http://127.0.0.1:6379"}}, "redis.url"),
    ({"redis": {"url": "redis://127.0.0.1", "fleet_size": 0}}, "redis.fleet_size"),
    ({"redis": {"timeout_s": 0}}, "redis.timeout_s"),
    ({"redis": {"batch_s": -1}}, "redis.batch_s"),
    ({"sched": {"site": [{"domain": "x.test", "messages_per_minute": 60, "shared": True}]}}, "needs [redis] url"),
    ({"sched": {"defaults": {"shared": True}}}, "needs [redis] url"),
    ({"delivery": {"sources": [{"ip": "192.0.2.10"}]},
      "sched": {"site": [{"domain": "x.test", "source": "192.0.2.99", "max_connections": 1}]}},
     "192.0.2.99 is not in [delivery] sources"),
    ({"sched": {"site": [{"source": "192.0.2.10", "max_age_s": 10}]}}, "cannot be set per source"),
])
def test_bad_shared_or_source_settings_name_the_key(data: dict[str, Any], needle: str) -> None:
    """Mistakes stop startup with the key named."""
    with pytest.raises(ConfigError) as info:
        from_dict(data, source="engine.toml")
    assert needle in str(info.value) and "engine.toml" in str(info.value)
