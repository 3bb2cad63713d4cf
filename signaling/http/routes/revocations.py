"""Revocations: `POST /api/revocations` (a token or an identity, on every node) and the list."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from core.errors import BadMessage, Unavailable
from signaling.http.auth import authenticate
from signaling.http.bodies import json_body
from signaling.http.node import NODE
from signaling.state.records import Revocation


class RevocationRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/revocations`: exactly one of `jti` or `sub`."""

    jti: str | None = None
    sub: str | None = None
    reason: str = ""
    expires_at: float | None = None


async def create_revocation(request: web.Request) -> web.Response:
    """Revoke one token (`jti`) or a whole identity (`sub`) on every node, at once."""
    node = request.app[NODE]
    identity = await authenticate(request, "revoke")
    try:
        body = msgspec.convert(await json_body(request), RevocationRequest)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid revocation: {exc}") from None
    if (body.jti is None) == (body.sub is None):
        raise BadMessage("give exactly one of 'jti' or 'sub'")
    value = body.jti if body.jti is not None else body.sub
    assert value is not None
    if not value or len(value) > 256 or len(body.reason) > 500:
        raise BadMessage("jti/sub must be 1-256 characters, reason at most 500")
    revocation = Revocation(
        kind="jti" if body.jti is not None else "sub",
        value=value,
        reason=body.reason,
        by=identity.sub,
        at=time.time(),
        expires_at=body.expires_at,
    )
    try:
        await node.rooms.revoke(revocation)
    except Unavailable:
        # Nothing took effect: the administrator is told to retry (503), and it is on record.
        node.audit.append(
            "revoke",
            "deny",
            sub=revocation.value if revocation.kind == "sub" else None,
            by=identity.sub,
            reason="shared_state_unavailable",
            kind=revocation.kind,
            jti=revocation.value if revocation.kind == "jti" else None,
        )
        raise
    return web.json_response(revocation.to_dict(), status=201)


async def list_revocations(request: web.Request) -> web.Response:
    """Every revocation in force."""
    node = request.app[NODE]
    await authenticate(request, "revoke")
    return web.json_response([r.to_dict() for r in await node.store.list_revocations()])
