"""Control socket framing: a 4-byte big-endian length, then one msgpack map.

Requests: ``{"cmd": "status"}``, ``{"cmd": "shutdown"}``. Responses: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. One request per connection keeps clients trivial.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

_LEN = struct.Struct(">I")
MAX_BYTES = 16 << 20


def encode(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def decode_length(head: bytes) -> int:
    (n,) = _LEN.unpack(head)
    if n > MAX_BYTES:
        raise ValueError(f"control frame of {n} bytes is over the {MAX_BYTES} limit")
    return n  # type: ignore[no-any-return]


def decode(body: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(body, raw=False)
    if not isinstance(obj, dict):
        raise ValueError("control frame is not a map")
    return obj


def request(path: str, obj: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Blocking client call used by the CLI."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(encode(obj))
        head = _recv_exact(s, 4)
        return decode(_recv_exact(s, decode_length(head)))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("control socket closed before the reply was complete")
        buf += chunk
    return bytes(buf)
