"""Process and polling helpers shared by integration tests and benchmarks.

Contract: ``ManagedProcess`` owns exactly one child (started with ``subprocess.Popen`` in its
own session, output to its own log file) and stops it by PID: SIGTERM, then SIGKILL after a
deadline. ``ServiceHarness`` is the common part of the server harnesses built on it (host/port,
repr, stop, context manager). Waits poll a predicate until a monotonic deadline and fail with
``AssertionError`` naming what was awaited. Nothing here sleeps as a means of synchronisation.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ManagedProcess", "REPO_ROOT", "ServiceHarness", "free_port", "port_open", "wait_for", "wait_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def port_open(host: str, port: int) -> bool:
    """Whether a TCP connect to ``host:port`` succeeds now (0.5 s connect timeout)."""
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
        return port_open(host, port)

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


class ServiceHarness:
    """The common part of a server harness: one ``ManagedProcess`` serving on ``host:port``.

    Contract: a subclass sets ``_host`` and ``_port`` in ``__init__`` (``_port`` ``None``: a free
    port is picked by ``_begin_start()``) and writes ``start()``: ``_begin_start()``, then
    ``_spawn()`` or ``_spawn_python()``, then a readiness wait (e.g. ``_wait_port()``); scratch
    files go in ``_dir``. ``stop()`` stops the child by PID and removes ``_dir``; it is idempotent
    and ``start()`` may run again afterwards. An ``out_dir`` set by ``_init_out_dir()`` outlives
    ``stop()``; ``cleanup()``, the context manager's exit, also removes it if the harness made it.
    """

    _host: str
    _port: int | None = None
    _proc: ManagedProcess | None = None
    _dir: Path | None = None  # private scratch dir, removed by stop()
    out_dir: Path  # set by _init_out_dir(), kept by stop()
    _own_dir = False  # whether cleanup() removes out_dir

    def start(self, timeout_s: float = 10.0) -> Self:
        raise NotImplementedError

    def _repr_extra(self) -> str:
        """What ``repr`` shows after the state, e.g. ``" dump=True"``."""
        return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self._host}:{self._port} {state}{self._repr_extra()}>"

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has no port until start()")
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def log_text(self) -> str:
        """The child's output so far (empty before ``start()`` and after ``stop()``)."""
        return self._proc.log_text() if self._proc is not None else ""

    def _init_out_dir(self, out_dir: str | os.PathLike[str] | None, prefix: str) -> None:
        """Use ``out_dir``, or a new temp dir that ``cleanup()`` removes."""
        self._own_dir = out_dir is None
        self.out_dir = Path(out_dir if out_dir is not None else tempfile.mkdtemp(prefix=prefix))

    def _begin_start(self) -> None:
        """Refuse a second start; pick a free port if none was given."""
        if self._proc is not None:
            raise RuntimeError(f"{self!r} already started")
        if self._port is None:
            self._port = free_port(self._host)

    def _spawn(
        self,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ManagedProcess:
        self._proc = ManagedProcess(argv, log_path, name=name, env=env, cwd=cwd).start()
        return self._proc

    def _spawn_python(
        self, module: str, args: Sequence[str], log_path: str | os.PathLike[str], *, name: str
    ) -> ManagedProcess:
        """``python -m <module> <args>`` from the repo root, its warnings silenced."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONWARNINGS"] = "ignore"
        argv = [sys.executable, "-m", module, *args]
        return self._spawn(argv, log_path, name=name, env=env, cwd=REPO_ROOT)

    def _wait_port(self, timeout_s: float) -> None:
        wait_port(self._host, self.port, timeout_s, proc=self._proc)

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the child by PID and remove ``_dir``; idempotent. Returns the exit status."""
        code = None
        if self._proc is not None:
            code = self._proc.stop(timeout_s)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        return code

    def cleanup(self) -> None:
        """Stop, and remove ``out_dir`` if the harness made it (the context manager's exit)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
