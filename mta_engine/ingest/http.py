"""The HTTP bulk-campaign API (aiohttp), KumoMTA's inject shape.

Contract: faces submitters. Validates each request (``inject.parse_request``), and answers only
after the group commit holding it is synced. A malformed request gets HTTP 400 with a reason per
field and writes nothing. Never decides delivery; never talks to the manager or workers.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from ..errors import InjectError, SpoolError
from ..spool import records
from .commit import GroupCommitter
from .inject import parse_request

MAX_RECIPIENTS_PER_REQUEST = 1_000_000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def make_app(committer: GroupCommitter, *, max_request_mb: int = 256) -> web.Application:
    app = web.Application(client_max_size=max_request_mb << 20)

    async def inject(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _json({"error": "malformed request", "errors": [f"body is not valid JSON: {exc}"],
                          "fields": {"": "not valid JSON"}}, 400)
        try:
            sub = parse_request(body, now_s=time.time(), boundary=secrets.token_hex(8))
        except InjectError as exc:
            return _json({"error": "malformed request",
                          "errors": [f"{k}: {v}" if k else v for k, v in exc.errors.items()],
                          "fields": exc.errors}, 400)
        if len(sub.recipients) > MAX_RECIPIENTS_PER_REQUEST:
            return _json({"error": "malformed request", "errors": [
                f"recipients: more than {MAX_RECIPIENTS_PER_REQUEST} in one request; split it"],
                "fields": {"recipients": "too many"}}, 400)
        queue_ids: list[str] = []
        if sub.recipients:
            try:
                msg_id = await committer.submit(sub)
            except SpoolError as exc:
                return _json({"error": "not queued", "errors": [str(exc)]}, 503)
            if msg_id is not None:  # None: every recipient was on the suppression list
                queue_ids.append(records.queue_id(msg_id))
        return _json({"success_count": len(sub.recipients), "fail_count": len(sub.failed),
                      "failed_recipients": sub.failed, "errors": sub.errors, "queue_ids": queue_ids})

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok", "commits": committer.commits, "submissions": committer.submissions})

    app.router.add_post("/api/inject/v1", inject)
    app.router.add_get("/health", health)
    return app
