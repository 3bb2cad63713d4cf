"""Sign-in at the hospital's OpenID provider: `/auth/signin`, `/auth/callback`, `/auth/session`,
`/auth/signout` (docs/protocol.md, "Sign-in").

The browser is moved; the rules are `signaling.oidc`'s and the provider's answers are checked by
`signaling.oidc_client`. Every outcome is audited (`sign_in`, `sign_in_refused`, `sign_out`).
A failure reaches a browser as a redirect back to where it came from with `#signin_error=<reason>`
(the web client says it in the person's language), and a client asking for JSON as a JSON error.
"""

from __future__ import annotations

import logging
import secrets
import time
from urllib.parse import quote

from aiohttp import web

from core.errors import ConsiliumError, NotFound, ServerError
from signaling import oidc
from signaling.dpop import InvalidDpopProof
from signaling.errors import http_status_of
from signaling.http.auth import check_binding, peer_address
from signaling.http.device_binding import check_session_request
from signaling.http.node import NODE, Node
from signaling.http.sessions import (
    PENDING_KEY_PREFIX,
    USED_KEY_PREFIX,
    clear_session_cookie,
    current_session,
    end_session,
    keep_session,
    new_cookie_secret,
    session_id_of,
    set_session_cookie,
)
from signaling.oidc_client import OidcClient

log = logging.getLogger("consilium.signin")

NO_STORE = {"Cache-Control": "no-store"}
"""Sign-in answers are never cached (they set or name a session)."""


def _client(request: web.Request) -> OidcClient:
    signin = request.app[NODE].signin
    if signin is None:
        raise NotFound("sign-in is not configured on this node")
    return signin


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _state_of(request: web.Request) -> str:
    """The callback's `state`, if it can be one of ours (else empty)."""
    state = request.query.get("state", "")
    return state if 0 < len(state) <= 128 else ""


def _forget_binding(request: web.Request, response: web.StreamResponse) -> None:
    """Remove the browser's binding cookie of this callback's sign-in (its other sign-ins,
    in other tabs, keep theirs)."""
    state = _state_of(request)
    if state:
        response.del_cookie(oidc.signin_cookie_name(state), path="/auth/")
    if request.cookies.get(oidc.SIGNIN_COOKIE) == state or not state:
        response.del_cookie(oidc.SIGNIN_COOKIE, path="/auth/")


def _failure(request: web.Request, error: ConsiliumError, return_to: str) -> web.Response:
    """A failed sign-in, audited, as JSON or as a redirect back with the reason in the fragment."""
    response = _failure_answer(request, error, return_to)
    _forget_binding(request, response)
    return response


def _failure_answer(request: web.Request, error: ConsiliumError, return_to: str) -> web.Response:
    node = request.app[NODE]
    reason = str(error.details.get("reason", error.code))
    node.audit.append(
        "sign_in_refused", "deny", reason=reason, ip=peer_address(request),
        **({"claim": str(error.details["claim"])[:64]} if "claim" in error.details else {}),
    )  # fmt: skip
    if _wants_json(request):
        return web.json_response(error.to_json(), status=http_status_of(error), headers=NO_STORE)
    target = oidc.safe_return_path(return_to) + "#signin_error=" + quote(reason, safe="")
    return _redirect(target)


def _redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location, **NO_STORE})


