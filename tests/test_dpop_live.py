"""Device binding (DPoP, RFC 9449) through a running node and a real OpenID provider (panva's
oidc-provider, tests/oidc): a session or token bound to a device's key is honoured only with that
key's fresh proof, on the API and at the join; a stolen cookie or token alone is refused, with a
clear, audited answer."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from signaling import dpop
from tests.fixtures.oidc_provider import OidcProvider, browser_session, sign_in_at_provider
from tests.fixtures.servers import RunningNode, free_port, node_settings, running_node
from tests.test_signin import (
    StartProvider,
    audited,
    session_info,
    signed_in_node,
    signin_error,
    stored_sessions,
)

ADMISSION = "/api/rooms/mdt-1/admission"


class Device:
    """A client holding a P-256 key, making proofs as the web client does."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jkt = dpop.jwk_thumbprint(public)

    def proof(self, method: str, url: str, token: str | None = None, **claims: Any) -> str:
        made = dpop.make_proof(
            self.key, method=method, url=url, now=time.time(), jti=secrets.token_urlsafe(16),
            access_token=token,
        )  # fmt: skip
        if not claims:
            return made
        body = {**jwt.decode(made, options={"verify_signature": False}), **claims}
        header = jwt.get_unverified_header(made)
        return jwt.encode(body, self.key, algorithm="ES256", headers=header)


async def join(
    node: RunningNode, s: aiohttp.ClientSession, token: str = "", proof: str = ""
) -> dict[str, Any]:
    """Send `join` (with its `dpop` field when given); the answer or the close code and reason."""
    ws = await s.ws_connect(node.ws_url)
    node.sockets.append(ws)
    message: dict[str, Any] = {"type": "join", "token": token, "room": "mdt-1"}
    if proof:
        message["dpop"] = proof
    await ws.send_json(message)
    msg = await ws.receive(timeout=5.0)
    if msg.type is aiohttp.WSMsgType.TEXT:
        return dict(json.loads(msg.data))
    return {"type": "closed", "code": int(msg.data), "reason": msg.extra}


async def resume(
    node: RunningNode, s: aiohttp.ClientSession, joined: dict[str, Any], proof: str = ""
) -> dict[str, Any]:
    """Take over the signed-in participant `joined` on a new socket (`resume`, empty token)."""
    ws = await s.ws_connect(node.ws_url)
    node.sockets.append(ws)
    await ws.send_json({
        "type": "resume", "token": "", "participant_id": joined["participant_id"],
        "resume_token": joined["resume_token"], "last_seq": 0, "dpop": proof,
    })  # fmt: skip
    msg = await ws.receive(timeout=5.0)
    if msg.type is aiohttp.WSMsgType.TEXT:
        return dict(json.loads(msg.data))
    return {"type": "closed", "code": int(msg.data), "reason": msg.extra}


