"""A private Postfix instance on loopback: a receiver for interop tests, a relay peer for benches.

Contract: everything lives in one temp dir made by ``start()`` (``conf/`` with a generated
``main.cf`` and ``master.cf``, ``queue/``, ``data/``, ``maillog``, and for the receiver
``messages/``). The instance is started with ``postfix -c <conf> start`` and stopped by
SIGTERM to its own master PID (read from ``queue/pid/master.pid``; exactly what
``postfix stop`` does, minus its one-second sleep loop); every process that carries
``MAIL_CONFIG=<conf>`` in its environment (master, its daemons, pipe children) is then awaited
and, past a deadline, SIGKILLed by PID. Nothing touches /etc/postfix, and no system Postfix is
started: Postfix reads the default /etc/postfix/main.cf only to vet a ``-c`` directory for an
*unprivileged* caller, and these harnesses run as root (Postfix must run as root anyway).

Roles:
- ``role="receiver"``: smtpd accepts any recipient from 127.0.0.0/8 and every message is
  delivered (``transport_maps = static:store:receiver``) by ``pipe(8)`` to
  ``tests/support/postfix_store.py`` (copied into the temp dir, run by ``/usr/bin/python3`` as
  ``pipe_user``), one delivery per message with all its recipients. ``messages()`` reads them.
- ``role="relay"``: smtpd accepts from 127.0.0.0/8 and relays by an explicit transport map
  (``texthash``: ``domain smtp:[ip]:port``), so no DNS is ever queried; unrouted domains bounce
  (``default_transport = error:...``). ``tuned=True`` applies ``TUNED_RELAY_SETTINGS``.

Gotchas (Postfix 3.7 on Debian):
- ``inet_interfaces`` must name addresses of real interfaces; lo only has 127.0.0.1, so
  ``inet_interfaces = 127.0.0.1`` and the smtpd listener binds ``<host>:<port>`` through its
  master.cf service name, which master binds without that check. A relay's smtp client therefore
  connects from 127.0.0.1.
- Errors of the ``postfix`` command go to stderr only if stderr is a tty (else to syslog, which
  does not exist here), so it runs on a pty and its output is kept for the error message.
- ``pipe(8)`` refuses to run commands as root or as ``mail_owner``: the store runs as ``nobody``
  from a 0711 temp dir, with the system python (the venv python lives under 0700 /root).
- Postfix's daemons show no config path in their argv, so ``pgrep -f <temp dir>`` does not see
  them: use ``processes()`` (``MAIL_CONFIG`` in /proc/PID/environ) instead.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import pwd
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.procs import ServiceHarness, free_port, port_open, wait_for

__all__ = [
    "POSTFIX",
    "TUNED_RELAY_SETTINGS",
    "PostfixInstance",
    "postfix_processes",
    "routes_from_domain_mix",
]

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
STORE_PYTHON = "/usr/bin/python3"
_STORE_SCRIPT = Path(__file__).resolve().with_name("postfix_store.py")

#: Applied to a relay with ``tuned=True`` (Postfix defaults in brackets). Meant for the benchmark
#: peer: many parallel deliveries per destination, no smtpd slow-down, reused connections.
TUNED_RELAY_SETTINGS: dict[str, str] = {
    "default_process_limit": "500",  # [100] smtpd and smtp processes (master.cf maxproc "-")
    "default_destination_concurrency_limit": "100",  # [20]
    "smtp_destination_concurrency_limit": "100",  # [$default_destination_concurrency_limit]
    "initial_destination_concurrency": "20",  # [5] start of the per-destination ramp-up
    "default_destination_recipient_limit": "100",  # [50] recipients per delivery
    "smtp_destination_recipient_limit": "100",
    "in_flow_delay": "0",  # [1s] smtpd does not wait for qmgr to catch up
    "smtp_connection_cache_on_demand": "yes",  # [yes] reuse connections when a backlog builds
    "smtp_connection_cache_time_limit": "10s",  # [2s]
    "qmgr_message_active_limit": "40000",  # [20000]
    "qmgr_message_recipient_limit": "40000",  # [20000]
    "smtpd_client_connection_count_limit": "0",  # [50] (mynetworks is exempt anyway)
    "smtpd_client_connection_rate_limit": "0",
}

_MASTER_CF_COMMON = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def routes_from_domain_mix(
    csv_path: str | os.PathLike[str],
    site_ips: Mapping[str, str] | Callable[[str], str],
    port: int,
) -> dict[str, tuple[str, int]]:
    """Relay routes for the domain mix CSV (domain,site,share): domain -> (site IP, port).

    Mirrors ``DnsServer.from_domain_mix``: give the same ``site_ips`` (e.g. ``spread_sites``) and
    the relay reaches each domain where its MX would point, without DNS.
    """
    pick = site_ips if callable(site_ips) else site_ips.__getitem__
    with open(csv_path, newline="") as fh:
        return {row["domain"]: (pick(row["site"]), port) for row in csv.DictReader(fh)}


def _run_on_pty(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> tuple[int, str]:
    """Run ``argv`` with stdout/stderr on a pty (see the module docstring); return rc, output."""
    master_fd, slave_fd = pty.openpty()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=slave_fd,
            stderr=slave_fd,
            env=dict(env),
            start_new_session=True,
        )
    finally:
        os.close(slave_fd)
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        # Read until the command has exited and its output is drained. EOF is not awaited: a
        # daemon it forked may hold the pty open.
        while True:
            ready, _, _ = select.select([master_fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master_fd, 65536)
                except OSError:  # EIO: every holder of the slave side has closed it
                    break
                out += chunk
                continue
            if proc.poll() is not None:
                break
            if time.monotonic() >= deadline:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"{' '.join(argv)} did not finish in {timeout_s:.0f}s")
    finally:
        os.close(master_fd)
    try:
        rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish in {timeout_s:.0f}s") from None
    return rc, out.decode(errors="replace").replace("\r\n", "\n")


def _split_own_received(raw: bytes, hostname: str) -> tuple[bytes, bytes]:
    """Split the first header off ``raw`` if it is the ``Received:`` our smtpd prepended."""
    if not raw.startswith(b"Received: "):
        return b"", raw
    end = raw.find(b"\n") + 1
    while end and raw[end : end + 1] in (b" ", b"\t"):  # folded continuation lines
        nxt = raw.find(b"\n", end)
        end = len(raw) if nxt < 0 else nxt + 1
    header = raw[:end]
    if f"by {hostname} (Postfix)".encode() not in header:
        return b"", raw
    return header, raw[end:]


class PostfixInstance(ServiceHarness):
    """A private Postfix (receiver or relay) on ``host:port``; a context manager."""

    def __init__(
        self,
        role: str = "receiver",
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        hostname: str | None = None,
        message_size_limit: int = 10_240_000,
        smtpd_recipient_limit: int = 1000,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        chunking: bool = True,
        routes: Mapping[str, tuple[str, int] | str] | None = None,
        tuned: bool = False,
        main_cf: Mapping[str, str] | None = None,
        pipe_user: str = "nobody",
    ) -> None:
        if role not in ("receiver", "relay"):
            raise ValueError(f"role must be 'receiver' or 'relay', not {role!r}")
        if not host.startswith("127."):
            raise ValueError(f"host must be in 127.0.0.0/8, not {host!r}")
        if routes and role != "relay":
            raise ValueError("routes are for role='relay' only")
        if tuned and role != "relay":
            raise ValueError("tuned is for role='relay' only")
        self.role = role
        self._host = host
        self._port = port
        self.hostname = hostname or f"postfix-{role}.test"
        self.message_size_limit = message_size_limit
        self.smtpd_recipient_limit = smtpd_recipient_limit
        self.tls = (str(tls[0]), str(tls[1])) if tls is not None else None
        self.chunking = chunking
        self.routes = dict(routes or {})
        self.tuned = tuned
        self.main_cf_overrides = dict(main_cf or {})
        self.pipe_user = pipe_user
        self._dir: Path | None = None
        self._master_pid: int | None = None
        self.start_output = ""

    def _repr_extra(self) -> str:
        return f" role={self.role} dir={self._dir}"

    # ---------------------------------------------------------------- properties

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("PostfixInstance has no directory until start()")
        return self._dir

    @property
    def config_dir(self) -> Path:
        return self.dir / "conf"

    @property
    def queue_dir(self) -> Path:
        return self.dir / "queue"

    @property
    def messages_dir(self) -> Path:
        return self.dir / "messages"

    @property
    def log_path(self) -> Path:
        return self.dir / "maillog"

    @property
    def master_pid(self) -> int | None:
        return self._master_pid

    @property
    def running(self) -> bool:
        return self._master_pid is not None and _alive(self._master_pid)

    # ---------------------------------------------------------------- configuration

    def main_cf_settings(self) -> dict[str, str]:
        """The main.cf parameters, in order (later keys win, ``main_cf`` overrides last)."""
        d = self.dir
        s: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(d / "queue"),
            "data_directory": str(d / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            # Must be a real interface address (see module docstring); smtpd binds host:port
            # from master.cf.
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": self.hostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "",
            "smtpd_banner": "$myhostname ESMTP",
            "smtpd_peername_lookup": "no",  # no reverse DNS of the client: no DNS traffic at all
            # Clients on 127.0.0.1 match the default permit_inet_interfaces: cleanup would then
            # add Message-ID/Date/From/To and rewrite header addresses. Keep content as sent.
            "local_header_rewrite_clients": "",
            "biff": "no",
            "maillog_file": str(d / "maillog"),
            "maillog_file_prefixes": str(d),
            "message_size_limit": str(self.message_size_limit),
            "mailbox_size_limit": "0",
            "smtpd_recipient_limit": str(self.smtpd_recipient_limit),
            "smtp_tls_security_level": "none",
            "notify_classes": "",  # no postmaster notices mixed into what tests read
        }
        if not self.chunking:
            s["smtpd_discard_ehlo_keywords"] = "silent-discard, chunking"
        if self.tls is not None:
            s["smtpd_tls_cert_file"], s["smtpd_tls_key_file"] = self.tls
            s["smtpd_tls_security_level"] = "may"
        else:
            s["smtpd_tls_security_level"] = "none"
        if self.role == "receiver":
            # Every address class, one delivery per message with all its recipients (constant
            # nexthop "receiver"; the recipient limit is above any smtpd_recipient_limit).
            s["transport_maps"] = "static:store:receiver"
            s["store_destination_recipient_limit"] = str(max(1000, self.smtpd_recipient_limit))
        else:
            s["transport_maps"] = f"texthash:{d / 'conf' / 'transport'}"
            s["default_transport"] = "error:5.3.0 no route in the test relay transport map"
            s["local_transport"] = "error:5.3.0 no local delivery in the test relay"
            if self.tuned:
                s.update(TUNED_RELAY_SETTINGS)
        s.update(self.main_cf_overrides)
        return s

    def master_cf_text(self) -> str:
        lines = [f"{self._host}:{self.port} inet n - n - - smtpd", _MASTER_CF_COMMON.rstrip("\n")]
        if self.role == "receiver":
            lines.append(
                f"store unix - n n - - pipe user={self.pipe_user} null_sender= "
                f"argv={STORE_PYTHON} {self.dir / 'postfix_store.py'} {self.messages_dir} "
                "from=${sender} to=${recipient}"
            )
        return "\n".join(lines) + "\n"

    def transport_text(self) -> str:
        out = []
        for domain, route in self.routes.items():
            if isinstance(route, str):
                out.append(f"{domain} {route}")
            else:
                ip, port = route
                out.append(f"{domain} smtp:[{ip}]:{port}")
        return "\n".join(out) + "\n"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        env["MAIL_CONFIG"] = str(self.config_dir)  # the same as -c, for postfix-script & co.
        return env

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 30.0) -> PostfixInstance:
        """Write the config, ``postfix -c <conf> start`` and wait until smtpd accepts."""
        if self._dir is not None:
            raise RuntimeError(f"{self!r} already started")
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance must be started as root")
        if self._port is None:
            self._port = free_port(self._host)
        # Directly under the system temp dir (pytest's tmp_path is 0700): the postfix user must
        # reach queue/ and data/, the pipe user the store script and messages/.
        self._dir = Path(tempfile.mkdtemp(prefix=f"postfix-{self.role}-"))
        try:
            self._prepare()
            rc, out = _run_on_pty(
                [POSTFIX, "-c", str(self.config_dir), "start"], self._env(), timeout_s
            )
            self.start_output = out
            if rc != 0:
                raise AssertionError(
                    f"postfix start failed (rc={rc}):\n{out}\nmaillog:\n{self.log_tail()}"
                )
            self._master_pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
            wait_for(self._smtpd_ready, timeout_s, what=f"Postfix smtpd on {self._host}:{self.port}")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _prepare(self) -> None:
        d = self.dir
        d.chmod(0o711)
        conf = self.config_dir
        conf.mkdir(mode=0o755)
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf_settings().items())
        (conf / "main.cf").write_text(main)
        (conf / "master.cf").write_text(self.master_cf_text())
        if self.role == "relay":
            (conf / "transport").write_text(self.transport_text())
        else:
            shutil.copyfile(_STORE_SCRIPT, d / "postfix_store.py")
            (d / "postfix_store.py").chmod(0o755)
            self.messages_dir.mkdir(mode=0o700)
            entry = pwd.getpwnam(self.pipe_user)
            os.chown(self.messages_dir, entry.pw_uid, entry.pw_gid)
        # The postfix command chdirs to queue_directory first, so that one must exist (root,
        # 0755). Its subdirectories and data/ (owners, modes) are made by "postfix start" itself:
        # postfix-script check-fatal runs "post-install create-missing".
        (d / "queue").mkdir(mode=0o755)
        # "postfix set-permissions" is NOT used: it also re-owns the system's Postfix files.

    def _smtpd_ready(self) -> bool:
        if not self.running:
            raise AssertionError(f"Postfix master exited; maillog tail:\n{self.log_tail()}")
        return port_open(self._host, self.port)

    def processes(self) -> list[int]:
        """PIDs of every process of this instance (``MAIL_CONFIG=<conf>`` in its environment)."""
        if self._dir is None:
            return []
        return postfix_processes(self.config_dir)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop this instance and purge its queue (``queue/``, ``data/``); idempotent.

        ``messages()`` and ``log_text()`` stay readable until ``cleanup()``.
        """
        if self._dir is None:
            return
        if self._master_pid is not None and _alive(self._master_pid):
            os.kill(self._master_pid, signal.SIGTERM)  # what "postfix stop" does
        pids = self.processes()
        try:
            wait_for(
                lambda: not any(_alive(p) for p in pids) and not self.processes(),
                timeout_s,
                what=f"Postfix processes of {self.config_dir} to exit",
            )
        except AssertionError:
            for pid in self.processes():  # ours by MAIL_CONFIG; SIGKILL by PID
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for(lambda: not self.processes(), 5.0, what="killed Postfix processes to exit")
        self._master_pid = None
        shutil.rmtree(self.dir / "queue", ignore_errors=True)
        shutil.rmtree(self.dir / "data", ignore_errors=True)

    def cleanup(self) -> None:
        """Stop, and remove the whole temp dir (messages and maillog included)."""
        if self._dir is None:
            return
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    # ---------------------------------------------------------------- observation

    def log_text(self) -> str:
        """The instance's maillog (postlogd writes it; no syslog involved)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, RuntimeError):
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def messages(self) -> list[dict[str, Any]]:
        """Messages the receiver delivered, in delivery order (messages are delivered in
        parallel, so that is not necessarily the order in which smtpd accepted them).

        Each: ``mail_from`` (``""`` for the null sender), ``rcpts`` (all recipients of the
        message, in Postfix's order: qmgr sorts them, so not necessarily the RCPT order), ``data`` (the message as the client sent it: Postfix's own ``Received:`` header
        removed, line ends CRLF again, dot-unstuffed), ``received_header`` (the header removed,
        LF), ``raw`` (exactly what pipe delivered: LF line ends, header included), ``path``.
        Postfix stores lines, so a bare CR or LF in the input is not preserved as such.
        """
        if self.role != "receiver":
            raise RuntimeError("messages() is for role='receiver'")
        out: list[dict[str, Any]] = []
        for meta in sorted(self.messages_dir.glob("*.json")):
            record: dict[str, Any] = json.loads(meta.read_text())
            raw = meta.with_suffix(".eml").read_bytes()
            header, rest = _split_own_received(raw, self.hostname)
            record.update(
                data=rest.replace(b"\n", b"\r\n"),
                received_header=header,
                raw=raw,
                path=str(meta.with_suffix(".eml")),
            )
            out.append(record)
        return out

    def wait_messages(self, count: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` messages were delivered; return them all."""
        wait_for(
            lambda: len(self.messages()) >= count,
            timeout_s,
            what=f"{count} message(s) delivered by {self!r}; maillog tail:\n{self.log_tail()}",
        )
        return self.messages()

    def queue(self) -> list[dict[str, Any]]:
        """Queued messages as ``postqueue -j`` reports them (one JSON object per message)."""
        proc = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), "-j"],
            capture_output=True,
            env=self._env(),
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"postqueue -j failed (rc={proc.returncode}): {proc.stderr.decode(errors='replace')}"
            )
        return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]

    def queue_empty(self) -> bool:
        return not self.queue()

    def flush(self) -> None:
        """``postqueue -f``: attempt delivery of every deferred message now."""
        subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), "-f"],
            env=self._env(),
            timeout=30,
            check=True,
            capture_output=True,
        )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != b"Z"  # a zombie has exited; its parent (master or init) reaps it


def postfix_processes(config_dir: str | os.PathLike[str]) -> list[int]:
    """Live PIDs whose environment has ``MAIL_CONFIG=<config_dir>`` (usable after cleanup)."""
    needle = f"MAIL_CONFIG={config_dir}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found
