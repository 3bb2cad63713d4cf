"""The pure rules under TokenVerifier, with no key source, no event loop and the time passed in:
claims to Identity, the key for a header, the header's size and shape checks."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from core.errors import AuthenticationError
from signaling.tokens import (
    MAX_DISPLAY_NAME,
    MAX_TOKEN_BYTES,
    display_name,
    identity_from_claims,
    read_header,
    select_key,
    trusted_keys_from_jwks,
)

NOW = 1_800_000_000.0
"""A fixed moment, so no test here reads the clock."""

LEEWAY_S = 30


def verified_claims(**overrides: Any) -> dict[str, Any]:
    """A claim set as pyjwt hands it over after checking signature, iss, aud, exp and nbf."""
    base: dict[str, Any] = {
        "iss": "https://idp.hospital.example/realms/staff",
        "aud": "consilium",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 300,
        "sub": "staff-0042",
        "jti": "b6f0c1d2",
        "name": "Dr. Ada Example",
        "role": "chair",
        "dept": ["cardiology", "oncology"],
        "org": "St. Example Hospital",
        "room": "mdt-tumour-board",
        "amr": ["pwd", "otp"],
    }
    base.update(overrides)
    return base


def refusal(claims: dict[str, Any], *, now: float = NOW) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        identity_from_claims(claims, leeway_s=LEEWAY_S, now=now)
    return caught.value


def public_ed25519_jwk(kid: str) -> dict[str, Any]:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    jwk = jwt.api_jws.get_algorithm_by_name("EdDSA").to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


# --- Claims to Identity ---------------------------------------------------------------------------


def test_verified_claims_become_the_identity() -> None:
    identity = identity_from_claims(verified_claims(ward="7B"), leeway_s=LEEWAY_S, now=NOW)
    assert (identity.sub, identity.jti, identity.role) == ("staff-0042", "b6f0c1d2", "chair")
    assert identity.depts == ("cardiology", "oncology")
    assert identity.rooms == ("mdt-tumour-board",)
    assert identity.amr == ("pwd", "otp")
    assert identity.exp == int(NOW) + 300
    # Claims the server does not consume are kept aside, the consumed ones are not repeated.
    assert identity.extra == {"ward": "7B"}


def test_token_issued_at_the_edge_of_the_skew_is_accepted() -> None:
    claims = verified_claims(iat=int(NOW) + LEEWAY_S)
    assert identity_from_claims(claims, leeway_s=LEEWAY_S, now=NOW).sub == "staff-0042"


def test_token_issued_beyond_the_skew_is_issued_in_the_future() -> None:
    error = refusal(verified_claims(iat=int(NOW) + LEEWAY_S + 1))
    assert error.details["reason"] == "issued_in_future"


def test_the_same_iat_is_accepted_later_on_the_clock_passed_in() -> None:
    claims = verified_claims(iat=int(NOW) + LEEWAY_S + 1)
    later = NOW + 1
    assert identity_from_claims(claims, leeway_s=LEEWAY_S, now=later).sub == "staff-0042"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", True),  # a bool is an int to Python, not a time to us
        ("iat", "1800000000"),
        ("nbf", None),
        ("sub", ""),
        ("jti", 42),
        ("role", ["chair"]),
        ("amr", "otp"),  # amr must be a list, unlike dept and room
        ("dept", ["cardiology", 7]),
    ],
)
def test_claim_of_the_wrong_type_is_an_invalid_claim(claim: str, value: Any) -> None:
    error = refusal(verified_claims(**{claim: value}))
    assert error.details == {"reason": "invalid_claim", "claim": claim}


def test_display_name_loses_bidi_overrides_control_characters_and_length() -> None:
    assert display_name("Dr\u202e Smith\n\x07 Jones") == "Dr Smith Jones"
    assert len(display_name("A" * (MAX_DISPLAY_NAME + 50))) == MAX_DISPLAY_NAME


# --- The key for a header ------------------------------------------------------------------------


def test_kid_picks_its_key_among_several() -> None:
    keys = trusted_keys_from_jwks({"keys": [public_ed25519_jwk("a"), public_ed25519_jwk("b")]})
    assert select_key(keys, {"alg": "EdDSA", "kid": "b"}).key_id == "b"


def test_header_without_kid_is_ambiguous_when_several_keys_fit() -> None:
    keys = trusted_keys_from_jwks({"keys": [public_ed25519_jwk("a"), public_ed25519_jwk("b")]})
    with pytest.raises(AuthenticationError) as caught:
        select_key(keys, {"alg": "EdDSA"})
    assert caught.value.details["reason"] == "ambiguous_key"


def test_key_for_another_algorithm_is_an_unknown_key() -> None:
    keys = trusted_keys_from_jwks({"keys": [public_ed25519_jwk("a")]})
    with pytest.raises(AuthenticationError) as caught:
        select_key(keys, {"alg": "ES256", "kid": "a"})
    assert caught.value.details["reason"] == "unknown_key"


@pytest.mark.parametrize(
    ("alg", "message"),
    [
        ("none", "algorithm not allowed: none"),
        ("HS256", "algorithm not allowed: HS256"),
        # A name we do not know is not echoed back to the client.
        ("<script>", "algorithm not allowed"),
    ],
)
def test_algorithm_outside_the_allow_list_is_refused_before_any_key(alg: str, message: str) -> None:
    keys = trusted_keys_from_jwks({"keys": [public_ed25519_jwk("a")]})
    with pytest.raises(AuthenticationError) as caught:
        select_key(keys, {"alg": alg, "kid": "a"})
    assert caught.value.details["reason"] == "algorithm_not_allowed"
    assert caught.value.message == message


# --- The header's size and shape ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "malformed"),
        ("x" * (MAX_TOKEN_BYTES + 1), "too_large"),
        ("é.é.é", "malformed"),
        ("not-a-jws", "malformed"),
    ],
)
def test_header_of_a_token_that_is_not_a_compact_jws_is_refused(token: object, reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        read_header(token)
    assert caught.value.details["reason"] == reason
