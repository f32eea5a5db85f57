"""Configuration: TOML file -> frozen, typed config. All defaults live here, in one place.

Contract: ``load(path)`` returns a ``Config`` or raises ``ConfigError`` whose message names the
offending key and the file. No I/O beyond reading the file; nothing here starts processes or
opens sockets. Every key is documented in docs/configuration.md (kept in sync by a test).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .obs.webhooks import WebhookConfig


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "var/spool"
    map_size_mb: int = 16384
    """LMDB map size (sparse file; the upper bound of the spool, not what it uses)."""
    sync: bool = True
    """fsync every commit (durable). false = relaxed: safe against killed processes, not power loss."""


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "127.0.0.1:8000"
    max_request_mb: int = 256
    commit_batch_max: int = 256
    """At most this many submissions share one synced LMDB commit (group commit)."""


@dataclass(frozen=True)
class SubmissionConfig:
    listen: str = "127.0.0.1:2525"
    """"host:port" of the submission listener; "" = disabled."""
    max_message_bytes: int = 50 * 1024 * 1024
    """Advertised as SIZE (RFC 1870); larger messages get 552 5.3.4."""
    require_auth: bool = False
    """true: every client must AUTH; false: clients in trusted_networks may submit without AUTH."""
    trusted_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    tls_cert: str = ""
    tls_key: str = ""
    """PEM certificate chain and key; STARTTLS is offered when both are set."""
    users: dict[str, Any] = field(default_factory=dict)
    """username -> {password_sha256 = "<hex>" | password_env = "VAR", tenant = "...", campaign = "..."}."""
    auth_require_tls: bool = True
    """Offer AUTH only after STARTTLS (RFC 4954 §4)."""

    def problems(self) -> list[tuple[str, str]]:
        """(key, reason) for every invalid setting; [] when the section is usable."""
        out = _listen_problems(self.listen)
        if self.max_message_bytes < 1024:
            out.append(("max_message_bytes", "must be at least 1024"))
        for i, net in enumerate(self.trusted_networks):
            try:
                ipaddress.ip_network(net)
            except ValueError as exc:
                out.append((f"trusted_networks[{i}]", str(exc)))
        out += _tls_file_problems(self.tls_cert, self.tls_key)
        for name, entry in self.users.items():
            out.extend((f"users.{name}.{k}" if k else f"users.{name}", why) for k, why in _user_problems(entry))
        if self.require_auth and not self.users:
            out.append(("require_auth", "is true but no users are configured: nobody could submit"))
        if self.users and self.auth_require_tls and not self.tls_cert:
            out.append(("auth_require_tls", "AUTH is offered only over TLS, but tls_cert/tls_key are not set"))
        return out


def _listen_problems(listen: str) -> list[tuple[str, str]]:
    """``listen`` must be "host:port" (or "[v6]:port"), or "" for a disabled listener."""
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            return [("listen", f'expected "host:port" or "" (disabled), got {listen!r}')]
    return []


def _tls_file_problems(cert: str, key: str) -> list[tuple[str, str]]:
    """A listener's ``tls_cert``/``tls_key``: both or neither, and files that exist."""
    out: list[tuple[str, str]] = []
    if bool(cert) != bool(key):
        out.append(("tls_cert", "tls_cert and tls_key must be set together"))
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if path and not os.path.exists(path):
            out.append((name, f"{path} does not exist"))
    return out


