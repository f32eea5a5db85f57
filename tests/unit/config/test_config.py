"""Config loading: defaults, the documented keys, and errors that name the key and the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mta_engine.config import Config, load
from mta_engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "engine.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file() -> None:
    """No config file gives the embedded defaults: spool under var/, HTTP on 127.0.0.1:8000."""
    cfg = load(None)
    assert cfg.spool.path == "var/spool"
    assert cfg.http.listen == "127.0.0.1:8000"
    assert cfg.control.socket == "var/control.sock"
    assert cfg.worker_count >= 1


def test_operator_keys_exist_with_their_names(tmp_path: Path) -> None:
    """The keys operators' tooling relies on load with the names the issue fixes."""
    cfg = load(write(tmp_path, """
[spool]
path = "/srv/spool"
[http]
listen = "0.0.0.0:8025"
[control]
socket = "/run/mta.sock"
[dns]
nameservers = ["127.0.0.53"]
port = 5353
[delivery]
workers = 3
ehlo_name = "mta.example.com"
[log]
accounting = "-"
"""))
    assert (cfg.spool.path, cfg.http.listen, cfg.control.socket) == ("/srv/spool", "0.0.0.0:8025", "/run/mta.sock")
    assert cfg.dns.nameservers == ["127.0.0.53"] and cfg.dns.port == 5353
    assert cfg.worker_count == 3 and cfg.ehlo_name == "mta.example.com"
    assert cfg.log.accounting == "-"


@pytest.mark.parametrize("text, needle", [
    ("[spool]\npaht = 'x'\n", "spool.paht"),
    ("[nosuch]\nx = 1\n", "[nosuch]"),
    ("[delivery]\nworkers = 'many'\n", "delivery.workers"),
    ("[http]\nlisten = 'localhost'\n", "http.listen"),
    ("[dns]\nnameservers = ['not-an-ip']\n", "dns.nameservers[0]"),
    ("[dns]\nport = 70000\n", "dns.port"),
    ("[queue]\nretry_intervals_s = [-1]\n", "queue.retry_intervals_s"),
    ("[sched]\nsite = [{domain = \"x.test\", bogus = 1}]\n", "sched.site[0]"),
    ("[queue]\nretry_jitter = 3.0\n", "queue.retry_"),
    ("[spool\n", "not valid TOML"),
])
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    """An unknown key or bad value stops startup with a message naming the key and the file."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_every_key_is_documented() -> None:
    """docs/configuration.md mentions every [section] key with its default."""
    doc = (REPO / "docs" / "configuration.md").read_text()
    import dataclasses

    cfg = Config()
    for section in dataclasses.fields(cfg):
        if section.name == "source":
            continue
        assert f"[{section.name}]" in doc, section.name
        for key in dataclasses.fields(getattr(cfg, section.name)):
            assert re.search(rf"`{key.name}`", doc), f"{section.name}.{key.name} is not documented"


def test_deploy_example_config_loads() -> None:
    """deploy/engine.toml.example stays a valid config as keys change."""
    cfg = load(REPO / "deploy" / "engine.toml.example")
    assert cfg.queue.tick_s > 0
