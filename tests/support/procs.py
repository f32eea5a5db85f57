"""Process and polling helpers shared by integration tests and benchmarks.

Contract: ``ManagedProcess`` owns exactly one child (started with ``subprocess.Popen`` in its
own session, output to its own log file) and stops it by PID: SIGTERM, then SIGKILL after a
deadline. Waits poll a predicate until a monotonic deadline and fail with ``AssertionError``
naming what was awaited. Nothing here sleeps as a means of synchronisation.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ManagedProcess", "free_port", "wait_for", "wait_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port on ``host`` that is currently free for both TCP and UDP.

    The port is released before returning, so a race with another binder is possible but
    unlikely (the kernel hands out ephemeral ports round-robin).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port
    raise AssertionError(f"no port free for both TCP and UDP on {host}")


def wait_for(
    predicate: Callable[[], object],
    timeout_s: float,
    interval_s: float = 0.02,
    what: str = "condition",
) -> object:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(interval_s)  # polling interval, not synchronisation


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(
    host: str, port: int, timeout_s: float, proc: ManagedProcess | None = None
) -> None:
    """Wait until a TCP connect to ``host:port`` succeeds; fail early if ``proc`` has exited."""

    def ready() -> bool:
        if proc is not None:
            proc.check_alive()
        return _port_open(host, port)

    wait_for(ready, timeout_s, what=f"{host}:{port} to accept connections")


class ManagedProcess:
    """One child process with its own log file; a context manager that starts and stops it."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.name = name or Path(self.argv[0]).name
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "new" if self._popen is None else ("running" if self.running else "exited")
        return f"<ManagedProcess {self.name} pid={self.pid} {state} rc={self.returncode}>"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> ManagedProcess:
        """Start the child with stdout and stderr appended to ``log_path``."""
        if self._popen is not None:
            raise RuntimeError(f"{self!r} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,  # terminal signals don't reach it; we stop it by PID
            )
        return self

    def check_alive(self) -> None:
        """Raise AssertionError with the log tail if the child has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self._popen.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM the child by PID, SIGKILL it after ``timeout_s``; return its exit status."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            try:
                os.kill(popen.pid, signal.SIGTERM)
                popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout=timeout_s)
            except ProcessLookupError:
                popen.wait(timeout=timeout_s)
        return popen.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
