"""The sign-in rules (signaling.oidc), with no event loop: PKCE, state, the ID token's checks,
the claim maps of Entra ID and Keycloak, sessions and step-up."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from signaling import oidc

NOW = 1_800_000_000.0
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
ROLES = ("chair", "specialist", "radiologist", "archivist", "admin")


def pending(**kw: Any) -> oidc.PendingSignIn:
    values: dict[str, Any] = {
        "state": "s" * 43, "nonce": "n" * 43, "code_verifier": VERIFIER,
        "return_to": "/join/mdt-1", "now": NOW,
    }  # fmt: skip
    values.update(kw)
    return oidc.start_sign_in(**values)


def id_claims(**kw: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "https://idp.example", "aud": "consilium", "sub": "alice", "exp": NOW + 300,
        "iat": NOW, "nonce": "n" * 43, "auth_time": NOW - 10,
    }  # fmt: skip
    claims.update(kw)
    return claims


def check(claims: dict[str, Any], **kw: Any) -> None:
    options: dict[str, Any] = {
        "issuer": "https://idp.example", "client_id": "consilium", "nonce": "n" * 43,
        "algorithm": "RS256", "access_token": None, "now": NOW, "leeway_s": 30,
    }  # fmt: skip
    options.update(kw)
    oidc.check_id_token_claims(claims, **options)


def refusal(claims: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(oidc.SignInError) as caught:
        check(claims, **kw)
    return str(caught.value.details["reason"])


# -- PKCE and the authorization request --------------------------------------------------------


def test_pkce_challenge_is_rfc7636_s256() -> None:
    # RFC 7636 appendix B.
    assert oidc.pkce_challenge(VERIFIER) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_authorization_url_carries_state_nonce_and_only_the_challenge() -> None:
    url = oidc.authorization_url(
        "https://idp.example/authorize", pending(max_age_s=900), client_id="consilium",
        redirect_uri="https://mdt.example/auth/callback", scopes=["profile", "openid"],
    )  # fmt: skip
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["response_type"] == "code"
    assert query["scope"] == "openid profile"
    assert query["state"] == "s" * 43 and query["nonce"] == "n" * 43
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == oidc.pkce_challenge(VERIFIER)
    assert VERIFIER not in url
    assert query["max_age"] == "900"


def test_a_short_code_verifier_is_refused() -> None:
    with pytest.raises(ValueError):
        pending(code_verifier="short")


@pytest.mark.parametrize(
    "raw",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:1", "", None],
)
def test_return_path_never_leaves_the_node(raw: str | None) -> None:
    assert oidc.safe_return_path(raw) == "/"


def test_return_path_keeps_a_local_path() -> None:
    assert oidc.safe_return_path("/join/mdt-1") == "/join/mdt-1"


# -- the callback ------------------------------------------------------------------------------


def test_callback_with_unknown_state_is_refused() -> None:
    with pytest.raises(oidc.SignInError) as caught:
        oidc.code_from_callback(None, {"state": "x", "code": "c"}, now=NOW, browser_state="x")
    assert caught.value.details["reason"] == "bad_state"


def test_callback_with_another_state_is_refused() -> None:
    with pytest.raises(oidc.SignInError) as caught:
        oidc.code_from_callback(
            pending(), {"state": "other", "code": "c"}, now=NOW, browser_state="other"
        )
    assert caught.value.details["reason"] == "bad_state"


def test_callback_after_the_pending_lifetime_is_expired() -> None:
    with pytest.raises(oidc.SignInError) as caught:
        oidc.code_from_callback(
            pending(), {"state": "s" * 43, "code": "c"}, now=NOW + oidc.PENDING_TTL_S + 1,
            browser_state="s" * 43,
        )  # fmt: skip
    assert caught.value.details["reason"] == "expired"


def test_provider_error_is_reported_as_such() -> None:
    with pytest.raises(oidc.SignInError) as caught:
        oidc.code_from_callback(
            pending(), {"error": "access_denied", "state": "s" * 43}, now=NOW, browser_state=None
        )
    assert caught.value.details["reason"] == "provider_error"


def test_callback_in_another_browser_is_refused() -> None:
    # Login CSRF: someone else's callback URL opened in this browser.
    for browser_state in (None, "t" * 43):
        with pytest.raises(oidc.SignInError) as caught:
            oidc.code_from_callback(
                pending(), {"state": "s" * 43, "code": "c"}, now=NOW, browser_state=browser_state
            )
        assert caught.value.details["reason"] == "other_browser"


def test_callback_yields_the_code() -> None:
    query = {"state": "s" * 43, "code": "abc"}
    assert oidc.code_from_callback(pending(), query, now=NOW, browser_state="s" * 43) == "abc"


def test_each_started_sign_in_has_its_own_binding_cookie() -> None:
    # Two tabs of one browser: the second start must not overwrite the first one's binding.
    first, second = "a" * 43, "b" * 43
    assert oidc.signin_cookie_name(first) != oidc.signin_cookie_name(second)
    assert oidc.signin_cookie_name(first).startswith(oidc.SIGNIN_COOKIE + "_")
    assert len(oidc.signin_cookie_name(first)) == len(oidc.SIGNIN_COOKIE) + 1 + 16


def test_a_callback_opened_again_goes_on_only_in_the_browser_it_belongs_to() -> None:
    used = {"session_id": "sess-1", "return_to": "/join/mdt-1"}
    # The browser it signed in: on to the room (a reload of the callback, the back button).
    assert oidc.replay_destination(used, "sess-1", started_here=False) == "/join/mdt-1"
    # The browser that started it but never got the answer (reloaded while it was answered):
    # a fresh sign-in to the same place.
    again = "/auth/signin?return=%2Fjoin%2Fmdt-1"
    assert oidc.replay_destination(used, None, started_here=True) == again
    started_only = {"return_to": "/join/mdt-1"}  # the first callback has not finished
    assert oidc.replay_destination(started_only, None, started_here=True) == again
    # Another browser (no session or another one, no binding cookie) gets nothing.
    assert oidc.replay_destination(used, None, started_here=False) is None
    assert oidc.replay_destination(used, "sess-2", started_here=False) is None
    assert oidc.replay_destination(started_only, "sess-1", started_here=False) is None
    assert oidc.replay_destination(None, "sess-1", started_here=True) is None
    # The kept destination is a local path, whatever was stored.
    evil = {"session_id": "sess-1", "return_to": "https://evil.example/"}
    assert oidc.replay_destination(evil, "sess-1", started_here=False) == "/"


# -- the ID token ------------------------------------------------------------------------------


def test_good_id_token_claims_pass() -> None:
    check(id_claims())


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (id_claims(iss="https://other.example"), "wrong_issuer"),
        (id_claims(aud="another-app"), "wrong_audience"),
        (id_claims(aud=["consilium", "another-app"]), "wrong_azp"),
        (id_claims(aud=["consilium", "another-app"], azp="another-app"), "wrong_azp"),
        (id_claims(exp=NOW - 31), "expired"),
        (id_claims(iat=NOW + 31), "issued_in_future"),
        (id_claims(nonce="replayed"), "wrong_nonce"),
        ({k: v for k, v in id_claims().items() if k != "nonce"}, "wrong_nonce"),
        ({k: v for k, v in id_claims().items() if k != "exp"}, "missing_claim"),
    ],
)
def test_bad_id_token_claims_are_refused(claims: dict[str, Any], reason: str) -> None:
    assert refusal(claims) == reason


def test_several_audiences_need_azp_naming_us() -> None:
    check(id_claims(aud=["consilium", "another-app"], azp="consilium"))


def test_at_hash_must_match_the_access_token() -> None:
    digest = hashlib.sha256(b"access-token").digest()
    at_hash = base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    check(id_claims(at_hash=at_hash), access_token="access-token")
    assert refusal(id_claims(at_hash=at_hash), access_token="another") == "bad_at_hash"


def test_step_up_needs_a_fresh_auth_time() -> None:
    check(id_claims(auth_time=NOW - 60), max_age_s=900)
    assert refusal(id_claims(auth_time=NOW - 3600), max_age_s=900) == "stale_auth_time"
    claims = {k: v for k, v in id_claims().items() if k != "auth_time"}
    assert refusal(claims, max_age_s=900) == "missing_claim"


# -- claim maps --------------------------------------------------------------------------------


ENTRA = oidc.ClaimMap(
    subject="oid", name="name", roles="roles", departments="groups",
    role_map={"MDT.Chair": "chair", "MDT.Specialist": "specialist"},
)  # fmt: skip


def test_entra_claims_become_an_identity() -> None:
    claims = id_claims(
        oid="oid-1", name="Dr Alice\u202e Chen", roles=["MDT.Specialist", "MDT.Chair"],
        groups=["oncology"], amr=["pwd", "mfa"],
    )  # fmt: skip
    identity = ENTRA.identity(claims, session_id="abc", expires_at=int(NOW) + 60, known_roles=ROLES)
    assert identity.sub == "oid-1"
    assert identity.role == "chair"  # the role map's order is the precedence
    assert identity.depts == ("oncology",)
    assert identity.amr == ("pwd", "mfa")
    assert identity.name == "Dr Alice Chen"
    assert identity.jti == "session:abc"
    assert identity.rooms == ()


def test_keycloak_realm_roles_department_and_acr() -> None:
    claim_map = dataclasses.replace(
        oidc.CLAIM_PRESETS["keycloak"], role_map={"mdt-chair": "chair"},
        mfa_acr_values=frozenset({"2"}),
    )  # fmt: skip
    claims = id_claims(
        realm_access={"roles": ["offline_access", "mdt-chair"]}, department="oncology", acr="2"
    )
    identity = claim_map.identity(claims, session_id="x", expires_at=0, known_roles=ROLES)
    assert (identity.sub, identity.role, identity.depts, identity.amr) == (
        "alice", "chair", ("oncology",), ("mfa",),
    )  # fmt: skip


def test_a_provider_value_that_is_a_consilium_role_needs_no_map() -> None:
    identity = oidc.ClaimMap().identity(
        id_claims(roles=["radiologist"]), session_id="x", expires_at=0, known_roles=ROLES
    )
    assert identity.role == "radiologist"


@pytest.mark.parametrize(
    ("claims", "claim"),
    [(id_claims(roles=["Visitor"]), "roles"), (id_claims(sub="", roles=["chair"]), "sub")],
)
def test_missing_role_or_subject_is_refused(claims: dict[str, Any], claim: str) -> None:
    with pytest.raises(oidc.SignInError) as caught:
        oidc.ClaimMap().identity(claims, session_id="x", expires_at=0, known_roles=ROLES)
    assert caught.value.details == {"reason": "missing_claim", "claim": claim}


def test_dotted_path_and_uri_named_claims() -> None:
    claims = {"realm_access": {"roles": ["a"]}, "https://hospital.example/dept": "icu"}
    assert oidc.claim_at(claims, "realm_access.roles") == ["a"]
    assert oidc.claim_at(claims, "https://hospital.example/dept") == "icu"
    assert oidc.claim_at(claims, "realm_access.missing") is None


def test_role_map_entries_parse_in_order() -> None:
    assert list(oidc.parse_role_map(["a=chair", "b=c=specialist"]).items()) == [
        ("a", "chair"), ("b=c", "specialist"),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        oidc.parse_role_map(["no-role="])


# -- sessions and step-up ----------------------------------------------------------------------


def test_session_round_trips_and_expires() -> None:
    session = oidc.new_session(
        id_claims(roles=["chair"], amr=["mfa"]), oidc.ClaimMap(), session_id="sid", now=NOW,
        lifetime_s=3600, known_roles=ROLES, id_token="tok",
    )  # fmt: skip
    again = oidc.SignInSession.from_dict(session.to_dict())
    assert again == session
    assert again.auth_time == NOW - 10
    assert not session.expired(NOW + 3599) and session.expired(NOW + 3600)


def test_recent_enough_follows_auth_time() -> None:
    session = oidc.new_session(
        id_claims(roles=["chair"]), oidc.ClaimMap(), session_id="sid", now=NOW,
        lifetime_s=3600, known_roles=ROLES,
    )  # fmt: skip
    assert session.recent_enough(NOW + 800, 900)
    assert not session.recent_enough(NOW + 1000, 900)


def test_a_session_identity_names_only_the_room_it_asks_for() -> None:
    identity = oidc.ClaimMap().identity(
        id_claims(roles=["chair"]), session_id="x", expires_at=0, known_roles=ROLES
    )
    assert oidc.identity_in_room(identity, "mdt-7").rooms == ("mdt-7",)


def test_step_up_challenge_is_rfc9470() -> None:
    value = oidc.step_up_challenge(900)
    assert value.startswith('Bearer error="insufficient_user_authentication"')
    assert value.endswith("max_age=900")
