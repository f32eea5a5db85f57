"""Provider throttling signals: which replies mean "slow down", and what to do about them.

Contract: rules are data (``throttle_rules.toml`` beside this module, plus user TOML files); this
module parses them into frozen ``Rule`` values and matches replies against them. Matching is
pure: no clock, no I/O. ``from_files`` reads the files it is given and nothing else; a bad file
raises ``ConfigError`` naming the file, the rule and the key. The first matching rule wins, user
rules before the shipped ones, so users can override or exempt (``backoff_s = 0``) any signal.

A matched rule with ``backoff_s > 0`` tells ``SiteState.throttle`` to lower the site's rate and
concurrency; the rule's ``name`` and ``provider`` go into the logged cause.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["Rule", "ThrottleRules"]

DEFAULT_RULES_RESOURCE = "throttle_rules.toml"

_CONDITIONS = ("code", "enhanced", "text", "category")
_KEYS = {"name", "provider", *_CONDITIONS, "backoff_s", "rate_factor", "concurrency_factor", "recovery_step_s"}


def _enhanced_parts(value: str) -> tuple[str, ...]:
    """"4.7.x" / "4.7.*" / "4.7." / "4.7" -> ("4", "7")."""
    parts = [p for p in value.strip().split(".") if p]
    while parts and parts[-1] in ("x", "X", "*"):
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class Rule:
    """One throttling signal and its action; conditions left unset match anything."""

    name: str
    provider: str = "generic"
    code: tuple[int, ...] = ()
    enhanced: str | None = None
    """RFC 3463 prefix by component: "4.7" matches 4.7.x; "4.7.28" matches only 4.7.28."""
    text: re.Pattern[str] | None = None
    """Searched in the reply text, case-insensitive."""
    category: str | None = None
    """The bounce classifier's label for the reply (e.g. "rate_limited", "greylisted")."""
    backoff_s: float = 300.0
    rate_factor: float = 0.5
    concurrency_factor: float = 0.5
    recovery_step_s: float | None = None
    """Interval between recovery steps after the backoff; None = ``backoff_s``."""
    source: str = "<builtin>"

    @property
    def throttles(self) -> bool:
        """False for an exemption rule (``backoff_s == 0``): matched, but the site is not slowed."""
        return self.backoff_s > 0

    @property
    def step_s(self) -> float:
        return self.recovery_step_s if self.recovery_step_s is not None else self.backoff_s

    @property
    def cause(self) -> str:
        """How the logged mode change names this rule."""
        return f"throttle rule {self.name} ({self.provider})"

    def matches(self, code: int | None, enhanced: str | None, text: str | None,
                category: str | None = None) -> bool:
        if self.code and code not in self.code:
            return False
        if self.enhanced is not None:
            want = _enhanced_parts(self.enhanced)
            if enhanced is None or _enhanced_parts(enhanced)[:len(want)] != want:
                return False
        if self.text is not None and (text is None or not self.text.search(text)):
            return False
        if self.category is not None and category != self.category:
            return False
        return True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Rule:
        """Parse one ``[[rule]]`` table; raises ``ConfigError`` on unknown keys or bad values."""
        name = data.get("name")
        where = f"{source}: rule {name!r}" if isinstance(name, str) else f"{source}: rule"
        unknown = set(data) - _KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: needs a non-empty string 'name'")
        if not any(k in data for k in _CONDITIONS):
            raise ConfigError(f"{where}: needs at least one condition ({', '.join(_CONDITIONS)})")
        provider = data.get("provider", "generic")
        if not isinstance(provider, str):
            raise ConfigError(f"{where}: provider: expected a string")
        codes = data.get("code", [])
        if isinstance(codes, int) and not isinstance(codes, bool):
            codes = [codes]
        if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool)
                                                  and 200 <= c <= 599 for c in codes):
            raise ConfigError(f"{where}: code: expected a list of SMTP reply codes (200-599)")
        enhanced = data.get("enhanced")
        if enhanced is not None and (not isinstance(enhanced, str)
                                     or not re.fullmatch(r"[245](\.\d{1,3}){0,2}", ".".join(_enhanced_parts(enhanced)))):
            raise ConfigError(f"{where}: enhanced: expected an RFC 3463 prefix such as \"4.7\" or \"4.7.28\"")
        text = data.get("text")
        pattern = None
        if text is not None:
            if not isinstance(text, str):
                raise ConfigError(f"{where}: text: expected a regular expression string")
            try:
                pattern = re.compile(text, re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(f"{where}: text: bad regular expression: {exc}") from None
        category = data.get("category")
        if category is not None and not isinstance(category, str):
            raise ConfigError(f"{where}: category: expected a string")

        def number(key: str, default: float | None, lo: float, hi: float, lo_open: bool) -> float | None:
            v = data.get(key, default)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: {key}: expected a number, got {v!r}")
            if (v <= lo if lo_open else v < lo) or v > hi:
                raise ConfigError(f"{where}: {key}: must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}")
            return float(v)

        backoff_s = number("backoff_s", 300.0, 0.0, 7 * 86400.0, False)
        rate_factor = number("rate_factor", 0.5, 0.0, 1.0, True)
        concurrency_factor = number("concurrency_factor", 0.5, 0.0, 1.0, True)
        step = number("recovery_step_s", None, 0.0, 7 * 86400.0, True)
        assert backoff_s is not None and rate_factor is not None and concurrency_factor is not None
        return cls(name=name, provider=provider, code=tuple(codes), enhanced=enhanced, text=pattern,
                   category=category, backoff_s=backoff_s, rate_factor=rate_factor,
                   concurrency_factor=concurrency_factor, recovery_step_s=step, source=source)


class ThrottleRules:
    """An ordered list of rules; ``match`` returns the first that fits a reply."""

    __slots__ = ("rules",)

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> ThrottleRules:
        """Parse a rules file: ``[[rule]]`` tables and nothing else."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        extra = set(data) - {"rule"}
        if extra:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(extra)} (rules are [[rule]] tables)")
        tables = data.get("rule", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"{source}: 'rule' must be an array of tables ([[rule]])")
        return cls(Rule.from_dict(t, source) for t in tables)

    @classmethod
    def default(cls) -> ThrottleRules:
        """The rules shipped in ``mta_engine/sched/throttle_rules.toml``."""
        return _default_rules()

    @classmethod
    def from_files(cls, *paths: str | Path, include_default: bool = True) -> ThrottleRules:
        """User rule files, in the order given, then (by default) the shipped rules."""
        rules: list[Rule] = []
        for p in paths:
            path = Path(p)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read throttle rules: {exc.strerror or exc}") from None
            rules.extend(cls.from_toml(text, str(path)).rules)
        if include_default:
            rules.extend(cls.default().rules)
        return cls(rules)

    def match(self, code: int | None, enhanced: str | None, text: str | None,
              category: str | None = None) -> Rule | None:
        """The first rule matching this reply, or None. An exemption (``backoff_s == 0``) is returned
        too: check ``rule.throttles`` before acting."""
        for rule in self.rules:
            if rule.matches(code, enhanced, text, category):
                return rule
        return None

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        sources = sorted({r.source for r in self.rules})
        return f"<ThrottleRules rules={len(self.rules)} sources={sources}>"


@lru_cache(maxsize=1)
def _default_rules() -> ThrottleRules:
    text = resources.files("mta_engine.sched").joinpath(DEFAULT_RULES_RESOURCE).read_text(encoding="utf-8")
    return ThrottleRules.from_toml(text, f"<builtin {DEFAULT_RULES_RESOURCE}>")
