"""Sign-in with the hospital's OpenID provider: the rules of the authorization code flow with
PKCE, the ID token's checks and the claim map, without I/O.

Pure (sans-IO): randomness and `now` (Unix seconds) are passed in; `signaling.oidc_client`
fetches the provider's documents and keys and `signaling.http.routes.signin` moves the browser.
The flow (OpenID Connect Core 1.0, RFC 7636 PKCE, RFC 9470 step-up):

1. `/auth/signin` keeps a `PendingSignIn` (state, nonce, PKCE verifier, where to return) in the
   shared state for `PENDING_TTL_S`, and redirects to `authorization_url(...)`.
2. `/auth/callback` takes the pending sign-in named by `state` (once), checks the answer
   (`code_from_callback`), exchanges the code with the verifier, checks the ID token's claims
   (`check_id_token_claims`) and maps them to an `Identity` (`ClaimMap.identity`).
3. The result is a `SignInSession` kept server-side; the browser holds only its random id in an
   HttpOnly cookie.

Device binding (DPoP, RFC 9449): a browser that holds a key names its thumbprint (`dpop_jkt`)
when it starts; the pending sign-in and then the session carry it, and the HTTP edge
(`signaling.http.device_binding`) honours that session only with a fresh proof by that key.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from core.errors import AuthenticationError
from signaling.dpop import is_thumbprint
from signaling.identity import Identity
from signaling.tokens import display_name

PENDING_TTL_S = 600
"""Seconds a started sign-in may take at the provider before its state is forgotten."""

SESSION_COOKIE = "consilium_session"
"""The cookie naming the sign-in session (HttpOnly, SameSite=Lax, Secure over TLS)."""

SIGNIN_COOKIE = "consilium_signin"
"""The cookie binding a started sign-in to the browser that started it (its `state`; HttpOnly,
SameSite=Lax, path `/auth/`, as long as the sign-in may take). One per started sign-in, named
by `signin_cookie_name`, so that two tabs signing in at once do not overwrite each other's; a
cookie of this bare name is still read (a sign-in started before an upgrade)."""

STATE_NAME_CHARS = 16
"""Characters of the state that name its binding cookie (unique enough among one browser's
sign-ins; the cookie's value is the whole state, compared in full)."""

SESSION_JTI_PREFIX = "session:"
"""An `Identity.jti` of a sign-in session: `session:<id>` (revoking that jti ends the session)."""

STEP_UP_ERROR = "insufficient_user_authentication"
"""RFC 9470's error code: the authentication is too old (or too weak) for the request."""


class SignInError(AuthenticationError):
    """The sign-in at the hospital's provider failed; `reason` says which check refused it."""

    code = "sign_in_failed"


class StepUpRequired(AuthenticationError):
    """The request needs an authentication no older than `max_age` seconds (RFC 9470)."""

    code = STEP_UP_ERROR


# --- PKCE, state and the authorization request ---------------------------------------------


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA-256(ASCII(verifier))), without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def safe_return_path(raw: str | None) -> str:
    """Where the browser goes after signing in: a path on this node only (never another site:
    `//evil`, `/\\evil`, a scheme), else `/`."""
    if not raw or not raw.startswith("/") or raw.startswith(("//", "/\\")):
        return "/"
    if any(ch in raw for ch in "\\\r\n\t") or len(raw) > 512:
        return "/"
    return raw


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    """A sign-in started and not yet come back: kept server-side, named by its `state`."""

    state: str
    """Opaque random value the provider hands back (binds the callback to this start)."""
    nonce: str
    """Random value the ID token must carry (binds the token to this start)."""
    code_verifier: str
    """The PKCE secret; only its S256 challenge leaves the server before the exchange."""
    return_to: str
    """The local path to continue at once signed in (`/join/<room>`, `/archive`)."""
    created_at: float
    """When the sign-in started (Unix seconds)."""
    max_age_s: int | None = None
    """Step-up: the provider was asked for an authentication no older than this."""
    dpop_jkt: str | None = None
    """The RFC 7638 thumbprint of the browser's DPoP key (RFC 9449 section 10's `dpop_jkt`):
    the session will be bound to it. None: the browser offered no key."""

    def to_dict(self) -> dict[str, Any]:
        """As stored in the shared state."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PendingSignIn:
        """The pending sign-in `to_dict` wrote."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def start_sign_in(
    *, state: str, nonce: str, code_verifier: str, return_to: str | None, now: float,
    max_age_s: int | None = None, dpop_jkt: str | None = None, dpop_required: bool = False,
) -> PendingSignIn:  # fmt: skip
    """A new pending sign-in from fresh random values (at least 43 characters of verifier),
    bound to the browser's key `dpop_jkt` when it names one. `SignInError` for a `dpop_jkt`
    that is not a thumbprint (`bad_dpop_jkt`), or none when `dpop_required` (`dpop_required`)."""
    if not 43 <= len(code_verifier) <= 128:
        raise ValueError("an RFC 7636 code verifier is 43-128 characters")
    if dpop_jkt is not None and not is_thumbprint(dpop_jkt):
        raise SignInError("the browser's key thumbprint is malformed", reason="bad_dpop_jkt")
    if dpop_jkt is None and dpop_required:
        raise SignInError(
            "this browser offered no device key, and this node requires one", reason="dpop_required"
        )
    return PendingSignIn(
        state, nonce, code_verifier, safe_return_path(return_to), now, max_age_s, dpop_jkt
    )


