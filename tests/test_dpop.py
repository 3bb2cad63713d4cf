"""DPoP proofs (RFC 9449) checked by `signaling.dpop`, with no event loop: every check of
section 4.3 refuses what it should, with its reason, and the RFC's own examples hold."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signaling import dpop

URL = "https://mdt.example.org/api/rooms/mdt-1/admission"
NOW = 1_800_000_000.0


def proof(
    key: Any = None,
    *,
    method: str = "GET",
    url: str = URL,
    iat: float = NOW,
    jti: str = "proof-0001",
    alg: str = "ES256",
    typ: str = dpop.PROOF_TYPE,
    jwk: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A proof as a browser makes one (ES256 by default)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    if jwk is None:
        rsa_alg = alg.startswith(("RS", "PS"))
        algorithm = jwt.algorithms.RSAAlgorithm if rsa_alg else jwt.algorithms.ECAlgorithm
        jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
    body = {"jti": jti, "htm": method, "htu": url, "iat": iat, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"typ": typ, "jwk": jwk})


def check(text: str | None, **kwargs: Any) -> dpop.Proof:
    options: dict[str, Any] = {"method": "GET", "url": URL, "now": NOW, "seen": dpop.SeenProofs()}
    options.update(kwargs)
    return dpop.check_proof(text, **options)


def refusal(text: str | None, **kwargs: Any) -> str:
    with pytest.raises(dpop.InvalidDpopProof) as refused:
        check(text, **kwargs)
    assert refused.value.code == "invalid_dpop_proof"
    return str(refused.value.details["reason"])


def thumbprint_of(key: ec.EllipticCurvePrivateKey) -> str:
    return dpop.jwk_thumbprint(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True))


def test_rfc9449_examples_thumbprint_and_ath() -> None:
    # The public key of the proof in RFC 9449 section 4.2 and the cnf.jkt of the token bound to
    # it in section 6.1; the access token of section 7.1 and its ath.
    jwk = {
        "kty": "EC", "crv": "P-256",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    }  # fmt: skip
    assert dpop.jwk_thumbprint(jwk) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    # Members beyond the required ones (kid, use, alg) do not change it (RFC 7638 section 3.3).
    assert dpop.jwk_thumbprint({**jwk, "kid": "x", "use": "sig"}) == dpop.jwk_thumbprint(jwk)
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert dpop.access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_a_valid_proof_names_its_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    accepted = check(proof(key), expected_jkt=thumbprint_of(key))
    assert accepted.jkt == thumbprint_of(key) and accepted.jti == "proof-0001"
    assert dpop.is_thumbprint(accepted.jkt)


def test_a_replayed_proof_is_refused_until_its_window_is_over() -> None:
    seen = dpop.SeenProofs()
    text = proof()
    check(text, seen=seen)
    assert refusal(text, seen=seen) == "replayed"
    assert refusal(text, seen=seen, now=NOW + 30) == "replayed"
    # Past its window the proof is stale anyway: replays never pass.
    assert refusal(text, seen=seen, now=NOW + dpop.PROOF_MAX_AGE_S + 1) == "stale"


def test_the_replay_cache_is_bounded_and_forgets_old_entries() -> None:
    seen = dpop.SeenProofs(window_s=10, capacity=3)
    for i in range(5):
        assert seen.first_use(f"k{i}", NOW)
    assert len(seen) == 3
    assert seen.first_use("late", NOW + 11) and len(seen) == 1


def test_the_method_and_url_must_be_the_requests() -> None:
    assert refusal(proof(method="POST")) == "wrong_htm"
    assert refusal(proof(url="https://mdt.example.org/api/rooms/mdt-2/admission")) == "wrong_htu"
    assert refusal(proof(url="https://evil.example.org/api/rooms/mdt-1/admission")) == "wrong_htu"
    # Query and fragment are ignored; scheme, host case and the default port are normalised.
    check(proof(url=URL + "?x=1#y"))
    check(proof(url="HTTPS://MDT.example.org:443/api/rooms/mdt-1/admission"))
    assert refusal(proof(url="http://mdt.example.org/api/rooms/mdt-1/admission")) == "wrong_htu"
    # Several spellings of the one request (public origin, address reached): any may be named.
    local = "http://10.0.0.5:8443/api/rooms/mdt-1/admission"
    check(proof(url=local), url=(URL, local))
    elsewhere = proof(url="http://10.0.0.6:8443/api/rooms/mdt-1/admission")
    assert refusal(elsewhere, url=(URL, local)) == "wrong_htu"


def test_a_stale_or_future_proof_is_refused() -> None:
    assert refusal(proof(iat=NOW - dpop.PROOF_MAX_AGE_S - 1)) == "stale"
    assert refusal(proof(iat=NOW + dpop.PROOF_FUTURE_S + 1)) == "future"
    check(proof(iat=NOW - dpop.PROOF_MAX_AGE_S + 1))
    # The token leeway widens both ends (clock skew of the device).
    check(proof(iat=NOW + dpop.PROOF_FUTURE_S + 10), leeway_s=30)


def test_ath_must_be_the_presented_tokens_hash() -> None:
    token = "eyJ.token.one"
    check(proof(ath=dpop.access_token_hash(token)), access_token=token)
    assert refusal(proof(ath=dpop.access_token_hash("another")), access_token=token) == "wrong_ath"
    assert refusal(proof(), access_token=token) == "wrong_ath"


def test_another_key_than_the_bound_one_is_refused() -> None:
    bound = ec.generate_private_key(ec.SECP256R1())
    thief = ec.generate_private_key(ec.SECP256R1())
    assert refusal(proof(thief), expected_jkt=thumbprint_of(bound)) == "wrong_key"


def test_a_jwk_that_is_not_the_signing_key_fails_the_signature() -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    other_jwk = jwt.algorithms.ECAlgorithm.to_jwk(other.public_key(), as_dict=True)
    assert refusal(proof(signer, jwk=other_jwk)) == "bad_signature"


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        (part(json.dumps(header).encode()), part(json.dumps(claims).encode()), part(signature))
    )


def test_alg_none_and_hmac_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    claims = {"jti": "proof-none-1", "htm": "GET", "htu": URL, "iat": NOW}
    none = _unsigned({"typ": dpop.PROOF_TYPE, "alg": "none", "jwk": jwk}, claims)
    assert refusal(none) == "algorithm_not_allowed"
    oct_jwk = {"kty": "oct", "k": "c2VjcmV0"}
    hmac = jwt.encode(
        claims, "a shared secret of thirty-two b.", algorithm="HS256",
        headers={"typ": dpop.PROOF_TYPE, "jwk": oct_jwk},
    )  # fmt: skip
    assert refusal(hmac) == "algorithm_not_allowed"
    with pytest.raises(dpop.InvalidDpopProof):
        dpop.check_signature(hmac, oct_jwk, "HS256")


def test_a_private_key_in_the_header_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    assert "d" in private
    assert refusal(proof(key, jwk=private)) == "private_key"


def test_the_proof_type_and_claims_are_required() -> None:
    assert refusal(proof(typ="JWT")) == "wrong_typ"
    assert refusal(proof(jti="short")) == "missing_claim"
    assert refusal(None) == "missing"
    assert refusal("") == "missing"
    assert refusal("not.a.jws") == "malformed"
    assert refusal("x" * (dpop.MAX_PROOF_BYTES + 1)) == "malformed"
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    no_iat = jwt.encode({"jti": "proof-0002", "htm": "GET", "htu": URL}, key, algorithm="ES256",
                        headers={"typ": dpop.PROOF_TYPE, "jwk": jwk})  # fmt: skip
    assert refusal(no_iat) == "missing_claim"


def test_other_curves_and_weak_rsa_are_refused_but_rsa_2048_is_fine() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(p384.public_key(), as_dict=True)
    assert refusal(proof(p384, alg="ES384", jwk=jwk)) == "algorithm_not_allowed"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    check(proof(rsa_key, alg="PS256"))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        weak_proof = proof(weak, alg="RS256")
    assert refusal(weak_proof) == "weak_key"


def test_a_proof_made_by_this_node_passes_the_check() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    made = dpop.make_proof(
        key, method="post", url="https://idp.example/token", now=NOW, jti="node-proof-1",
        nonce="server-nonce", access_token="at",
    )  # fmt: skip
    accepted = dpop.check_proof(
        made, method="POST", url="https://idp.example/token", now=NOW, seen=dpop.SeenProofs(),
        access_token="at", expected_jkt=thumbprint_of(key),
    )  # fmt: skip
    assert accepted.jti == "node-proof-1"
    assert jwt.decode(made, options={"verify_signature": False})["nonce"] == "server-nonce"


def test_a_tokens_confirmation_key() -> None:
    assert dpop.confirmation_jkt({"sub": "x"}) is None
    jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    assert dpop.confirmation_jkt({"cnf": {"jkt": jkt}}) == jkt
    with pytest.raises(dpop.InvalidDpopProof):
        dpop.confirmation_jkt({"cnf": {"jkt": "short"}})
    assert dpop.unverified_claims("garbage") == {}


def test_the_challenge_names_the_error_and_algorithms() -> None:
    value = dpop.challenge(description='a "quoted" reason')
    assert value.startswith('DPoP error="invalid_dpop_proof"')
    assert "'quoted'" in value and 'algs="ES256 PS256 RS256 EdDSA"' in value


def test_real_time_is_not_read() -> None:
    # Pure: a proof dated now by the real clock is stale against the injected NOW.
    assert refusal(proof(iat=time.time())) in {"future", "stale"}
