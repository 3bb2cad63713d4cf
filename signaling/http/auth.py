"""Who is asking: the bearer token of an API request, checked once, and refusals audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from core.errors import AuthenticationError, PolicyDenied
from signaling import dpop
from signaling import protocol as p
from signaling.http import device_binding
from signaling.http.forwarding import forwarded_caller
from signaling.http.node import NODE
from signaling.http.sessions import REQUEST_SESSION, current_session
from signaling.identity import Identity
from signaling.logs import scrub
from signaling.oidc import identity_in_room
from signaling.policy import RoomScope


def peer_address(request: web.Request) -> str:
    """The client's address, as the audit log names it."""
    return request.remote or "unknown"


def audit_refusal(request: web.Request, reason: str, **fields: Any) -> None:
    """Audit an API request refused (`api_refused`, outcome deny), with its path scrubbed."""
    request.app[NODE].audit.append(
        "api_refused", "deny", reason=reason, path=scrub(request.path)[:200], **fields
    )


async def authenticate(request: web.Request, action: str | None) -> Identity:
    """The identity behind `Authorization: Bearer <token>` (a DPoP-bound token: `Authorization:
    DPoP <token>` and its proof), or, with no Authorization header, the sign-in session the
    cookie names (a device-bound one with its key's `DPoP` proof), or the caller another node
    of the cluster authenticated and forwarded (verified by `forward_to_holder`), allowed to do
    `action`."""
    node = request.app[NODE]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    forwarded = forwarded_caller(request)
    session = None if header or forwarded else await current_session(request)
    if forwarded is not None:
        # Authenticated by the node that forwarded the request (signaling.http.forwarding);
        # revocation and the policy are still decided here.
        identity = forwarded.identity
    elif session is not None:
        # Signed in at the hospital's provider (a cookie, no bearer token): the session's
        # identity goes through the same checks below as a token's.
        identity = session.identity
        check_binding(request, identity.sub, device_binding.check_session_request, session)
        request[REQUEST_SESSION] = session
    elif scheme.lower() not in ("bearer", "dpop") or not token.strip():
        audit_refusal(request, "no_bearer_token", ip=peer_address(request))
        raise AuthenticationError("an Authorization: Bearer token is required", reason="missing")
    else:
        try:
            identity = await node.verifier.verify(token.strip())
        except AuthenticationError as exc:
            audit_refusal(
                request, str(exc.details.get("reason", "invalid_token")), ip=peer_address(request)
            )
            raise
        check_binding(
            request, identity.sub, device_binding.check_token_request, scheme.lower(),
            token.strip(),
        )  # fmt: skip
    revoked = await node.store.is_revoked(jti=identity.jti, sub=identity.sub)
    if revoked is not None:
        audit_refusal(request, f"revoked_{revoked.kind}", sub=identity.sub)
        raise AuthenticationError("this token or identity has been revoked", reason="revoked")
    if action is not None:
        decision = node.policy.decide(identity, action)
        if not decision:
            audit_refusal(request, decision.reason, sub=identity.sub, requested=action)
            raise PolicyDenied(decision.reason)
    return identity


def check_binding(request: web.Request, sub: str, check: Callable[..., None], *args: Any) -> None:
    """Run a device-binding `check` (`signaling.http.device_binding`), auditing its refusal
    as `api_refused` with reason `dpop_<reason>`."""
    try:
        check(request.app[NODE], request, *args)
    except dpop.InvalidDpopProof as exc:
        audit_refusal(
            request, f"dpop_{exc.details.get('reason', 'invalid')}", sub=sub,
            ip=peer_address(request),
        )  # fmt: skip
        raise


def decide_in_room(
    request: web.Request,
    identity: Identity,
    room_id: str,
    scope: RoomScope,
    actions: tuple[str, ...] = ("join_room",),
    refused: str = p.JOIN_REFUSED,
) -> None:
    """Every one of `actions` allowed for `identity` in the room, decided as the join is; the
    first refusal is audited and raised as `refused` with the refusal's code only (the policy's
    detail stays in the audit log)."""
    node = request.app[NODE]
    if request.get(REQUEST_SESSION) is not None:
        identity = identity_in_room(identity, room_id)
    for action in dict.fromkeys(actions):
        decision = node.policy.decide(identity, action, scope)
        if not decision:
            audit_refusal(
                request, decision.reason, sub=identity.sub, room=scrub(room_id)[:64],
                requested=action,
            )  # fmt: skip
            raise PolicyDenied(refused, reason=decision.refusal)
