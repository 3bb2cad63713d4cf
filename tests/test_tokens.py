"""Token verification: trusted keys, algorithms, claims, key sources, the development IdP."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from jwt.utils import base64url_decode, base64url_encode
from jwt.warnings import InsecureKeyLengthWarning

from core.errors import AuthenticationError, ConfigError, ServerError
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER, DevelopmentIdP
from signaling.identity import Identity
from signaling.keysources import JwksFile, JwksUrl, OidcDiscovery
from signaling.tokens import TokenVerifier, trusted_keys_from_jwks

ISSUER = "https://idp.hospital.example/realms/staff"
AUDIENCE = "consilium"

# Generated once: RSA key generation is the slow part of this file.
ED_KEY = ed25519.Ed25519PrivateKey.generate()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WEAK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
ROGUE_ED_KEY = ed25519.Ed25519PrivateKey.generate()

SIGNING_KEYS: dict[str, tuple[Any, str]] = {
    "EdDSA": (ED_KEY, "ed"),
    "ES256": (EC_KEY, "ec"),
    "RS256": (RSA_KEY, "rsa"),
    "PS256": (RSA_KEY, "rsa"),
}


def public_jwk(private_key: Any, kid: str, algorithm: str, **members: Any) -> dict[str, Any]:
    """The public JWK of `private_key`, as an IdP would publish it."""
    jwk = jwt.api_jws.get_algorithm_by_name(algorithm).to_jwk(
        private_key.public_key(), as_dict=True
    )
    return {**jwk, "kid": kid, **members}


def jwks(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(entries)}


STANDARD_JWKS = jwks(
    public_jwk(ED_KEY, "ed", "EdDSA", use="sig", alg="EdDSA"),
    # No "alg": usable for every algorithm of its key type.
    public_jwk(EC_KEY, "ec", "ES256"),
    public_jwk(RSA_KEY, "rsa", "RS256", use="sig"),
)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "sub": "staff-0042",
        "jti": str(uuid.uuid4()),
        "name": "Dr. Ada Example",
        "role": "chair",
        "dept": ["cardiology", "oncology"],
        "org": "St. Example Hospital",
        "room": "mdt-tumour-board",
        "amr": ["pwd", "otp"],
    }
    base.update(overrides)
    return base


def mint(
    algorithm: str = "EdDSA",
    *,
    key: Any = None,
    kid: str | None = "<default>",
    drop: tuple[str, ...] = (),
    **overrides: Any,
) -> str:
    default_key, default_kid = SIGNING_KEYS.get(algorithm, (None, ""))
    signing_key: Any = key or default_key
    headers = {} if kid is None else {"kid": default_kid if kid == "<default>" else kid}
    payload = {k: v for k, v in claims(**overrides).items() if k not in drop}
    return jwt.encode(payload, signing_key, algorithm=algorithm, headers=headers)


def write_text(path: Path, text: str) -> None:
    """Replace the file in one step, as a key rotation job would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, document: dict[str, Any]) -> None:
    write_text(path, json.dumps(document))