def _label_ok(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


def _user_problems(entry: Any) -> list[tuple[str, str]]:
    if not isinstance(entry, dict):
        return [("", "must be a table")]
    out: list[tuple[str, str]] = []
    unknown = set(entry) - {"password_sha256", "password_env", "tenant", "campaign"}
    out.extend((k, "unknown key") for k in sorted(unknown))
    if ("password_sha256" in entry) == ("password_env" in entry):
        out.append(("", "needs exactly one of password_sha256 or password_env"))
    digest = entry.get("password_sha256")
    if digest is not None and (not isinstance(digest, str) or len(digest) != 64
                               or any(c not in "0123456789abcdefABCDEF" for c in digest)):
        out.append(("password_sha256", "must be 64 hex digits (sha256 of the password)"))
    if "password_env" in entry and not isinstance(entry["password_env"], str):
        out.append(("password_env", "must be an environment variable name"))
    for key in ("tenant", "campaign"):
        value = entry.get(key)
        if (value is not None or key == "tenant") and not _label_ok(value):
            out.append((key, "is required: 1-200 printable characters" if key == "tenant"
                        else "must be 1-200 printable characters"))
    return out


@dataclass(frozen=True)
class InboundConfig:
    listen: str = ""
    """"host:port" of the listener for out-of-band bounces and feedback-loop (ARF) reports; "" = disabled."""
    domains: list[str] = field(default_factory=list)
    """Domains it accepts mail for (the VERP / return-path domain, the FBL address's domain)."""
    max_message_bytes: int = 10 * 1024 * 1024
    """Advertised as SIZE (RFC 1870); larger reports get 552 5.3.4."""
    origin_retention_days: float = 30.0
    """How long a message's tenant, campaign and recipients are kept to correlate late reports."""
    tls_cert: str = ""
    """PEM certificate chain; with ``tls_key``, STARTTLS is offered to the remote MTAs (RFC 3207)."""
    tls_key: str = ""
    """PEM private key for ``tls_cert``."""

    def problems(self) -> list[tuple[str, str]]:
        """(key, reason) for every invalid setting; [] when the section is usable."""
        out = _listen_problems(self.listen)
        if self.listen:
            if not self.domains:
                out.append(("domains", "the listener is on but accepts no domain: list the bounce/FBL domains"))
        for i, d in enumerate(self.domains):
            if not d or any(c in d for c in " @<>[]") or d.startswith("."):
                out.append((f"domains[{i}]", f"expected a domain name, got {d!r}"))
        if self.max_message_bytes < 1024:
            out.append(("max_message_bytes", "must be at least 1024"))
        if self.origin_retention_days <= 0:
            out.append(("origin_retention_days", "must be positive"))
        out += _tls_file_problems(self.tls_cert, self.tls_key)
        return out


@dataclass(frozen=True)
class ControlConfig:
    socket: str = "var/control.sock"


@dataclass(frozen=True)
class DnsConfig:
    nameservers: list[str] = field(default_factory=list)
    """Empty: use /etc/resolv.conf."""
    port: int = 53
    timeout_s: float = 5.0
    ipv6: str = "auto"
    """Look up AAAA records of MX hosts and connect over IPv6: "auto" (when this host has an IPv6
    route), "yes" or "no"."""


@dataclass(frozen=True)
class DeliveryConfig:
    workers: int = 0
    """0 = one worker process per CPU core."""
    ehlo_name: str = ""
    """Empty: this host's FQDN."""
    port: int = 25
    """TCP port used to reach MX hosts (25 on the internet; tests point it at a sink)."""
    max_recipients_per_transaction: int = 100
    max_connections_per_site: int = 20
    max_messages_per_connection: int = 100
    idle_timeout_s: float = 10.0
    max_mx_hosts_per_attempt: int = 5
    connect_timeout_s: float = 30.0
    greeting_timeout_s: float = 300.0
    ehlo_timeout_s: float = 300.0
    mail_timeout_s: float = 300.0
    rcpt_timeout_s: float = 300.0
    data_timeout_s: float = 120.0
    block_timeout_s: float = 180.0
    final_timeout_s: float = 600.0
    quit_timeout_s: float = 10.0
    tls_timeout_s: float = 60.0
    chunking: bool = True
    """Send bodies with BDAT (RFC 3030) when the server advertises CHUNKING."""
    unknown_outcome: str = "retry"
    """The connection died after the final dot, before the reply (RFC 5321 §4.5.3.2.6): "retry"
    (the message may arrive twice) or "delivered" (it may be lost)."""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """Egress pool: [{ip = "192.0.2.10", ehlo_name = "mta1.example.com"}, ...]; new connections take
    the sources in turn. Empty = the system's default source address and [delivery] ehlo_name."""
    verp_domain: str = ""
    """Non-empty: VERP envelope senders, bounces+<queue_id>.<index>@verp_domain (dsn/verp.py), so
    out-of-band bounces name their recipient; "" = the submitted envelope sender, unchanged."""


@dataclass(frozen=True)
class TlsConfig:
    mode: str = "opportunistic"
    """none | opportunistic | required | verify (certificate chain and MX name)."""
    ca_file: str = ""
    """Extra trust anchors for verify (PEM); empty = the system store."""
    per_domain: dict[str, Any] = field(default_factory=dict)
    """Destination domain -> mode, e.g. {"bank.example" = "verify"}."""

    def mode_for(self, domain: str) -> str:
        return str(self.per_domain.get(domain, self.mode))


@dataclass(frozen=True)
class MtaStsConfig:
    enabled: bool = True
    """Apply MTA-STS policies (RFC 8461) to MX delivery; false = never look them up."""
    ca_file: str = ""
    """Extra trust anchors (PEM) for the HTTPS policy fetch, on top of the system store."""
    port: int = 443
    """HTTPS port of mta-sts.<domain> (443 on the internet; tests point it at a local server)."""
    fetch_timeout_s: float = 10.0
    """Whole policy fetch (connect, TLS, response) before it counts as failed."""


@dataclass(frozen=True)
class DaneConfig:
    enabled: bool = True
    """Authenticate MX hosts by DNSSEC-validated TLSA records (DANE, RFC 7672). Trusts the AD bit
    of [dns] nameservers, so they must be a validating resolver on a trusted path (this host);
    a resolver that does not validate never sets AD and DANE then never applies."""


_RELAY_TLS = ("starttls", "implicit", "none")
RELAY_SITE_PREFIX = "relay:"  # scheduling site of relayed mail: relay:<host>:<port>


@dataclass(frozen=True)
class RelayConfig:
    host: str = ""
    """Smarthost name or IP; empty = no relay (MX delivery for everything)."""
    port: int = 587
    tls: str = "starttls"
    """starttls (STARTTLS required) | implicit (TLS from the first byte, port 465, RFC 8314) | none."""
    verify: bool = True
    """Check the relay's certificate chain and that it names ``host``."""
    ca_file: str = ""
    username: str = ""
    """Empty = no AUTH."""
    password: str = field(default="", repr=False)
    password_env: str = ""
    """Read the password from this environment variable (wins over ``password``)."""
    auth_without_tls: bool = False
    """Allow sending credentials over a session without TLS (RFC 4954 §4 advises against it)."""
    domains: list[str] = field(default_factory=list)
    """Destination domains sent to the relay; empty = all mail."""

    def routes(self, domain: str) -> bool:
        """True if mail for ``domain`` goes to the relay."""
        if not self.host:
            return False
        return not self.domains or domain.lower().rstrip(".") in {d.lower().rstrip(".") for d in self.domains}

    @property
    def site(self) -> str:
        """The one scheduling site every relayed destination shares."""
        return f"{RELAY_SITE_PREFIX}{self.host}:{self.port}"

    def credentials(self) -> tuple[str, str] | None:
        """(username, password) for AUTH, or None when no username is set."""
        if not self.username:
            return None
        password = os.environ.get(self.password_env, "") if self.password_env else self.password
        return self.username, password

    def problems(self) -> list[tuple[str, str]]:
        """(key, reason) for every invalid setting; [] when the section is usable. No secrets."""
        out: list[tuple[str, str]] = []
        if not 0 < self.port < 65536:
            out.append(("port", f"expected a port 1-65535, got {self.port}"))
        if self.tls not in _RELAY_TLS:
            out.append(("tls", f"must be one of {', '.join(_RELAY_TLS)}, got {self.tls!r}"))
        if self.ca_file and not os.path.exists(self.ca_file):
            out.append(("ca_file", f"{self.ca_file} does not exist"))
        if self.password and self.password_env:
            out.append(("password_env", "set either password or password_env, not both"))
        if (self.password or self.password_env) and not self.username:
            out.append(("username", "a password is configured but no username"))
        if self.password_env and self.username and self.password_env not in os.environ:
            out.append(("password_env", f"environment variable {self.password_env} is not set"))
        if self.username and self.tls == "none" and not self.auth_without_tls:
            out.append(("auth_without_tls", 'tls = "none" with a username: credentials would go in '
                                            "plaintext; set auth_without_tls = true to allow it"))
        if self.domains and not self.host:
            out.append(("domains", "relay domains are listed but host is empty"))
        for i, d in enumerate(self.domains):
            if not d or " " in d or "@" in d:
                out.append((f"domains[{i}]", f"expected a domain name, got {d!r}"))
        return out


LMTP_SITE_PREFIX = "lmtp:"  # scheduling site of LMTP mail: lmtp:<endpoint>
_SUN_PATH_OCTETS = 107  # sockaddr_un.sun_path on Linux: 108 octets with the terminating NUL


def parse_lmtp_endpoint(text: str) -> tuple[str, int] | str:
    """``"unix:/path"`` -> the socket path; ``"host:port"`` or ``"[IPv6]:port"`` -> (host, port).

    Raises ``ValueError`` naming what is wrong. LMTP must never use TCP port 25 (RFC 2033 §1).
    """
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f'expected "unix:/absolute/path", got {text!r}')
        if len(path.encode()) > _SUN_PATH_OCTETS:
            raise ValueError(f"unix socket path longer than {_SUN_PATH_OCTETS} octets: {path!r}")
        return path
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or " " in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'expected "host:port", "[IPv6]:port" or "unix:/path", got {text!r}')
    if int(port) == 25:
        raise ValueError("LMTP must not be used on TCP port 25 (RFC 2033 §1)")
    return host, int(port)


