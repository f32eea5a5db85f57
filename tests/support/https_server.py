"""A small HTTPS server for integration tests: canned responses per (Host, path), requests counted.

Contract: test code only. aiohttp's web server on its own event loop in a background thread,
bound to one 127.0.0.0/8 address, TLS with a certificate made at test time (``certs.make_certs``).
Answers ``GET`` from a table keyed by the request's host name (without port) and path; anything
else is 404. Records every request as ``(host, path)``. ``start()`` returns once the port
accepts connections; ``stop()`` shuts the server down and joins the thread.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from tests.support.procs import free_port

__all__ = ["CannedResponse", "HttpsServer"]


@dataclass(frozen=True)
class CannedResponse:
    """What one (host, path) answers."""

    body: bytes = b""
    status: int = 200
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # no Content-Length: the body goes out in 8 KiB chunks


class HttpsServer:
    """``HttpsServer(host, cert_file, key_file).start()``; ``set(name, path, ...)``; ``count(name)``."""

    def __init__(self, host: str, cert_file: str, key_file: str, port: int | None = None) -> None:
        if not host.startswith("127."):
            raise ValueError("the test HTTPS server binds to 127.0.0.0/8 only")
        self.host = host
        self.port = port or free_port(host)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert_file, key_file)
        self._routes: dict[tuple[str, str], CannedResponse] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<HttpsServer {self.host}:{self.port} {state} routes={len(self._routes)} requests={len(self.requests)}>"

    def set(self, name: str, path: str, response: CannedResponse) -> None:
        """Answer ``GET https://<name><path>`` with ``response`` from now on."""
        with self._lock:
            self._routes[(name.lower(), path)] = response

    def count(self, name: str, path: str | None = None) -> int:
        """Requests received for host ``name`` (and ``path``, if given)."""
        with self._lock:
            return sum(1 for h, p in self.requests if h == name.lower() and (path is None or p == path))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = (request.host or "").rsplit(":", 1)[0].lower()
        with self._lock:
            self.requests.append((name, request.path))
            canned = self._routes.get((name, request.path))
        if canned is None:
            return web.Response(status=404, text="not found")
        headers = {"Content-Type": canned.content_type, **canned.headers}
        if not canned.chunked:
            return web.Response(status=canned.status, body=canned.body, headers=headers)
        resp = web.StreamResponse(status=canned.status, headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for start in range(0, len(canned.body), 8192):
            try:
                await resp.write(canned.body[start:start + 8192])
            except ConnectionError:  # the client stopped reading (a size cap): fine
                break
        return resp

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
            loop.run_until_complete(site.start())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def start(self, timeout_s: float = 10.0) -> HttpsServer:
        if self._thread is not None:
            raise RuntimeError(f"{self!r} already started")
        self._thread = threading.Thread(target=self._run, name=f"https-{self.host}", daemon=True)
        self._thread.start()
        self._ready.wait(timeout_s)
        if not self._ready.is_set() or self._error is not None:
            raise RuntimeError(f"{self!r} failed to start") from self._error
        return self  # the listening socket is bound once _ready is set

    def stop(self) -> None:
        """Stop serving and join the thread; idempotent."""
        if self._thread is None:
            return
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> HttpsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
