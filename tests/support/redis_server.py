"""A private redis-server for tests: its own loopback address, port and directory; stopped by PID.

Contract: ``RedisServer`` runs Debian's ``redis-server`` (installed by scripts/bootstrap-system.sh,
never as a system service) as a ``ManagedProcess`` in the foreground, listening only on the
given 127.0.0.x address and port, with no persistence (no RDB snapshots, no AOF) and its working
files in its own directory. ``start`` waits until the port accepts connections; ``stop`` sends
SIGTERM by PID (SIGKILL after a deadline) and may be followed by ``start`` again on the same
address and port (a restart). Nothing here talks the Redis protocol: tests use the engine's own
client.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .procs import ManagedProcess, ServiceHarness, free_port

__all__ = ["RedisServer", "redis_server_path"]


def redis_server_path() -> str | None:
    """The redis-server binary, or None when it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


class RedisServer(ServiceHarness):
    """``redis-server`` bound to ``host:port`` (a free port when none is given), data in ``workdir``."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.dir = Path(workdir)  # the caller's: kept by stop(), reused by a restart
        self._host = host
        self._port = port if port is not None else free_port(host)
        self.starts = 0

    def _repr_extra(self) -> str:
        return f" starts={self.starts}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def proc(self) -> ManagedProcess | None:
        return self._proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/bootstrap-system.sh")
        if self.running:
            raise RuntimeError(f"{self!r} already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        argv = [binary, "--bind", self.host, "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
                "--logfile", "", "--databases", "1", "--unixsocket", ""]
        self._spawn(argv, self.dir / f"redis-{self.starts}.log", name="redis-server", cwd=str(self.dir))
        self._wait_port(timeout_s)
        return self

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop it by PID; idempotent. Returns its exit status."""
        return super().stop(timeout_s)

    def log_text(self) -> str:
        """Every start's log, in order."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("redis-*.log")))
