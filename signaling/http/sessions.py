"""Sign-in sessions at the HTTP edge: the cookie, the session it names in the shared state, and
the step-up check (RFC 9470) for what needs a recent authentication.

The browser's cookie holds a random secret only; the shared state keys the session by the
secret's SHA-256 (a copy of Redis names no usable cookie), so every node finds it. The session's
identity then goes through the same gate as a token's: revocation, policy, MFA, audit, lobby.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from aiohttp import web

from signaling import oidc
from signaling.http.forwarding import forwarded_caller
from signaling.http.node import NODE
from signaling.logs import scrub

SESSION_KEY_PREFIX = "session:"
"""Shared-state key of a session: `session:<sha256 of the cookie>`."""

PENDING_KEY_PREFIX = "signin:"
"""Shared-state key of a started sign-in: `signin:<state>`."""

USED_KEY_PREFIX = "signin-used:"
"""Shared-state key of a sign-in whose callback came: `signin-used:<state>` (where it returns,
and the session it made once it made one), kept `oidc.PENDING_TTL_S` so that the callback opened
again goes on instead of failing (`oidc.replay_destination`)."""

REQUEST_SESSION = web.RequestKey("signin_session", oidc.SignInSession)
"""The session that authenticated this request, when a cookie (not a bearer token) did."""

MAX_COOKIE_CHARS = 128
"""A longer cookie value is not ours (and is not looked up)."""


def session_id_of(secret: str) -> str:
    """The public id of the session a cookie secret names (its SHA-256, hex)."""
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def new_cookie_secret() -> str:
    """A fresh cookie secret (256 bits)."""
    return secrets.token_urlsafe(32)


async def current_session(request: web.Request) -> oidc.SignInSession | None:
    """The unexpired session the request's cookie names, or None (no cookie, unknown, over).
    Revocation is the gate's to check, as for a token."""
    if request.app[NODE].settings.oidc_client_id is None:
        return None
    secret = request.cookies.get(oidc.SESSION_COOKIE, "")
    if not secret or len(secret) > MAX_COOKIE_CHARS:
        return None
    stored = await request.app[NODE].store.get_expiring(SESSION_KEY_PREFIX + session_id_of(secret))
    if stored is None:
        return None
    try:
        session = oidc.SignInSession.from_dict(stored)
    except (KeyError, TypeError, ValueError):
        return None
    if session.expired(time.time()):
        return None
    return session


async def keep_session(request: web.Request, session: oidc.SignInSession, lifetime_s: int) -> None:
    """Store a new session in the shared state for its lifetime."""
    await request.app[NODE].store.put_expiring(
        SESSION_KEY_PREFIX + session.session_id, session.to_dict(), lifetime_s
    )


async def end_session(request: web.Request, session: oidc.SignInSession) -> None:
    """Forget a session (sign-out)."""
    await request.app[NODE].store.delete_expiring(SESSION_KEY_PREFIX + session.session_id)


def set_session_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure when the node is reached over TLS."""
    settings = request.app[NODE].settings
    response.set_cookie(
        oidc.SESSION_COOKIE,
        secret,
        max_age=settings.session_lifetime_min * 60,
        path="/",
        httponly=True,
        secure=settings.own_origin.startswith("https://"),
        samesite="Lax",
    )


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Remove the session cookie from the browser."""
    settings = request.app[NODE].settings
    response.del_cookie(
        oidc.SESSION_COOKIE,
        path="/",
        secure=settings.own_origin.startswith("https://"),
        httponly=True,
        samesite="Lax",
    )


def require_recent_authentication(request: web.Request) -> None:
    """Step-up (RFC 9470): a request authenticated by a session needs an authentication no
    older than `step_up_max_age_min`; else `StepUpRequired` (401, `WWW-Authenticate` with
    `max_age`), audited. A bearer token's request is the token issuer's to bound (short-lived
    tokens minted for the visit), as before."""
    session = request.get(REQUEST_SESSION)
    forwarded = forwarded_caller(request)
    node = request.app[NODE]
    max_age_s = node.settings.step_up_max_age_min * 60
    if session is not None:
        sub, recent = session.identity.sub, session.recent_enough(time.time(), max_age_s)
    elif forwarded is not None and forwarded.auth_time is not None:
        # A session's request another node forwarded: when its user signed in came with it.
        sub, recent = forwarded.identity.sub, time.time() - forwarded.auth_time <= max_age_s
    else:
        return
    if recent:
        return
    node.audit.append(
        "api_refused", "deny", reason=oidc.STEP_UP_ERROR, sub=sub,
        path=scrub(request.path)[:200],
    )  # fmt: skip
    raise oidc.StepUpRequired("this needs a recent sign-in; sign in again", max_age=max_age_s)