@dataclass(frozen=True)
class LmtpConfig:
    routes: dict[str, Any] = field(default_factory=dict)
    """Destination domain -> LMTP endpoint: "host:port", "[IPv6]:port" or "unix:/path/to/socket"."""

    @functools.cached_property
    def _endpoints(self) -> dict[str, str]:
        return {str(d).lower().rstrip("."): str(e) for d, e in self.routes.items()}

    def endpoint_for(self, domain: str) -> str | None:
        """The LMTP endpoint that takes mail for ``domain``, or None (MX or relay delivery)."""
        return self._endpoints.get(domain.lower().rstrip(".")) if self.routes else None

    @staticmethod
    def site(endpoint: str) -> str:
        """The scheduling site of an endpoint: every domain routed to it shares it."""
        return f"{LMTP_SITE_PREFIX}{endpoint}"

    def problems(self) -> list[tuple[str, str]]:
        """(key, reason) for every invalid setting; [] when the section is usable."""
        out: list[tuple[str, str]] = []
        for domain, endpoint in self.routes.items():
            if not domain or any(c in domain for c in " @<>[]"):
                out.append((f"routes.{domain}", f"expected a domain name, got {domain!r}"))
            if not isinstance(endpoint, str):
                out.append((f"routes.{domain}", f"expected a string endpoint, got {endpoint!r}"))
                continue
            try:
                parse_lmtp_endpoint(endpoint)
            except ValueError as exc:
                out.append((f"routes.{domain}", str(exc)))
        return out