def signin_cookie_name(state: str) -> str:
    """The name of the cookie that binds the sign-in started with `state` to its browser."""
    return f"{SIGNIN_COOKIE}_{state[:STATE_NAME_CHARS]}"


def replay_destination(
    used: Mapping[str, Any] | None, current_session_id: str | None, *, started_here: bool
) -> str | None:
    """Where a callback whose state was used already goes, rather than failing as `bad_state`.

    `used`: what the first callback of this state kept (`return_to`, and `session_id` once it
    made a session). In the browser holding that session (a reload of the callback, the back
    button, a restored tab): on to `return_to`. In the browser that started the sign-in
    (`started_here`: it holds the state's binding cookie) but never got the session (it
    reloaded while the first callback was still being answered, so that answer was dropped):
    a new sign-in to the same place, which the provider usually completes at once. None
    otherwise: another browser gets nothing from someone's callback."""
    if used is None:
        return None
    return_to = safe_return_path(str(used.get("return_to", "/")))
    if current_session_id is not None and used.get("session_id") == current_session_id:
        return return_to
    if started_here:
        return "/auth/signin?" + urlencode({"return": return_to})
    return None


def authorization_url(
    endpoint: str,
    pending: PendingSignIn,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
) -> str:
    """The provider's authorization endpoint with this sign-in's request (code flow, S256)."""
    query: dict[str, str] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(dict.fromkeys(["openid", *scopes])),
        "state": pending.state,
        "nonce": pending.nonce,
        "code_challenge": pkce_challenge(pending.code_verifier),
        "code_challenge_method": "S256",
    }
    if pending.max_age_s is not None:
        query["max_age"] = str(pending.max_age_s)
    separator = "&" if "?" in endpoint else "?"
    return endpoint + separator + urlencode(query)


def code_from_callback(
    pending: PendingSignIn | None,
    query: Mapping[str, str],
    *,
    now: float,
    browser_state: str | None,
) -> str:
    """The authorization code of a callback for `pending` (None: its state is unknown or was
    used already), in the browser that started it (`browser_state`: the state its
    `SIGNIN_COOKIE` holds; another browser's callback is login CSRF). Raises SignInError with
    the reason."""
    if "error" in query:
        raise SignInError(
            "the identity provider refused the sign-in",
            reason="provider_error",
            provider_error=query["error"][:64],
        )
    if pending is None:
        raise SignInError("this sign-in is unknown, expired or already used", reason="bad_state")
    if query.get("state") != pending.state:
        raise SignInError("the sign-in answer does not match its request", reason="bad_state")
    if browser_state != pending.state:
        raise SignInError(
            "this sign-in was started in another browser; start again", reason="other_browser"
        )
    if now - pending.created_at > PENDING_TTL_S:
        raise SignInError("the sign-in took too long; start again", reason="expired")
    code = query.get("code", "")
    if not code or len(code) > 2048:
        raise SignInError("the sign-in answer carries no code", reason="no_code")
    return code


# --- The ID token ----------------------------------------------------------------------------


