"""Wycheproof JWS vectors against the signature step of DPoP proofs (`dpop.check_signature`).

Every group with an EC P-256 or RSA public key: a valid JWS whose algorithm DPoP allows must
verify under the group's key; every invalid one (bad encodings, modified signatures, wrong
algorithm in the header, keys of the wrong type) must be refused. The payloads are not DPoP
claim sets, so only the signature step is exercised here (tests/test_dpop.py checks the rest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from signaling import dpop

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "wycheproof"
FILE = VECTORS / "json_web_signature_test.json"

if not FILE.is_file():
    pytest.skip(
        "Wycheproof JWS vectors: no ../shared/vectors in this checkout (see "
        "/work/shared/vectors/README.md)", allow_module_level=True,
    )  # fmt: skip


def _cases() -> list[Any]:
    cases = []
    for group in json.loads(FILE.read_text())["testGroups"]:
        public = group.get("public")
        if not isinstance(public, dict) or public.get("kty") not in ("EC", "RSA"):
            continue
        for test in group["tests"]:
            case_id = f"{test['tcId']}-{test['comment']}"
            cases.append(pytest.param(public, test, id=case_id))
    return cases


def _header_alg(jws: str) -> str:
    try:
        alg = jwt.get_unverified_header(jws).get("alg")
    except jwt.PyJWTError:
        return "unreadable"
    return alg if isinstance(alg, str) else "unreadable"


@pytest.mark.parametrize(("public", "test"), _cases())
def test_vector(public: dict[str, Any], test: dict[str, Any]) -> None:
    jws: str = test["jws"]
    alg = _header_alg(jws)
    if test["result"] == "valid" and alg in dpop.ALGORITHMS:
        assert isinstance(dpop.check_signature(jws, public, alg), bytes)
    elif test["result"] == "valid":
        with pytest.raises(dpop.InvalidDpopProof):  # RS384, ES512...: not allowed for DPoP
            dpop.check_signature(jws, public, alg)
    elif test["result"] == "invalid":
        with pytest.raises(dpop.InvalidDpopProof):
            dpop.check_signature(jws, public, alg)


def test_the_vectors_exercise_es256_and_rsa() -> None:
    algs = {_header_alg(p.values[1]["jws"]) for p in _cases() if p.values[1]["result"] == "valid"}
    assert {"ES256", "RS256", "PS256"} <= algs