@dataclass(frozen=True)
class QueueConfig:
    retry_first_s: float = 300.0
    retry_factor: float = 2.0
    retry_max_s: float = 3600.0
    retry_jitter: float = 0.2
    retry_intervals_s: list[float] = field(default_factory=list)
    """A fixed list of delays (the last repeats) instead of the exponential schedule; [] = exponential."""
    max_age_s: float = 5 * 86400.0
    lease_s: float = 3600.0
    """A dispatched recipient whose outcome never comes back is retried after this long; it must
    exceed the longest possible session (the sum of the [delivery] timeouts, ~36 min by default)."""
    tick_s: float = 0.005
    scan_batch: int = 5000
    """Due recipients taken per scheduling round: smaller rounds start the first deliveries sooner."""
    max_inflight_per_worker: int = 20000
    """Recipients leased to one worker at once."""


@dataclass(frozen=True)
class SchedConfig:
    throttle_rules: list[str] = field(default_factory=list)
    """Extra throttle-rule TOML files, checked before the shipped rules."""
    default_throttle_rules: bool = True
    dead_after_failures: int = 5
    dead_s: float = 300.0
    max_dead_s: float = 3600.0
    flow_stage_max: int = 20000
    """Recipients of one (site, priority, tenant, campaign) flow held ready in the manager at once."""
    staged_max: int = 200000
    """Recipients held ready in the manager at once, all flows."""
    messages_per_job: int = 50
    """Per-recipient (rendered) messages sent over one session slot before it goes back to the manager."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Per-site limit defaults over [delivery]: see docs/configuration.md ([sched.defaults])."""
    site: list[dict[str, Any]] = field(default_factory=list)
    """Per-site overrides ([[sched.site]] with domain/site/pattern)."""


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class RedisConfig:
    url: str = ""
    """redis://host:port/db, rediss:// (TLS) or unix:///path; empty = no shared state (every limit is
    local to this instance)."""
    key_prefix: str = "mta-engine:"
    """Prefix of every key; instances that share limits must use the same one."""
    timeout_s: float = 0.25
    """Longest wait for one round trip (connect included) before falling back to local limits."""
    retry_s: float = 5.0
    """After a failure, ask Redis again this long later (meanwhile: local limits)."""
    fleet_size: int = 1
    """Engine instances sharing the limits: while Redis is unreachable each keeps 1/fleet_size of a
    shared rate, so the fleet stays within it."""
    batch_s: float = 1.0
    """Tokens are leased this many seconds' worth of the rate at a time; a lease lapses when not used
    within that time."""

    def problems(self) -> list[tuple[str, str]]:
        """(key, reason) for every invalid setting; [] when the section is usable."""
        out: list[tuple[str, str]] = []
        if self.url and not self.url.startswith(_REDIS_SCHEMES):
            out.append(("url", f"expected {', '.join(_REDIS_SCHEMES)}... or \"\", got {self.url!r}"))
        for key in ("timeout_s", "retry_s", "batch_s"):
            if not getattr(self, key) > 0:
                out.append((key, "must be positive"))
        if self.fleet_size < 1:
            out.append(("fleet_size", "must be >= 1"))
        return out


