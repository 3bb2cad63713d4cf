"""`GET /api/audit`: the audit log, filtered, for auditors (the read is audited too)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from aiohttp import web

from core.errors import BadMessage
from signaling.audit import iter_entries, parse_time
from signaling.http.auth import authenticate
from signaling.http.node import NODE
from signaling.logs import scrub


def _parse_time(value: str | None, name: str) -> datetime | None:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BadMessage(f"{name}: {exc}") from None


async def read_audit(request: web.Request) -> web.Response:
    """Audit entries, filtered (auditor only); the read itself is audited."""
    node = request.app[NODE]
    identity = await authenticate(request, "read_audit")
    q = request.query
    try:
        limit = min(int(q.get("limit", "1000")), 10_000)
    except ValueError:
        raise BadMessage("limit must be an integer") from None
    since = _parse_time(q.get("since"), "since")
    until = _parse_time(q.get("until"), "until")
    filters = {k: scrub(q[k])[:200] for k in ("sub", "room", "action", "since", "until") if k in q}
    node.audit.append("audit_read", "allow", sub=identity.sub, filters=filters)
    entries = []
    for entry in iter_entries(
        node.settings.data_dir / "audit",
        sub=q.get("sub"),
        room=q.get("room"),
        action=q.get("action"),
        since=since,
        until=until,
    ):
        entries.append(msgspec.to_builtins(entry))
        if len(entries) >= limit:
            break
    return web.json_response({"entries": entries})
