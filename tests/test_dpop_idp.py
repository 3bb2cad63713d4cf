"""An identity provider's DPoP-bound access token (RFC 9449), end to end: a device signs in at
the real oidc-provider (tests/oidc) with its key's thumbprint in the authorization request
(`dpop_jkt`, section 10), redeems the code with a proof (answering the provider's nonce), and
gets a JWT access token for Consilium carrying `cnf.jkt`. Consilium accepts that token only with
`Authorization: DPoP` and a proof by the same key; the stolen token, or the stolen code, is
useless without it."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt

from signaling import dpop
from tests.fixtures.oidc_provider import OidcProvider, browser_session, sign_in_at_provider
from tests.fixtures.servers import free_port, node_settings, running_node
from tests.test_dpop_live import ADMISSION, Device, api, join
from tests.test_signin import StartProvider

DEVICE_CLIENT = "consilium-device"
RESOURCE = "urn:consilium"


async def device_code(
    s: aiohttp.ClientSession, provider: OidcProvider, redirect: str, device: Device
) -> tuple[str, str]:
    """Sign in as alice at the provider for the device client; the code and PKCE verifier."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = {
        "client_id": DEVICE_CLIENT, "response_type": "code", "redirect_uri": redirect,
        "scope": "openid mdt", "resource": RESOURCE, "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16), "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256", "dpop_jkt": device.jkt,
    }  # fmt: skip
    start = f"{provider.issuer}/auth?{urlencode(query)}"
    back = await sign_in_at_provider(s, start, "alice", follow_callback=False)
    location = back.headers["Location"]
    return parse_qs(urlsplit(location).query)["code"][0], verifier


async def redeem(
    s: aiohttp.ClientSession, provider: OidcProvider, redirect: str, code: str, verifier: str,
    device: Device,
) -> dict[str, Any]:  # fmt: skip
    """The token endpoint's answer to the code with the device's proof (nonce answered once)."""
    url = f"{provider.issuer}/token"
    form = {
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
        "code_verifier": verifier, "client_id": DEVICE_CLIENT, "resource": RESOURCE,
    }  # fmt: skip
    nonce: str | None = None
    for _ in range(2):
        proof = dpop.make_proof(
            device.key, method="POST", url=url, now=time.time(),
            jti=secrets.token_urlsafe(16), nonce=nonce,
        )  # fmt: skip
        async with s.post(url, data=form, headers={"DPoP": proof}) as r:
            body = dict(await r.json())
            nonce = r.headers.get("DPoP-Nonce")
        if body.get("error") != "use_dpop_nonce":
            return body
    return body


async def test_the_providers_dpop_bound_access_token_needs_the_devices_key(
    tmp_path: Path, oidc_provider: StartProvider
) -> None:
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/auth/callback"
    provider = oidc_provider("entra", [redirect])
    settings = node_settings(
        tmp_path / "data", port=port, media=False, oidc_issuer=provider.issuer,
        jwt_audience=RESOURCE,
    )  # fmt: skip
    device, thief = Device(), Device()
    async with running_node(settings) as node, browser_session() as s:
        # A code bound to the device's key (dpop_jkt) cannot be redeemed with another key.
        code, verifier = await device_code(s, provider, redirect, device)
        stolen = await redeem(s, provider, redirect, code, verifier, thief)
        assert stolen["error"] == "invalid_grant", stolen
        code, verifier = await device_code(s, provider, redirect, device)
        answer = await redeem(s, provider, redirect, code, verifier, device)
        assert answer.get("token_type") == "DPoP", answer
        token = answer["access_token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["cnf"] == {"jkt": device.jkt} and claims["aud"] == RESOURCE
        assert claims["role"] == "chair"

        url = node.url + ADMISSION
        bound = {"Authorization": f"DPoP {token}"}
        status, body, _ = await api(s, url, {**bound, "DPoP": device.proof("GET", url, token)})
        assert (status, body) == (200, {"allowed": True})
        # The token alone, as a bearer token or with another key's proof: refused.
        status, body, challenge = await api(s, url, {"Authorization": f"Bearer {token}"})
        assert (status, body["reason"]) == (401, "bound_token_as_bearer")
        assert challenge.startswith('DPoP error="invalid_token"')
        status, body, _ = await api(s, url, {**bound, "DPoP": thief.proof("GET", url, token)})
        assert (status, body["reason"]) == (401, "wrong_key")
        # The join: the token in `join` and the device's proof in `dpop`.
        assert (await join(node, s, token))["reason"] == "invalid_dpop_proof: missing"
        joined = await join(node, s, token, device.proof("GET", node.ws_url, token))
        assert joined["type"] == "joined", joined