@dataclass(frozen=True)
class DsnConfig:
    enabled: bool = True
    reporting_mta: str = ""
    """Name in Reporting-MTA and the DSN's From (MAILER-DAEMON@...); empty = [delivery] ehlo_name."""
    delay_after_s: float = 14400.0
    """Send an Action: delayed DSN after this long in the queue when NOTIFY includes DELAY (0 = never)."""
    delay_when_notify_absent: bool = False


@dataclass(frozen=True)
class BounceConfig:
    rules: list[str] = field(default_factory=list)
    """Extra bounce-classification rule files (TOML), checked before the shipped rules."""
    default_rules: bool = True


@dataclass(frozen=True)
class LogConfig:
    accounting: str = "var/accounting.jsonl"
    """File path, or "-" for stderr."""
    accounting_max_bytes: int = 0
    """Rotate the accounting log when it reaches this size (0 = never by size)."""
    accounting_max_age_s: float = 0.0
    """Rotate the accounting log after this long (0 = never by age)."""
    accounting_keep: int = 10
    """Rotated accounting files kept."""
    level: str = "info"
    format: str = "json"

    @property
    def separate_accounting(self) -> bool:
        """A file log is written by the accounting process (proc/accounting.py), not the manager;
        stderr ("-") is written by the manager itself."""
        return self.accounting != "-"


