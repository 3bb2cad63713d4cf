"""Every kind of bad token on the signalling WebSocket: closed with 4401, audited with a reason,
and the node keeps serving the others."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signaling.audit import iter_entries
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER
from tests.fixtures.servers import RunningNode, close_code


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "dr-bad", "jti": str(uuid.uuid4()),
        "iat": now, "nbf": now, "exp": now + 600, "role": "chair", "dept": ["cardiology"],
        "room": ["mdt-1"], "amr": ["pwd", "otp"],
    }  # fmt: skip
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def _dev_key(node: RunningNode) -> ed25519.Ed25519PrivateKey:
    key = node.idp._signing_key
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def _signed(node: RunningNode, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(
        claims, _dev_key(node), algorithm="EdDSA", headers={"kid": kid or node.idp.kid}
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alg_none(node: RunningNode) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": node.idp.kid}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def hs256_with_public_key(node: RunningNode) -> str:
    public = (
        _dev_key(node)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": node.idp.kid}).encode())
    body = _b64(json.dumps(_claims()).encode())
    import hashlib
    import hmac

    sig = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


def tampered_payload(node: RunningNode) -> str:
    header, _, sig = _signed(node, _claims(role="trainee")).split(".")
    return f"{header}.{_b64(json.dumps(_claims(role='chair')).encode())}.{sig}"


def other_issuer_key(node: RunningNode) -> str:
    return jwt.encode(
        _claims(), ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA",
        headers={"kid": node.idp.kid},
    )  # fmt: skip


BAD_TOKENS: dict[str, Callable[[RunningNode], str]] = {
    "alg_none": alg_none,
    "hs256_with_public_key": hs256_with_public_key,
    "expired": lambda n: _signed(n, _claims(exp=int(time.time()) - 600)),
    "nbf_in_future": lambda n: _signed(n, _claims(nbf=int(time.time()) + 600)),
    "wrong_issuer": lambda n: _signed(n, _claims(iss="https://evil.example")),
    "wrong_audience": lambda n: _signed(n, _claims(aud="another-app")),
    "unknown_kid": lambda n: _signed(n, _claims(), kid="no-such-key"),
    "key_from_another_issuer": other_issuer_key,
    "tampered_payload": tampered_payload,
    "missing_jti": lambda n: _signed(n, _claims(jti=None)),
    "missing_exp": lambda n: _signed(n, _claims(exp=None)),
    "missing_sub": lambda n: _signed(n, _claims(sub=None)),
    "garbage": lambda n: "this is not a token",
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_token_is_refused_with_4401_and_audited(dev_node: RunningNode, name: str) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    ws = await dev_node.connect()
    token = BAD_TOKENS[name](dev_node)
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    assert await close_code(ws) == 4401
    refusals = [e for e in iter_entries(dev_node.data_dir / "audit", action="join_refused")]
    assert refusals and refusals[-1].reason, "the refusal and its reason are audited"
    assert token not in (dev_node.data_dir / "audit").joinpath("audit-000001.jsonl").read_text()
    # Everyone else is still served.
    await chair.send_json({"type": "ping", "id": 1})
    _, answer = await dev_node.join("dr-fine", "specialist")
    assert answer["type"] == "joined"