async def start(request: web.Request) -> web.StreamResponse:
    """`GET /auth/signin?return=<path>[&max_age=<s>][&dpop_jkt=<thumbprint>]`: start a sign-in
    at the provider (bound to the browser's DPoP key when it names one)."""
    node = request.app[NODE]
    client = _client(request)
    return_to = oidc.safe_return_path(request.query.get("return"))
    max_age: int | None = None
    if "max_age" in request.query:
        try:
            max_age = max(0, min(int(request.query["max_age"]), 86_400))
        except ValueError:
            max_age = node.settings.step_up_max_age_min * 60
    try:
        pending = oidc.start_sign_in(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),
            return_to=return_to,
            now=time.time(),
            max_age_s=max_age,
            dpop_jkt=request.query.get("dpop_jkt") or None,
            dpop_required=node.settings.dpop_required,
        )
        url = await client.authorization_url(pending)
        await node.store.put_expiring(
            PENDING_KEY_PREFIX + pending.state, pending.to_dict(), oidc.PENDING_TTL_S
        )
    except ConsiliumError as exc:
        return _failure(request, exc, return_to)
    response = _redirect(url, 302)
    # The state in this browser too: a callback reaching another browser (login CSRF) fails.
    # A cookie per sign-in: a second tab's start leaves the first tab's binding in place.
    response.set_cookie(
        oidc.signin_cookie_name(pending.state), pending.state, max_age=oidc.PENDING_TTL_S,
        path="/auth/",
        httponly=True, samesite="Lax", secure=node.settings.own_origin.startswith("https://"),
    )  # fmt: skip
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    """`GET /auth/callback?code=&state=`: the provider's answer; a session on success."""
    node = request.app[NODE]
    client = _client(request)
    now = time.time()
    state = _state_of(request)
    pending: oidc.PendingSignIn | None = None
    return_to = "/"
    try:
        if state:
            # Taken, not read: a state (and so its code verifier) serves one callback only.
            stored = await node.store.take_expiring(PENDING_KEY_PREFIX + state)
            pending = None if stored is None else oidc.PendingSignIn.from_dict(stored)
        binding = request.cookies.get(oidc.signin_cookie_name(state)) if state else None
        if pending is not None:
            return_to = pending.return_to
            # Kept a while: this callback opened again finds where it was going.
            await node.store.put_expiring(
                USED_KEY_PREFIX + state, {"return_to": return_to}, oidc.PENDING_TTL_S
            )
        elif state and "error" not in request.query:
            replayed = await _replayed(request, state, started_here=binding == state)
            if replayed is not None:
                return replayed
        code = oidc.code_from_callback(
            pending, request.query, now=now,
            browser_state=binding or request.cookies.get(oidc.SIGNIN_COOKIE),
        )  # fmt: skip
        assert pending is not None
        tokens = await client.exchange(code, pending)
        claims = await client.verified_claims(tokens, pending, now=time.time())
        secret = new_cookie_secret()
        lifetime_s = node.settings.session_lifetime_min * 60
        session = oidc.new_session(
            claims, client.claim_map, session_id=session_id_of(secret), now=time.time(),
            lifetime_s=lifetime_s, known_roles=client.known_roles, id_token=tokens.id_token,
            dpop_jkt=pending.dpop_jkt,
        )  # fmt: skip
        identity = session.identity
        revoked = await node.store.is_revoked(jti=identity.jti, sub=identity.sub)
        if revoked is not None:
            raise oidc.SignInError("your access has been revoked", reason=f"revoked_{revoked.kind}")
        await keep_session(request, session, lifetime_s)
        await node.store.put_expiring(
            USED_KEY_PREFIX + state,
            {"session_id": session.session_id, "return_to": return_to},
            oidc.PENDING_TTL_S,
        )
    except ConsiliumError as exc:
        return _failure(request, exc, return_to)
    except Exception:
        # A person at the end of a sign-in sees words, not a server error page.
        log.exception("sign-in callback failed")
        return _failure(request, ServerError("the sign-in failed on this server"), return_to)
    node.audit.append(
        "sign_in", "allow", sub=identity.sub, role=identity.role, session=identity.jti,
        mfa=bool(node.policy.mfa_methods.intersection(identity.amr)),
        step_up=pending.max_age_s is not None, ip=peer_address(request),
        device_bound=pending.dpop_jkt is not None, idp_dpop=tokens.dpop_bound,
    )  # fmt: skip
    if _wants_json(request):
        response = web.json_response({"signed_in": True, "return": return_to}, headers=NO_STORE)
    else:
        response = _redirect(return_to)
    set_session_cookie(request, response, secret)
    _forget_binding(request, response)
    return response


async def _replayed(request: web.Request, state: str, *, started_here: bool) -> web.Response | None:
    """A callback whose state was used already, opened again (a reload, the back button, a
    restored tab): on to where it was going, or a fresh sign-in (`oidc.replay_destination`);
    None when it is no business of this browser's (the callback then fails)."""
    node = request.app[NODE]
    used = await node.store.get_expiring(USED_KEY_PREFIX + state)
    session = await current_session(request) if used is not None else None
    destination = oidc.replay_destination(
        used, None if session is None else session.session_id, started_here=started_here
    )
    if destination is None:
        return None
    if _wants_json(request):
        return web.json_response({"signed_in": session is not None, "return": destination},
                                 headers=NO_STORE)  # fmt: skip
    return _redirect(destination)


def _session_json(node: Node, session: oidc.SignInSession | None) -> dict[str, object]:
    settings = node.settings
    body: dict[str, object] = {
        "enabled": node.signin is not None,
        "provider_name": settings.oidc_provider_name,
        "signed_in": session is not None,
        "step_up_max_age_s": settings.step_up_max_age_min * 60,
    }
    if session is not None:
        i = session.identity
        body.update(
            sub=i.sub, name=i.name, role=i.role, dept=list(i.depts), org=i.org,
            expires_at=int(session.expires_at), auth_time=int(session.auth_time),
        )  # fmt: skip
    return body


async def session_info(request: web.Request) -> web.Response:
    """`GET /auth/session`: whether sign-in is offered, and who is signed in (no secrets)."""
    node = request.app[NODE]
    session = await current_session(request)
    if session is not None:
        revoked = await node.store.is_revoked(jti=session.identity.jti, sub=session.identity.sub)
        if revoked is not None:
            session = None
    if session is not None and session.dpop_jkt is not None:
        # A device-bound session is shown only to its device (a copied cookie learns nothing).
        try:
            check_binding(request, session.identity.sub, check_session_request, session)
        except InvalidDpopProof:
            session = None
    return web.json_response(_session_json(node, session), headers=NO_STORE)


async def sign_out(request: web.Request) -> web.Response:
    """`POST /auth/signout`: end this browser's session here (and name the provider's logout)."""
    node = request.app[NODE]
    session = await current_session(request)
    logout_url: str | None = None
    if session is not None:
        await end_session(request, session)
        node.audit.append(
            "sign_out", "info", sub=session.identity.sub, session=session.identity.jti,
            ip=peer_address(request),
        )  # fmt: skip
        if node.signin is not None:
            logout_url = await node.signin.end_session_url(
                session.id_token_hint, node.settings.own_origin + "/"
            )
    response = web.json_response(
        {"signed_out": session is not None, "logout_url": logout_url}, headers=NO_STORE
    )
    clear_session_cookie(request, response)
    return response


def add_signin_routes(app: web.Application) -> None:
    """The sign-in routes (they answer 404 when sign-in is not configured)."""
    app.router.add_get("/auth/signin", start)
    app.router.add_get("/auth/callback", callback)
    app.router.add_get("/auth/session", session_info)
    app.router.add_post("/auth/signout", sign_out)