@dataclass(frozen=True)
class Config:
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    mta_sts: MtaStsConfig = field(default_factory=MtaStsConfig)
    dane: DaneConfig = field(default_factory=DaneConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    bounce: BounceConfig = field(default_factory=BounceConfig)
    dsn: DsnConfig = field(default_factory=DsnConfig)
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<defaults>"

    @property
    def worker_count(self) -> int:
        return self.delivery.workers or (os.cpu_count() or 1)

    @property
    def ipc_path(self) -> str:
        """Manager <-> worker socket, next to the control socket."""
        return os.path.join(os.path.dirname(self.control.socket) or ".", "ipc.sock")

    @property
    def ehlo_name(self) -> str:
        return self.delivery.ehlo_name or socket.getfqdn() or "localhost"


_SECTION_TYPES = {
    "spool": SpoolConfig, "http": HttpConfig, "submission": SubmissionConfig, "inbound": InboundConfig, "control": ControlConfig, "dns": DnsConfig,
    "delivery": DeliveryConfig, "tls": TlsConfig, "relay": RelayConfig, "queue": QueueConfig, "sched": SchedConfig, "redis": RedisConfig, "bounce": BounceConfig, "dsn": DsnConfig,
    "webhooks": WebhookConfig,
    "mta_sts": MtaStsConfig,
    "dane": DaneConfig,
    "lmtp": LmtpConfig,
    "log": LogConfig,
}


def _check_value(where: str, value: Any, annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is list:
        (item_type,) = get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check_value(f"{where}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if get_origin(annotation) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {annotation!r}")  # pragma: no cover


def _validate(cfg: Config) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{cfg.source}: {key}: {why}")

    for key, hostport in (("http.listen", cfg.http.listen),):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise bad(key, f"expected \"host:port\", got {hostport!r}")
    if not 0 < cfg.dns.port < 65536:
        raise bad("dns.port", f"expected a port 1-65535, got {cfg.dns.port}")
    if not 0 < cfg.delivery.port < 65536:
        raise bad("delivery.port", f"expected a port 1-65535, got {cfg.delivery.port}")
    if cfg.delivery.workers < 0:
        raise bad("delivery.workers", "must be >= 0 (0 = one per core)")
    if not 1 <= cfg.delivery.max_recipients_per_transaction <= 10000:
        raise bad("delivery.max_recipients_per_transaction", "must be between 1 and 10000")
    for name in ("max_connections_per_site", "max_messages_per_connection", "max_mx_hosts_per_attempt"):
        if getattr(cfg.delivery, name) < 1:
            raise bad(f"delivery.{name}", "must be >= 1")
    if any(v <= 0 for v in cfg.queue.retry_intervals_s):
        raise bad("queue.retry_intervals_s", "must be positive numbers ([] = exponential schedule)")
    from .sched.limits import LimitTable, SiteLimits
    from .sched.retry import RetryPolicy
    from .sched.signals import ThrottleRules

    try:
        RetryPolicy.from_config(cfg.queue)
    except ValueError as exc:
        raise bad("queue.retry_*", str(exc)) from None
    try:
        limits = LimitTable.from_config({"defaults": cfg.sched.defaults, "site": cfg.sched.site},
                                        SiteLimits.from_config(cfg.delivery, cfg.queue))
        limits.for_site("probe", ["probe.invalid"], ["mx.probe.invalid"])
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None
    for key, why in cfg.redis.problems():
        raise bad(f"redis.{key}", why)
    if limits.any_shared() and not cfg.redis.url:
        raise bad("sched", "shared = true needs [redis] url (the fleet-wide buckets live there)")
    configured = set()
    for src in cfg.delivery.sources:
        try:
            configured.add(str(ipaddress.ip_address(src.get("ip", ""))))
        except ValueError:
            pass  # reported below, with its index
    for ip in sorted(limits.sources() - configured):
        raise bad("sched.site", f"source {ip} is not in [delivery] sources")
    try:
        ThrottleRules.from_files(*cfg.sched.throttle_rules, include_default=cfg.sched.default_throttle_rules)
    except (ConfigError, OSError) as exc:
        raise ConfigError(f"{cfg.source}: sched.throttle_rules: {exc}") from None
    from .dsn.classify import Classifier

    try:
        Classifier.from_files(*cfg.bounce.rules, include_default=cfg.bounce.default_rules)
    except (ConfigError, OSError) as exc:
        raise ConfigError(f"{cfg.source}: bounce.rules: {exc}") from None
    if cfg.sched.dead_after_failures < 1 or cfg.sched.messages_per_job < 1 or cfg.sched.flow_stage_max < 1:
        raise bad("sched", "dead_after_failures, messages_per_job and flow_stage_max must be >= 1")
    if cfg.queue.max_age_s <= 0:
        raise bad("queue.max_age_s", "must be positive")
    for key, why in cfg.submission.problems():
        raise bad(f"submission.{key}", why)
    for key, why in cfg.inbound.problems():
        raise bad(f"inbound.{key}", why)
    verp = cfg.delivery.verp_domain
    if verp and (any(c in verp for c in " @<>[]+") or verp.startswith(".") or "." not in verp.strip(".")):
        raise bad("delivery.verp_domain", f'expected a domain name such as "bounce.example.com", got {verp!r}')
    for key, why in cfg.relay.problems():
        raise bad(f"relay.{key}", why)
    for key, why in cfg.lmtp.problems():
        raise bad(f"lmtp.{key}", why)
    try:
        cfg.webhooks.validate()
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None
    if cfg.log.accounting_keep < 1 or cfg.log.accounting_max_bytes < 0 or cfg.log.accounting_max_age_s < 0:
        raise bad("log.accounting_*", "max_bytes and max_age_s must be >= 0 and keep >= 1")
    if cfg.delivery.unknown_outcome not in ("retry", "delivered"):
        raise bad("delivery.unknown_outcome", 'must be "retry" or "delivered"')
    for i, src in enumerate(cfg.delivery.sources):
        unknown = set(src) - {"ip", "ehlo_name"}
        if unknown or "ip" not in src:
            raise bad(f"delivery.sources[{i}]", 'must be {ip = "...", ehlo_name = "..."} (ehlo_name optional)')
        try:
            ipaddress.ip_address(src["ip"])
        except ValueError:
            raise bad(f"delivery.sources[{i}].ip", f"expected an IP address, got {src['ip']!r}") from None
    if cfg.dns.ipv6 not in ("auto", "yes", "no"):
        raise bad("dns.ipv6", f'must be "auto", "yes" or "no", got {cfg.dns.ipv6!r}')
    modes = ("none", "opportunistic", "required", "verify")
    for key, mode in [("tls.mode", cfg.tls.mode)] + [(f"tls.per_domain.{d}", m) for d, m in cfg.tls.per_domain.items()]:
        if mode not in modes:
            raise bad(key, f"must be one of {', '.join(modes)}, got {mode!r}")
    if cfg.tls.ca_file and not os.path.exists(cfg.tls.ca_file):
        raise bad("tls.ca_file", f"{cfg.tls.ca_file} does not exist")
    if cfg.mta_sts.ca_file and not os.path.exists(cfg.mta_sts.ca_file):
        raise bad("mta_sts.ca_file", f"{cfg.mta_sts.ca_file} does not exist")
    if not 0 < cfg.mta_sts.port < 65536:
        raise bad("mta_sts.port", f"expected a port 1-65535, got {cfg.mta_sts.port}")
    if cfg.mta_sts.fetch_timeout_s <= 0:
        raise bad("mta_sts.fetch_timeout_s", "must be positive")
    if cfg.log.level not in ("debug", "info", "warning", "error"):
        raise bad("log.level", "must be one of debug, info, warning, error")
    if cfg.log.format not in ("json", "console"):
        raise bad("log.format", "must be json or console")
    for i, ns in enumerate(cfg.dns.nameservers):
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise bad(f"dns.nameservers[{i}]", f"expected an IP address, got {ns!r}") from None


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from parsed TOML, rejecting unknown keys and bad values."""
    sections: dict[str, Any] = {}
    for name, body in data.items():
        section_type = _SECTION_TYPES.get(name)
        if section_type is None:
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(_SECTION_TYPES)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        hints = get_type_hints(section_type)
        kwargs = {}
        for key, value in body.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown key {name}.{key} (known in [{name}]: {', '.join(hints)})"
                )
            try:
                kwargs[key] = _check_value(f"{name}.{key}", value, hints[key])
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
        sections[name] = section_type(**kwargs)
    cfg = Config(**sections, source=source)
    _validate(cfg)
    return cfg


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load a TOML config file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return from_dict(data, source=str(p))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data (for `mta-engine config` and child processes)."""
    out = dataclasses.asdict(cfg)
    out.pop("source")
    if out["relay"]["password"]:
        out["relay"]["password"] = "<redacted>"  # never print or log credentials
    return out