def _hash_half(value: str, algorithm: str) -> str:
    """OIDC Core 3.1.3.6 at_hash: the left half of the hash the JWS alg uses, base64url."""
    name = "sha512" if algorithm == "EdDSA" else "sha" + algorithm[-3:]
    digest = hashlib.new(name, value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SignInError(f"the ID token has no valid {name}", reason="missing_claim", claim=name)
    return float(value)


def check_id_token_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithm: str,
    access_token: str | None,
    now: float,
    leeway_s: int,
    max_age_s: int | None = None,
) -> None:
    """OIDC Core 3.1.3.7 on claims whose signature was verified: iss, aud, azp, exp, iat,
    nonce, at_hash (where present) and, when `max_age_s` was asked for, auth_time."""
    if claims.get("iss") != issuer:
        raise SignInError("the ID token is from another issuer", reason="wrong_issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        raise SignInError("the ID token is not for this client", reason="wrong_audience")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise SignInError("the ID token was issued to another party", reason="wrong_azp")
    if _number(claims, "exp") <= now - leeway_s:
        raise SignInError("the ID token has expired", reason="expired")
    if _number(claims, "iat") > now + leeway_s:
        raise SignInError("the ID token is issued in the future", reason="issued_in_future")
    if claims.get("nonce") != nonce:
        raise SignInError("the ID token does not answer this sign-in", reason="wrong_nonce")
    at_hash = claims.get("at_hash")
    if at_hash is not None and (
        access_token is None or at_hash != _hash_half(access_token, algorithm)
    ):
        raise SignInError("the ID token does not match its access token", reason="bad_at_hash")
    if max_age_s is not None:
        auth_time = _number(claims, "auth_time")
        if now - auth_time > max_age_s + leeway_s:
            raise SignInError("the provider did not authenticate again", reason="stale_auth_time")


# --- The claim map -------------------------------------------------------------------------


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path (`realm_access.roles`); None where it is absent. A
    claim whose own name holds a dot (a URI-named claim) is found whole first."""
    if not path:
        return None
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _texts(value: Any) -> tuple[str, ...]:
    """A claim as a tuple of non-empty strings (one string, or a list of them)."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return tuple(dict.fromkeys(item for item in items if isinstance(item, str) and item))


@dataclass(frozen=True, slots=True)
class ClaimMap:
    """Which ID token claims say who the person is, for one provider (dotted paths)."""

    subject: str = "sub"
    """The stable person id (Entra ID: `oid`, the same in every app; `sub` is per app)."""
    name: str = "name"
    """The display name."""
    roles: str = "roles"
    """The role values (Entra ID app roles: `roles`; Keycloak: `realm_access.roles`)."""
    departments: str = "groups"
    """The departments (Entra ID: `groups`; Keycloak: a user attribute mapped to a claim)."""
    organisation: str = ""
    """The institution, if the provider says it ("" : none)."""
    role_map: Mapping[str, str] = field(default_factory=dict)
    """Provider role value -> Consilium role, in order of precedence; values that already are
    Consilium roles need no entry."""
    mfa_acr_values: frozenset[str] = frozenset()
    """`acr` values that mean a second factor was used (e.g. Keycloak LoA `2`): they add `mfa`
    to the identity's `amr`."""

    def role(self, values: Sequence[str], known_roles: Sequence[str]) -> str:
        """The Consilium role for these provider values: the first `role_map` entry the person
        holds, else the first value that is a Consilium role; "" when none is."""
        for provider_value, role in self.role_map.items():
            if provider_value in values:
                return role
        for value in values:
            if value in known_roles:
                return value
        return ""

    def identity(
        self,
        claims: Mapping[str, Any],
        *,
        session_id: str,
        expires_at: int,
        known_roles: Sequence[str],
    ) -> Identity:
        """The person as the gate sees them. Raises SignInError `missing_claim` when the
        subject or a role is absent (with the claim path, never its value)."""
        subject = claim_at(claims, self.subject)
        if not isinstance(subject, str) or not subject:
            raise SignInError(
                "the provider did not say who you are", reason="missing_claim", claim=self.subject
            )
        role = self.role(_texts(claim_at(claims, self.roles)), known_roles)
        if not role:
            raise SignInError(
                "the provider gave you no Consilium role", reason="missing_claim", claim=self.roles
            )
        amr = _texts(claims.get("amr"))
        if claims.get("acr") in self.mfa_acr_values and "mfa" not in amr:
            amr = (*amr, "mfa")
        name = claim_at(claims, self.name)
        org = claim_at(claims, self.organisation)
        return Identity(
            sub=subject,
            jti=SESSION_JTI_PREFIX + session_id,
            role=role,
            name=display_name(name if isinstance(name, str) else ""),
            depts=_texts(claim_at(claims, self.departments)),
            org=org if isinstance(org, str) else "",
            amr=amr,
            iss=str(claims.get("iss", "")),
            exp=expires_at,
        )


CLAIM_PRESETS: dict[str, ClaimMap] = {
    "standard": ClaimMap(),
    "entra": ClaimMap(subject="oid", name="name", roles="roles", departments="groups"),
    "keycloak": ClaimMap(
        subject="sub", name="name", roles="realm_access.roles", departments="department"
    ),
}
"""Claim maps for common providers (setting `oidc_claims`); single claims may be overridden."""


def parse_role_map(items: Sequence[str]) -> dict[str, str]:
    """`oidc_role_map` entries `provider value=role` as an ordered map; ValueError on a
    malformed one."""
    out: dict[str, str] = {}
    for item in items:
        value, sep, role = item.rpartition("=")
        if not sep or not value.strip() or not role.strip():
            raise ValueError(f"{item!r} is not provider-value=role")
        out[value.strip()] = role.strip()
    return out


# --- The session -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignInSession:
    """A signed-in person, kept server-side in the shared state (every node sees it)."""

    session_id: str
    """Random id; the browser's cookie holds it and nothing else."""
    identity: Identity
    """Who signed in, as the gate sees them (`jti` is `session:<session_id>`)."""
    auth_time: float
    """When the provider last authenticated the person (`auth_time`, else the sign-in)."""
    expires_at: float
    """When the session ends (Unix seconds); short, by `session_lifetime_min`."""
    id_token_hint: str = ""
    """The ID token, for the provider's logout (`id_token_hint`); never logged."""
    dpop_jkt: str | None = None
    """The thumbprint of the browser key the session is bound to: every request it
    authenticates carries a DPoP proof by that key. None: an unbound session (cookie only)."""

    def to_dict(self) -> dict[str, Any]:
        """As stored in the shared state."""
        i = self.identity
        return {
            "session_id": self.session_id,
            "identity": {
                "sub": i.sub, "jti": i.jti, "role": i.role, "name": i.name,
                "depts": list(i.depts), "org": i.org, "amr": list(i.amr), "iss": i.iss,
                "exp": i.exp,
            },
            "auth_time": self.auth_time,
            "expires_at": self.expires_at,
            "id_token_hint": self.id_token_hint,
            "dpop_jkt": self.dpop_jkt,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SignInSession:
        """The session `to_dict` wrote."""
        i = d["identity"]
        identity = Identity(
            sub=i["sub"], jti=i["jti"], role=i["role"], name=i["name"],
            depts=tuple(i["depts"]), org=i["org"], amr=tuple(i["amr"]), iss=i["iss"],
            exp=int(i["exp"]),
        )  # fmt: skip
        return cls(
            d["session_id"], identity, float(d["auth_time"]), float(d["expires_at"]),
            str(d.get("id_token_hint", "")),
            str(d["dpop_jkt"]) if d.get("dpop_jkt") else None,
        )  # fmt: skip

    def expired(self, now: float) -> bool:
        """True once the session's lifetime is over."""
        return now >= self.expires_at

    def recent_enough(self, now: float, max_age_s: int) -> bool:
        """Step-up: whether the last authentication is no older than `max_age_s`."""
        return now - self.auth_time <= max_age_s


def new_session(
    identity_claims: Mapping[str, Any],
    claim_map: ClaimMap,
    *,
    session_id: str,
    now: float,
    lifetime_s: int,
    known_roles: Sequence[str],
    id_token: str = "",
    dpop_jkt: str | None = None,
) -> SignInSession:
    """The session for a checked ID token's claims, ending `lifetime_s` from now (on its own
    clock: an ID token lives minutes). The provider's `auth_time` (else now) is what step-up
    compares with."""
    expires_at = int(now + lifetime_s)
    identity = claim_map.identity(
        identity_claims, session_id=session_id, expires_at=expires_at, known_roles=known_roles
    )
    auth_time = identity_claims.get("auth_time")
    if not isinstance(auth_time, int | float) or isinstance(auth_time, bool) or auth_time > now:
        auth_time = now
    return SignInSession(
        session_id, identity, float(auth_time), float(expires_at), id_token, dpop_jkt
    )


def identity_in_room(identity: Identity, room_id: str) -> Identity:
    """A signed-in person's identity as it asks for one room. A directory sign-in is no
    invitation to a particular room the way a join link's `room` claim is: the room's own rules
    decide (its departments and explicit grants in the policy's department scoping, its lock,
    its lobby and chair), so the identity names the room it asks for."""
    return replace(identity, rooms=(room_id,))


def step_up_challenge(max_age_s: int) -> str:
    """The RFC 9470 `WWW-Authenticate` value asking for an authentication this recent."""
    return (
        f'Bearer error="{STEP_UP_ERROR}", '
        f'error_description="a more recent authentication is required", max_age={max_age_s}'
    )
