"""Wycheproof JWS and JWK-set vectors against our signature-and-key-selection step.

Each group's `public` JWK (or, lacking one, `private`: the HMAC groups) is the trust set;
`trusted_keys_from_jwks` decides which of its keys we use, `verify_signature` checks the JWS.
The payloads are not JWT claim sets, so claims are not validated here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from core.errors import AuthenticationError
from signaling.tokens import ALLOWED_ALGORITHMS, trusted_keys_from_jwks, verify_signature

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "wycheproof"
FILES = ("json_web_signature_test.json", "json_web_key_test.json")

if not all((VECTORS / name).is_file() for name in FILES):
    pytest.skip(
        "Wycheproof JOSE vectors: no ../shared/vectors in this checkout", allow_module_level=True
    )


def _cases() -> list[Any]:
    cases = []
    for name in FILES:
        suite = json.loads((VECTORS / name).read_text())
        for group in suite["testGroups"]:
            for test in group["tests"]:
                case_id = f"{name.removesuffix('_test.json')}-{test['tcId']}-{test['comment']}"
                cases.append(pytest.param(group, test, id=case_id))
    return cases


def _trust_set(group: dict[str, Any]) -> list[jwt.PyJWK]:
    jwk = group.get("public") or group["private"]
    return trusted_keys_from_jwks(jwk if "keys" in jwk else {"keys": [jwk]})


def _header_alg(jws: str) -> str | None:
    try:
        alg = jwt.get_unverified_header(jws).get("alg")
    except jwt.PyJWTError:
        return None
    return alg if isinstance(alg, str) else None


@pytest.mark.parametrize(("group", "test"), _cases())
def test_vector(group: dict[str, Any], test: dict[str, Any]) -> None:
    keys = _trust_set(group)
    jws: str = test["jws"]
    alg = _header_alg(jws)

    if test["result"] == "valid" and alg in ALLOWED_ALGORITHMS:
        assert isinstance(verify_signature(jws, keys), bytes)
    elif test["result"] == "valid":
        # Valid JOSE, but HS*/RS384/PS512/ES512... are not on our allow-list. A few of these
        # (all HS256) carry a stray character in the base64 header that lenient decoders skip;
        # pyjwt decodes strictly, so there we never get as far as reading the algorithm.
        with pytest.raises(AuthenticationError) as refused:
            verify_signature(jws, keys)
        expected = "algorithm_not_allowed" if alg is not None else "malformed"
        assert refused.value.details["reason"] == expected
    elif test["result"] == "invalid":
        with pytest.raises(AuthenticationError):
            verify_signature(jws, keys)
    else:
        try:
            verify_signature(jws, keys)
        except AuthenticationError:
            pass


def test_no_secret_or_private_key_is_ever_trusted() -> None:
    for name in FILES:
        suite = json.loads((VECTORS / name).read_text())
        for group in suite["testGroups"]:
            for key in _trust_set(group):
                assert key.key_type != "oct"
                assert key.algorithm_name in ALLOWED_ALGORITHMS