@pytest.fixture
def jwks_path(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    write_json(path, STANDARD_JWKS)
    return path


@pytest.fixture
def verifier(jwks_path: Path) -> TokenVerifier:
    return TokenVerifier(JwksFile(jwks_path), issuer=ISSUER, audience=AUDIENCE)


async def refused(verifier: TokenVerifier, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    assert token not in str(caught.value)
    return caught.value


# --- Accepted tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256", "PS256"])
async def test_token_signed_with_allowed_algorithm_verifies(
    verifier: TokenVerifier, algorithm: str
) -> None:
    identity = await verifier.verify(mint(algorithm))
    assert identity.sub == "staff-0042"


async def test_claims_become_the_identity(verifier: TokenVerifier) -> None:
    token = mint(jti="token-1", exp=2_000_000_000, locale="en-GB")
    identity = await verifier.verify(token)
    assert identity == Identity(
        sub="staff-0042",
        jti="token-1",
        role="chair",
        name="Dr. Ada Example",
        depts=("cardiology", "oncology"),
        org="St. Example Hospital",
        rooms=("mdt-tumour-board",),
        amr=("pwd", "otp"),
        iss=ISSUER,
        exp=2_000_000_000,
    )
    assert identity.extra == {"locale": "en-GB"}


async def test_display_names_lose_bidi_overrides_and_control_characters(
    verifier: TokenVerifier,
) -> None:
    # U+202E would show "Dr Smith" followed by reversed text: someone else's name on screen.
    spoof = "Dr Mallory\u202e htimS rD\u202c"
    assert (await verifier.verify(mint(name=spoof))).name == "Dr Mallory htimS rD"
    isolates = "\u2067Dr\u2069\u200f Li\u200e\n\tWei\x00\x1b[31m"
    assert (await verifier.verify(mint(name=isolates))).name == "Dr Li Wei[31m"
    assert (await verifier.verify(mint(name="Dr " + "a" * 500))).name == "Dr " + "a" * 125
    # Scripts keep what they need (Arabic, Chinese, joiners in emoji).
    name = "د. سارة 王医生 👩\u200d⚕️"
    assert (await verifier.verify(mint(name=name))).name == name


async def test_dept_may_be_a_single_string_and_optional_claims_may_be_absent(
    verifier: TokenVerifier,
) -> None:
    identity = await verifier.verify(
        mint(dept="radiology", drop=("name", "org", "room", "amr", "nbf"))
    )
    assert identity.depts == ("radiology",)
    assert (identity.name, identity.org, identity.rooms, identity.amr) == ("", "", (), ())


async def test_audience_list_containing_ours_is_accepted(verifier: TokenVerifier) -> None:
    identity = await verifier.verify(mint(aud=["pacs", AUDIENCE]))
    assert identity.sub == "staff-0042"


async def test_clock_skew_within_leeway_is_tolerated(verifier: TokenVerifier) -> None:
    now = int(time.time())
    await verifier.verify(mint(exp=now - 10, iat=now + 10, nbf=now + 10))


async def test_token_without_kid_is_accepted_when_one_key_fits(verifier: TokenVerifier) -> None:
    identity = await verifier.verify(mint("EdDSA", kid=None))
    assert identity.sub == "staff-0042"


# --- Refused algorithms and keys ---------------------------------------------------------------


async def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": "ed"})
    error = await refused(verifier, token)
    assert error.message == "algorithm not allowed: none"
    assert error.details["reason"] == "algorithm_not_allowed"


class _AnyBytesHMAC(HMACAlgorithm):
    """HMAC that, unlike pyjwt's, will take a public key as its secret: the attacker's tool."""

    def prepare_key(self, key: str | bytes) -> bytes:
        return key if isinstance(key, bytes) else key.encode()


def hmac_token_keyed_with(secret: bytes, kid: str) -> str:
    attacker = PyJWS(algorithms=[])
    attacker.register_algorithm("HS256", _AnyBytesHMAC(HMACAlgorithm.SHA256))
    payload = json.dumps(claims()).encode()
    return attacker.encode(payload, secret, algorithm="HS256", headers={"kid": kid})


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
async def test_hs256_keyed_with_our_public_key_is_refused(
    verifier: TokenVerifier, secret_form: str
) -> None:
    if secret_form == "pem":
        secret = RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        secret = json.dumps(public_jwk(RSA_KEY, "rsa", "RS256")).encode()
    error = await refused(verifier, hmac_token_keyed_with(secret, "rsa"))
    assert error.message == "algorithm not allowed: HS256"
    assert error.details["reason"] == "algorithm_not_allowed"


async def test_algorithm_outside_the_allow_list_is_refused(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS384", headers={"kid": "rsa"})
    error = await refused(verifier, token)
    assert error.details["reason"] == "algorithm_not_allowed"


async def test_unknown_kid_is_refused(verifier: TokenVerifier) -> None:
    error = await refused(verifier, mint(kid="retired-2019"))
    assert (error.message, error.details["reason"]) == ("unknown signing key", "unknown_key")


async def test_key_from_another_issuer_with_the_same_kid_is_refused(
    verifier: TokenVerifier,
) -> None:
    error = await refused(verifier, mint("EdDSA", key=ROGUE_ED_KEY, kid="ed"))
    assert (error.message, error.details["reason"]) == ("bad signature", "bad_signature")


async def test_tampered_payload_is_refused(verifier: TokenVerifier) -> None:
    header, _, signature = mint(role="trainee").split(".")
    promoted = base64url_encode(json.dumps(claims(role="chair")).encode()).decode()
    error = await refused(verifier, f"{header}.{promoted}.{signature}")
    assert error.details["reason"] == "bad_signature"


async def test_rsa_key_below_2048_bits_is_not_used(tmp_path: Path) -> None:
    document = jwks(public_jwk(WEAK_RSA_KEY, "weak", "RS256", use="sig", alg="RS256"))
    assert trusted_keys_from_jwks(document) == []
    write_json(tmp_path / "jwks.json", document)
    verifier = TokenVerifier(JwksFile(tmp_path / "jwks.json"), issuer=ISSUER, audience=AUDIENCE)
    with pytest.warns(InsecureKeyLengthWarning):
        token = mint("RS256", key=WEAK_RSA_KEY, kid="weak")
    error = await refused(verifier, token)
    assert error.details["reason"] == "unknown_key"


async def test_symmetric_key_in_the_jwks_is_ignored(tmp_path: Path) -> None:
    secret = b"correct horse battery staple, long enough"
    oct_jwk = {"kty": "oct", "kid": "shared", "k": base64url_encode(secret).decode()}
    document = jwks(oct_jwk, public_jwk(ED_KEY, "ed", "EdDSA"))
    assert [key.key_type for key in trusted_keys_from_jwks(document)] == ["OKP"]
    write_json(tmp_path / "jwks.json", document)
    verifier = TokenVerifier(JwksFile(tmp_path / "jwks.json"), issuer=ISSUER, audience=AUDIENCE)
    error = await refused(verifier, hmac_token_keyed_with(secret, "shared"))
    assert error.details["reason"] == "algorithm_not_allowed"


async def test_ec_key_is_not_used_for_rs256(verifier: TokenVerifier) -> None:
    # Header claims RS256 with the EC key's kid; the EC key must not be tried as an RSA key.
    error = await refused(verifier, mint("RS256", kid="ec"))
    assert error.details["reason"] == "unknown_key"


def test_jwk_whose_alg_does_not_fit_its_key_type_is_not_used() -> None:
    ec_as_rsa = public_jwk(EC_KEY, "ec", "ES256", alg="RS256")
    assert trusted_keys_from_jwks(jwks(ec_as_rsa)) == []


async def test_jwk_for_encryption_is_not_used_for_signatures(tmp_path: Path) -> None:
    write_json(tmp_path / "jwks.json", jwks(public_jwk(ED_KEY, "ed", "EdDSA", use="enc")))
    verifier = TokenVerifier(JwksFile(tmp_path / "jwks.json"), issuer=ISSUER, audience=AUDIENCE)
    error = await refused(verifier, mint("EdDSA"))
    assert error.details["reason"] == "unknown_key"


async def test_jwk_alg_conflicting_with_header_alg_is_not_used(tmp_path: Path) -> None:
    write_json(tmp_path / "jwks.json", jwks(public_jwk(RSA_KEY, "rsa", "RS256", alg="RS256")))
    verifier = TokenVerifier(JwksFile(tmp_path / "jwks.json"), issuer=ISSUER, audience=AUDIENCE)
    await verifier.verify(mint("RS256"))
    error = await refused(verifier, mint("PS256"))
    assert error.details["reason"] == "unknown_key"


async def test_token_without_kid_is_refused_when_several_keys_fit(tmp_path: Path) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    document = jwks(public_jwk(ED_KEY, "ed", "EdDSA"), public_jwk(other, "ed-2", "EdDSA"))
    write_json(tmp_path / "jwks.json", document)
    verifier = TokenVerifier(JwksFile(tmp_path / "jwks.json"), issuer=ISSUER, audience=AUDIENCE)
    error = await refused(verifier, mint("EdDSA", kid=None))
    assert error.details["reason"] == "ambiguous_key"


# --- Refused claims ----------------------------------------------------------------------------


async def test_expired_token_is_refused(verifier: TokenVerifier) -> None:
    error = await refused(verifier, mint(exp=int(time.time()) - 120))
    assert (error.message, error.details["reason"]) == ("token expired", "expired")


async def test_token_before_nbf_is_refused(verifier: TokenVerifier) -> None:
    error = await refused(verifier, mint(nbf=int(time.time()) + 120))
    assert (error.message, error.details["reason"]) == ("token not yet valid", "not_yet_valid")


async def test_token_issued_in_the_future_beyond_skew_is_refused(verifier: TokenVerifier) -> None:
    error = await refused(verifier, mint(iat=int(time.time()) + 120, drop=("nbf",)))
    assert error.details["reason"] == "issued_in_future"


async def test_wrong_issuer_is_refused(verifier: TokenVerifier) -> None:
    error = await refused(verifier, mint(iss="https://idp.other-hospital.example"))
    assert (error.message, error.details["reason"]) == ("wrong issuer", "wrong_issuer")


async def test_wrong_audience_is_refused(verifier: TokenVerifier) -> None:
    error = await refused(verifier, mint(aud="pacs-viewer"))
    assert (error.message, error.details["reason"]) == ("wrong audience", "wrong_audience")


@pytest.mark.parametrize("claim", ["jti", "exp", "sub", "iat", "iss", "aud"])
async def test_token_missing_a_required_claim_is_refused(
    verifier: TokenVerifier, claim: str
) -> None:
    error = await refused(verifier, mint(drop=(claim,)))
    assert error.message == f"missing claim: {claim}"
    assert error.details == {"reason": "missing_claim", "claim": claim}


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("dept", 5),
        ("room", {"id": "x"}),
        ("amr", "pwd"),
        ("role", ["chair"]),
        ("exp", "9999999999"),
        ("sub", ""),
        ("jti", 7),
    ],
)
async def test_claim_of_the_wrong_type_is_refused(
    verifier: TokenVerifier, claim: str, value: object
) -> None:
    overrides: dict[str, Any] = {claim: value}
    error = await refused(verifier, mint(**overrides))
    assert error.details == {"reason": "invalid_claim", "claim": claim}


async def test_oversized_token_is_refused(verifier: TokenVerifier) -> None:
    error = await refused(verifier, mint(padding="x" * 9000))
    assert (error.message, error.details["reason"]) == ("token too large", "too_large")


def test_leeway_beyond_60_seconds_is_a_config_error(jwks_path: Path) -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(JwksFile(jwks_path), issuer=ISSUER, audience=AUDIENCE, leeway_s=61)


class StaticKeys:
    """A KeySource with a fixed key set, for tests that need no file or server."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._keys = trusted_keys_from_jwks(document)

    async def keys(self, *, refresh: bool = False) -> list[jwt.PyJWK]:
        return self._keys


_B64_SEGMENT = st.binary(max_size=48).map(lambda raw: base64url_encode(raw).decode())
_HEADER = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jwk", "x5c"]),
    st.one_of(
        st.sampled_from(["none", "HS256", "RS256", "EdDSA", "ES256", "ed", "rsa"]),
        st.text(max_size=8),
        st.integers(),
        st.booleans(),
        st.none(),
        st.lists(st.text(max_size=4), max_size=2),
    ),
).map(lambda header: base64url_encode(json.dumps(header).encode()).decode())
_GARBAGE = st.one_of(
    st.text(),
    st.lists(_B64_SEGMENT, min_size=1, max_size=5).map(".".join),
    st.tuples(_HEADER, _B64_SEGMENT, _B64_SEGMENT).map(".".join),
)


@settings(max_examples=300, deadline=None)
@given(text=_GARBAGE)
def test_garbage_is_refused_with_authentication_error_only(text: str) -> None:
    verifier = TokenVerifier(StaticKeys(STANDARD_JWKS), issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(verifier.verify(text))
    if len(text) > 16:
        assert text not in str(caught.value)


# --- Key sources -------------------------------------------------------------------------------


async def test_jwks_file_is_reread_when_it_changes(jwks_path: Path) -> None:
    refreshes: list[tuple[str, int]] = []
    verifier = TokenVerifier(
        JwksFile(jwks_path),
        issuer=ISSUER,
        audience=AUDIENCE,
        on_key_refresh=lambda reason, n: refreshes.append((reason, n)),
    )
    old_token = mint("EdDSA")
    await verifier.verify(old_token)

    rotated = ed25519.Ed25519PrivateKey.generate()
    write_json(jwks_path, jwks(public_jwk(rotated, "ed-2025", "EdDSA")))
    await verifier.verify(mint("EdDSA", key=rotated, kid="ed-2025"))
    assert (await refused(verifier, old_token)).details["reason"] == "unknown_key"
    assert refreshes == [("initial_load", 4), ("key_set_changed", 1)]


async def test_broken_jwks_file_keeps_the_last_good_keys(jwks_path: Path) -> None:
    source = JwksFile(jwks_path)
    good = await source.keys()
    write_text(jwks_path, '{"keys": [')
    assert await source.keys() is good


async def test_missing_jwks_file_is_a_server_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError):
        await JwksFile(tmp_path / "absent.json").keys()


class FakeClock:
    """Monotonic time that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class IdentityProviderServer:
    """A real HTTP server publishing a JWKS and an OIDC discovery document, counting requests."""

    realm_path = "/realms/staff"

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = STANDARD_JWKS
        self.jwks_status = 200
        self.discovered_issuer: str | None = None
        self.hits: Counter[str] = Counter()
        self.base_url = ""

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/jwks"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}{self.realm_path}"

    async def serve_jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        if self.jwks_status != 200:
            return web.Response(status=self.jwks_status)
        return web.json_response(self.jwks)

    async def serve_discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        issuer = self.discovered_issuer or self.issuer
        return web.json_response({"issuer": issuer, "jwks_uri": self.jwks_url})


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProviderServer]:
    provider = IdentityProviderServer()
    app = web.Application()
    app.router.add_get("/jwks", provider.serve_jwks)
    app.router.add_get(
        f"{provider.realm_path}/.well-known/openid-configuration", provider.serve_discovery
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    provider.base_url = str(server.make_url("")).rstrip("/")
    yield provider
    await server.close()


def url_verifier(
    idp: IdentityProviderServer, clock: FakeClock, **kw: Any
) -> tuple[TokenVerifier, list[tuple[str, int]]]:
    refreshes: list[tuple[str, int]] = []
    source = JwksUrl(idp.jwks_url, clock=clock, refetch_interval_s=30, ttl_s=300)
    verifier = TokenVerifier(
        source,
        issuer=ISSUER,
        audience=AUDIENCE,
        on_key_refresh=lambda reason, n: refreshes.append((reason, n)),
        **kw,
    )
    return verifier, refreshes


async def test_jwks_url_is_fetched_once_for_many_tokens(idp: IdentityProviderServer) -> None:
    clock = FakeClock()
    verifier, _ = url_verifier(idp, clock)
    for algorithm in ["EdDSA", "ES256", "RS256", "PS256"] * 3:
        await verifier.verify(mint(algorithm))
    assert idp.hits["jwks"] == 1


async def test_jwks_url_is_refetched_after_its_ttl(idp: IdentityProviderServer) -> None:
    clock = FakeClock()
    verifier, refreshes = url_verifier(idp, clock)
    await verifier.verify(mint())
    clock.advance(301)
    await verifier.verify(mint())
    assert idp.hits["jwks"] == 2
    # The same keys came back, so nothing is reported as changed.
    assert refreshes == [("initial_load", 4)]


async def test_unknown_kid_refetches_after_key_rotation(idp: IdentityProviderServer) -> None:
    clock = FakeClock()
    verifier, refreshes = url_verifier(idp, clock)
    await verifier.verify(mint())

    rotated = ed25519.Ed25519PrivateKey.generate()
    idp.jwks = jwks(public_jwk(rotated, "ed-2025", "EdDSA"), public_jwk(ED_KEY, "ed", "EdDSA"))
    clock.advance(31)
    identity = await verifier.verify(mint("EdDSA", key=rotated, kid="ed-2025"))
    assert identity.sub == "staff-0042"
    assert idp.hits["jwks"] == 2
    assert refreshes == [("initial_load", 4), ("unknown_kid", 2)]


async def test_unknown_kid_refetch_is_rate_limited(idp: IdentityProviderServer) -> None:
    clock = FakeClock()
    verifier, _ = url_verifier(idp, clock)
    await verifier.verify(mint())
    assert idp.hits["jwks"] == 1

    # Right after a fetch, unknown kids do not reach the IdP at all.
    for n in range(10):
        await refused(verifier, mint(kid=f"probe-{n}"))
    assert idp.hits["jwks"] == 1

    # Once the interval has passed, a burst of them causes one request.
    clock.advance(31)
    results = await asyncio.gather(
        *(verifier.verify(mint(kid=f"probe-{n}")) for n in range(10)), return_exceptions=True
    )
    assert all(isinstance(result, AuthenticationError) for result in results)
    assert idp.hits["jwks"] == 2


async def test_idp_outage_keeps_the_last_good_keys(idp: IdentityProviderServer) -> None:
    clock = FakeClock()
    verifier, _ = url_verifier(idp, clock)
    await verifier.verify(mint())
    idp.jwks_status = 503
    clock.advance(301)
    await verifier.verify(mint())
    await verifier.verify(mint())
    # The failed attempt is not retried before the refetch interval.
    assert idp.hits["jwks"] == 2


async def test_unreachable_jwks_without_cached_keys_is_a_server_error(
    idp: IdentityProviderServer,
) -> None:
    idp.jwks_status = 500
    verifier, _ = url_verifier(idp, FakeClock())
    with pytest.raises(ServerError):
        await verifier.verify(mint())


def test_jwks_url_over_plain_http_to_another_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        JwksUrl("http://idp.hospital.example/jwks")


async def test_oidc_discovery_finds_the_jwks(idp: IdentityProviderServer) -> None:
    source = OidcDiscovery(idp.issuer, clock=FakeClock())
    verifier = TokenVerifier(source, issuer=idp.issuer, audience=AUDIENCE)
    for _ in range(3):
        identity = await verifier.verify(mint(iss=idp.issuer))
    assert identity.iss == idp.issuer
    assert idp.hits == Counter({"discovery": 1, "jwks": 1})


async def test_oidc_discovery_naming_another_issuer_is_refused(
    idp: IdentityProviderServer,
) -> None:
    idp.discovered_issuer = "https://attacker.example"
    source = OidcDiscovery(idp.issuer, clock=FakeClock())
    with pytest.raises(ConfigError):
        await source.keys()
    assert idp.hits["jwks"] == 0


async def test_oidc_issuer_mismatch_fails_verification_as_server_error(
    idp: IdentityProviderServer,
) -> None:
    idp.discovered_issuer = "https://attacker.example"
    verifier = TokenVerifier(
        OidcDiscovery(idp.issuer, clock=FakeClock()), issuer=idp.issuer, audience=AUDIENCE
    )
    with pytest.raises(ServerError):
        await verifier.verify(mint(iss=idp.issuer))


# --- The development IdP -----------------------------------------------------------------------


def dev_verifier(idp: DevelopmentIdP) -> TokenVerifier:
    return TokenVerifier(JwksFile(idp.jwks_path), issuer=DEV_ISSUER, audience=DEV_AUDIENCE)


async def test_development_idp_tokens_verify(tmp_path: Path) -> None:
    idp = DevelopmentIdP.load_or_create(tmp_path)
    token = idp.mint(
        sub="dev-chair",
        role="chair",
        depts=["cardiology"],
        rooms=["mdt-1", "mdt-2"],
        name="Dev Chair",
        org="Dev Hospital",
        extra={"locale": "zh-CN"},
    )
    identity = await dev_verifier(idp).verify(token)
    assert (identity.sub, identity.role, identity.iss) == ("dev-chair", "chair", DEV_ISSUER)
    assert identity.depts == ("cardiology",)
    assert identity.rooms == ("mdt-1", "mdt-2")
    assert identity.amr == ("pwd", "otp")
    assert (identity.name, identity.org) == ("Dev Chair", "Dev Hospital")
    assert identity.extra == {"locale": "zh-CN"}
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"


async def test_development_idp_keeps_its_key_across_restarts(tmp_path: Path) -> None:
    first = DevelopmentIdP.load_or_create(tmp_path)
    token = first.mint(sub="dev-specialist", role="specialist")
    second = DevelopmentIdP.load_or_create(tmp_path)
    assert second.kid == first.kid
    key_file = tmp_path / "dev-idp" / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (await dev_verifier(second).verify(token)).sub == "dev-specialist"


async def test_development_idp_expired_token_is_refused(tmp_path: Path) -> None:
    idp = DevelopmentIdP.load_or_create(tmp_path)
    error = await refused(dev_verifier(idp), idp.mint(sub="x", role="chair", ttl_s=-120))
    assert error.details["reason"] == "expired"


def test_development_idp_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    # RFC 8037 appendix A.1 (key) and A.3 (its thumbprint).
    private = base64url_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(private)
    idp = DevelopmentIdP(key, tmp_path / "jwks.json")
    assert idp.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