async def api(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    async with s.get(url, headers=headers or {}) as r:
        return r.status, dict(await r.json()), r.headers.get("WWW-Authenticate", "")


@pytest.fixture
async def entra(tmp_path: Path, oidc_provider: StartProvider) -> Any:
    provider, settings = await signed_in_node(tmp_path, oidc_provider, "entra")
    async with running_node(settings) as node:
        yield provider, node


async def test_a_bound_session_needs_the_devices_proof_and_a_stolen_cookie_is_refused(
    entra: tuple[OidcProvider, RunningNode],
) -> None:
    _, node = entra
    device, thief = Device(), Device()
    url = node.url + ADMISSION
    async with browser_session() as s:
        start = node.url + f"/auth/signin?return=/join/mdt-1&dpop_jkt={device.jkt}"
        done = await sign_in_at_provider(s, start, "alice")
        assert done.status == 303 and signin_error(done) is None
        [(_, stored)] = await stored_sessions(node, s)
        assert stored["dpop_jkt"] == device.jkt
        info_url = node.url + "/auth/session"
        async with s.get(info_url, headers={"DPoP": device.proof("GET", info_url)}) as r:
            assert (await r.json())["signed_in"] is True
        cookie = next(c.value for c in s.cookie_jar if c.key == "consilium_session")

        # The device: each call with a fresh proof by its key.
        status, body, _ = await api(s, url, {"DPoP": device.proof("GET", url)})
        assert (status, body) == (200, {"allowed": True})
        # The same proof again (a captured request replayed): refused.
        replayed = device.proof("GET", url)
        assert (await api(s, url, {"DPoP": replayed}))[0] == 200
        status, body, challenge = await api(s, url, {"DPoP": replayed})
        assert status == 401 and body["reason"] == "replayed"
        assert challenge.startswith('DPoP error="invalid_dpop_proof"')
        assert 'algs="ES256' in challenge
        # A proof for another request, or with a stale iat: refused.
        other = node.url + "/api/rooms/mdt-2/admission"
        assert (await api(s, url, {"DPoP": device.proof("GET", other)}))[1]["reason"] == "wrong_htu"
        assert (await api(s, url, {"DPoP": device.proof("POST", url)}))[1]["reason"] == "wrong_htm"
        stale = device.proof("GET", url, iat=int(time.time()) - 600)
        assert (await api(s, url, {"DPoP": stale}))[1]["reason"] == "stale"
        # The join: the proof in the join message (a browser cannot set the upgrade's headers).
        joined = await join(node, s, proof=device.proof("GET", node.ws_url))
        assert joined["type"] == "joined", joined

    # The cookie copied to another machine, with no key or with the thief's own key: not even
    # who is signed in is told.
    async with aiohttp.ClientSession(headers={"Cookie": f"consilium_session={cookie}"}) as stolen:
        assert (await session_info(node, stolen))["signed_in"] is False
        status, body, challenge = await api(stolen, url)
        assert status == 401 and body["reason"] == "missing"
        assert challenge.startswith('DPoP error="invalid_dpop_proof"')
        status, body, _ = await api(stolen, url, {"DPoP": thief.proof("GET", url)})
        assert status == 401 and body["reason"] == "wrong_key"
        refused = await join(node, stolen)
        assert refused == {"type": "closed", "code": 4401, "reason": "invalid_dpop_proof: missing"}
        refused = await join(node, stolen, proof=thief.proof("GET", node.ws_url))
        assert refused["code"] == 4401 and refused["reason"].endswith("wrong_key")
        # Nor can it take over the device's participant with a resume (the resume token too).
        refused = await resume(node, stolen, joined)
        assert refused == {"type": "closed", "code": 4401, "reason": "invalid_dpop_proof: missing"}
    # The device itself resumes with a fresh proof.
    async with browser_session() as s2:
        s2.cookie_jar.update_cookies({"consilium_session": cookie})
        resumed = await resume(node, s2, joined, device.proof("GET", node.ws_url))
        assert resumed["type"] == "resumed", resumed

    # The node redeemed the code with DPoP at the provider (its own key, nonce answered): the
    # provider requires it of this client, and bound the access token it issued.
    [signed_in] = audited(node, "sign_in")
    assert signed_in["device_bound"] is True and signed_in["idp_dpop"] is True
    reasons = [e["reason"] for e in audited(node, "api_refused")]
    assert reasons == [
        "dpop_replayed", "dpop_wrong_htu", "dpop_wrong_htm", "dpop_stale",
        "dpop_missing",  # /auth/session asked with the copied cookie
        "dpop_missing", "dpop_wrong_key",
    ]  # fmt: skip
    dpop_joins = [e["reason"] for e in audited(node, "join_refused") if "dpop" in e["reason"]]
    assert dpop_joins == ["dpop_missing", "dpop_wrong_key", "dpop_missing"]


async def test_an_unbound_session_still_works_unless_dpop_is_required(
    tmp_path: Path, oidc_provider: StartProvider
) -> None:
    _, settings = await signed_in_node(tmp_path, oidc_provider, "entra", dpop_required=True)
    async with running_node(settings) as node, browser_session() as s:
        start = node.url + "/auth/signin?return=/join/mdt-1"
        async with s.get(start, allow_redirects=False) as r:
            assert r.status == 303 and signin_error(r) == "dpop_required"
        assert (await session_info(node, s))["signed_in"] is False
        async with s.get(start + "&dpop_jkt=not-a-thumbprint", allow_redirects=False) as r:
            assert r.headers["Location"] == "/join/mdt-1#signin_error=bad_dpop_jkt"
        # Unbound tokens are refused too, on the API and at the join.
        token = node.token("dr-b", "specialist", rooms=["mdt-1"])
        status, body, challenge = await api(
            s, node.url + ADMISSION, {"Authorization": f"Bearer {token}"}
        )
        assert status == 401 and body["reason"] == "dpop_required"
        assert challenge.startswith('DPoP error="invalid_token"')
        refused = await join(node, s, token)
        assert refused["code"] == 4401 and refused["reason"].endswith("dpop_required")
        # A bound sign-in goes through.
        device = Device()
        start = node.url + f"/auth/signin?return=/join/mdt-1&dpop_jkt={device.jkt}"
        assert signin_error(await sign_in_at_provider(s, start, "alice")) is None
        joined = await join(node, s, proof=device.proof("GET", node.ws_url))
        assert joined["type"] == "joined", joined
    assert [e["reason"] for e in audited(node, "sign_in_refused")] == [
        "dpop_required", "bad_dpop_jkt",
    ]  # fmt: skip


async def test_a_dpop_bound_token_needs_its_keys_proof(
    entra: tuple[OidcProvider, RunningNode],
) -> None:
    _, node = entra
    device, thief = Device(), Device()
    url = node.url + ADMISSION
    token = node.idp.mint(
        sub="dr-bound", role="chair", depts=["cardiology"], rooms=["mdt-1"],
        name="Dr Bound", extra={"cnf": {"jkt": device.jkt}},
    )  # fmt: skip
    s = await node.session()
    bound = {"Authorization": f"DPoP {token}"}
    status, _, _ = await api(s, url, {**bound, "DPoP": device.proof("GET", url, token)})
    assert status == 200
    # Stolen token: as a bearer token, with no proof, with a proof without ath, or by another key.
    status, body, challenge = await api(s, url, {"Authorization": f"Bearer {token}"})
    assert status == 401 and body["reason"] == "bound_token_as_bearer"
    assert challenge.startswith('DPoP error="invalid_token"')
    assert (await api(s, url, bound))[1]["reason"] == "missing"
    assert (await api(s, url, {**bound, "DPoP": device.proof("GET", url)}))[1]["reason"] == (
        "wrong_ath"
    )
    status, body, _ = await api(s, url, {**bound, "DPoP": thief.proof("GET", url, token)})
    assert (status, body["reason"]) == (401, "wrong_key")
    # An unbound token under the DPoP scheme is refused; as a bearer token it works as before.
    plain = node.token("dr-plain", "specialist", rooms=["mdt-1"])
    status, body, _ = await api(
        s, url, {"Authorization": f"DPoP {plain}", "DPoP": device.proof("GET", url, plain)}
    )
    assert (status, body["reason"]) == (401, "token_not_bound")
    assert (await api(s, url, {"Authorization": f"Bearer {plain}"}))[0] == 200
    # The join: the token in `join`, its proof (with ath) in `dpop`.
    assert (await join(node, s, token))["code"] == 4401
    refused = await join(node, s, token, thief.proof("GET", node.ws_url, token))
    assert refused["reason"] == "invalid_dpop_proof: wrong_key"
    joined = await join(node, s, token, device.proof("GET", node.ws_url, token))
    assert joined["type"] == "joined", joined


async def test_a_proof_may_name_the_public_url_or_the_address_the_request_came_to(
    tmp_path: Path,
) -> None:
    """Behind a proxy the browser's URL is `public_url`; reached directly, the node's address:
    either is the request's URL. Any other host is not."""
    port = free_port()
    settings = node_settings(
        tmp_path / "data", port=port, media=False, public_url=f"http://localhost:{port}"
    )
    device = Device()
    async with running_node(settings) as node:
        token = node.idp.mint(
            sub="dr-bound", role="chair", depts=["cardiology"], rooms=["mdt-1"],
            extra={"cnf": {"jkt": device.jkt}},
        )  # fmt: skip
        s = await node.session()
        bound = {"Authorization": f"DPoP {token}"}
        reached = node.url + ADMISSION  # http://127.0.0.1:<port>/...
        public = f"http://localhost:{port}{ADMISSION}"
        for htu in (reached, public):
            status, _, _ = await api(s, reached, {**bound, "DPoP": device.proof("GET", htu, token)})
            assert status == 200, htu
        other = f"http://elsewhere.example:{port}{ADMISSION}"
        elsewhere = {**bound, "DPoP": device.proof("GET", other, token)}
        status, body, _ = await api(s, reached, elsewhere)
        assert (status, body["reason"]) == (401, "wrong_htu")
        joined = await join(node, s, token, device.proof("GET", f"ws://localhost:{port}/ws", token))
        assert joined["type"] == "joined", joined
