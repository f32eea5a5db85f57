"""Throttling rules as data: the shipped provider rules, user overrides, exemptions, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta_engine.errors import ConfigError
from mta_engine.sched.signals import Rule, ThrottleRules

RULES = ThrottleRules.default()


@pytest.mark.parametrize(("code", "enhanced", "text", "category", "name"), [
    (421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail originating from your IP "
                    "address. To protect our users from spam, mail sent from your IP address has been "
                    "temporarily rate limited.", None, "gmail-unusual-rate"),
    (421, "4.7.0", "Try again later, closing connection.", None, "gmail-rate-limited"),
    (421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
                   "complaints - 4.16.55.1", None, "yahoo-tss04"),
    (421, None, "Message from (192.0.2.1) temporarily deferred - 4.16.50", None, "yahoo-temporarily-deferred"),
    (451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
     None, "outlook-ip-rate-limited"),
    (451, "4.7.651", "The mail server [192.0.2.1] has been temporarily rate limited.", None,
     "outlook-ip-rate-limited-651"),
    (451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]. (S3114)", None, "outlook-server-busy"),
    (421, None, "resimta-ch2-18v.sys.comcast.net Too many sessions opened", None, "comcast-too-many-sessions"),
    (421, None, "mwinf5c10 ME Too many connections, slow down. OFR004_104 [104]", None,
     "orange-too-many-connections"),
    (451, "4.7.1", "Greylisted, see https://postgrey.example", None, "greylisting"),
    (451, "4.3.0", "anything", "greylisted", "classifier-greylisted"),
    (451, "4.3.0", "queue full", "rate_limited", "classifier-rate-limited"),
    (421, "4.3.2", "Too many concurrent SMTP connections from this IP", None, "generic-too-many-connections"),
    (450, None, "Rate limit exceeded for sender", None, "generic-rate-limit"),
    (451, "4.7.1", "Service unavailable by policy", None, "generic-4.7.x"),
    (421, "4.3.0", "Service not available, try again later", None, "generic-try-again-later"),
])
def test_shipped_rules_recognise_provider_replies(code: int, enhanced: str | None, text: str,
                                                  category: str | None, name: str) -> None:
    """Each shipped rule fires on a reply of the kind it was written for."""
    rule = RULES.match(code, enhanced, text, category)
    assert rule is not None and rule.name == name


@pytest.mark.parametrize(("code", "enhanced", "text"), [
    (550, "5.7.1", "rate limited"),              # permanent replies are not throttling signals
    (451, "4.3.0", "Temporary local problem"),
    (250, "2.0.0", "OK"),
    (421, "4.4.2", "timeout"),
])
def test_ordinary_replies_are_not_signals(code: int, enhanced: str, text: str) -> None:
    """Replies that do not ask us to slow down match nothing."""
    assert RULES.match(code, enhanced, text) is None


def test_greylisting_is_an_exemption_not_a_throttle() -> None:
    """An exemption rule matches (so later generic rules do not) but does not throttle."""
    rule = RULES.match(451, "4.7.1", "Greylisted, please try again later")
    assert rule is not None and not rule.throttles


def test_enhanced_prefix_matches_by_component() -> None:
    """"4.7" matches 4.7.x; "4.7.2" does not match 4.7.28."""
    rule = Rule.from_dict({"name": "r", "enhanced": "4.7.2"})
    assert rule.matches(421, "4.7.2", "") and not rule.matches(421, "4.7.28", "")
    wide = Rule.from_dict({"name": "w", "enhanced": "4.7.x"})
    assert wide.matches(421, "4.7.28", "") and not wide.matches(421, "4.2.1", "") and not wide.matches(421, None, "")


def test_user_rules_come_first_and_can_exempt(tmp_path: Path) -> None:
    """A user file overrides shipped rules: its rules are tried first."""
    f = tmp_path / "mine.toml"
    f.write_text('[[rule]]\nname = "quiet-gmail"\nprovider = "gmail"\nenhanced = "4.7.28"\nbackoff_s = 0\n\n'
                 '[[rule]]\nname = "acme"\nprovider = "acme"\ntext = "ACME-SLOW"\nbackoff_s = 120\n'
                 'rate_factor = 0.25\nrecovery_step_s = 30\n')
    rules = ThrottleRules.from_files(f)
    assert len(rules) == 2 + len(RULES)
    assert rules.match(421, "4.7.28", "rate limited").name == "quiet-gmail"
    acme = rules.match(451, None, "acme-slow down please")
    assert acme is not None and (acme.rate_factor, acme.concurrency_factor, acme.step_s) == (0.25, 0.5, 30.0)
    assert acme.source == str(f) and acme.cause == "throttle rule acme (acme)"
    only = ThrottleRules.from_files(f, include_default=False)
    assert len(only) == 2 and only.match(421, "4.7.0", "rate limited") is None


@pytest.mark.parametrize(("body", "why"), [
    ('[[rule]]\nname = "x"\nbackoff_s = 10\n', "at least one condition"),
    ('[[rule]]\nname = "x"\ntext = "("\n', "bad regular expression"),
    ('[[rule]]\nname = "x"\ncode = [999]\n', "code"),
    ('[[rule]]\nname = "x"\ncode = [421]\nrate_factor = 0\n', "rate_factor"),
    ('[[rule]]\nname = "x"\ncode = [421]\nspeed = 1\n', "unknown keys"),
    ('[[rule]]\nname = "x"\nenhanced = "4.seven"\n', "enhanced"),
    ('[rules]\n', "unknown top-level"),
    ('[[rule]\n', "not valid TOML"),
])
def test_bad_rule_files_name_the_problem(tmp_path: Path, body: str, why: str) -> None:
    """A broken user file fails loudly with the file and the key in the message."""
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=why) as info:
        ThrottleRules.from_files(f)
    assert str(f) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A rules path that does not exist is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError, match="cannot read"):
        ThrottleRules.from_files(tmp_path / "nope.toml")


def test_default_rules_are_loaded_once_and_have_a_repr() -> None:
    """The packaged file is parsed once; the repr counts rules and names sources."""
    assert ThrottleRules.default() is ThrottleRules.default()
    assert repr(RULES) == f"<ThrottleRules rules={len(RULES)} sources=['<builtin throttle_rules.toml>']>"
