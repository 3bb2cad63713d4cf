"""Sign-in at a real OpenID provider (panva's oidc-provider, tests/oidc), through a node: the
flow, the same gate as a token's afterwards, and every failure as a clear, audited answer."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest

from recorder.manifest import RecordedParticipant
from signaling import oidc
from signaling.audit import iter_entries
from signaling.http.sessions import SESSION_KEY_PREFIX
from tests.fixtures.oidc_provider import OidcProvider, browser_session, sign_in_at_provider
from tests.fixtures.recordings import record
from tests.fixtures.servers import RunningNode, close_code, free_port, node_settings, running_node

StartProvider = Callable[[str, list[str]], OidcProvider]


async def signed_in_node(
    tmp_path: Path, oidc_provider: StartProvider, profile: str = "entra", **settings: Any
) -> tuple[OidcProvider, Any]:
    """A provider, and the settings of a node signing people in there."""
    port = free_port()
    provider = oidc_provider(profile, [f"http://127.0.0.1:{port}/auth/callback"])
    confidential = settings.pop("confidential", False)
    values = provider.node_settings(confidential=confidential, secret_file=tmp_path / "secret")
    values.update(settings)
    return provider, node_settings(tmp_path / "data", port=port, media=False, **values)


@pytest.fixture
async def entra(tmp_path: Path, oidc_provider: StartProvider) -> AsyncIterator[RunningNode]:
    """A node whose people sign in at an Entra ID-shaped provider (public client, PKCE)."""
    _, settings = await signed_in_node(tmp_path, oidc_provider, "entra")
    async with running_node(settings) as node:
        yield node


def audited(node: RunningNode, action: str) -> list[dict[str, Any]]:
    """The audit entries of `action`, each flat: sub, outcome, reason and its fields."""
    return [
        {"sub": e.sub, "outcome": e.outcome, "reason": e.reason, "room": e.room, **e.fields}
        for e in iter_entries(node.data_dir / "audit", action=action)
    ]


def signin_error(response: aiohttp.ClientResponse) -> str | None:
    """The reason a failed sign-in's redirect carries in its fragment."""
    location = response.headers.get("Location", "")
    _, _, fragment = location.partition("#signin_error=")
    return unquote(fragment) if fragment else None


async def session_info(node: RunningNode, s: aiohttp.ClientSession) -> dict[str, Any]:
    async with s.get(node.url + "/auth/session") as r:
        assert r.headers["Cache-Control"] == "no-store"
        return dict(await r.json())


async def join_signed_in(
    node: RunningNode, s: aiohttp.ClientSession, room: str = "mdt-1"
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Join with an empty token: the session cookie on the upgrade stands in for it."""
    ws = await s.ws_connect(node.ws_url)
    node.sockets.append(ws)
    await ws.send_json({"type": "join", "token": "", "room": room})
    msg = await ws.receive(timeout=5.0)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        return ws, {"type": "closed", "code": int(msg.data) if msg.data else ws.close_code}
    return ws, dict(json.loads(msg.data))


async def test_a_signed_in_chair_opens_the_room_through_the_gate(entra: RunningNode) -> None:
    async with browser_session() as s:
        started = time.monotonic()
        done = await sign_in_at_provider(s, entra.url + "/auth/signin?return=/join/mdt-1", "alice")
        assert done.status == 303 and done.headers["Location"] == "/join/mdt-1"
        cookie = done.cookies[oidc.SESSION_COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
        info = await session_info(entra, s)
        assert info["signed_in"] and info["role"] == "chair" and info["dept"] == ["oncology"]
        assert info["name"] == "Dr Alice Chen" and info["provider_name"] == "Test Hospital"
        _, answer = await join_signed_in(entra, s)
        print(f"sign-in to joined (HTTP client): {time.monotonic() - started:.2f} s")
    assert answer["type"] == "joined", answer
    [entry] = audited(entra, "sign_in")
    assert entry["outcome"] == "allow" and entry["mfa"] is True
    assert entry["sub"] == info["sub"] and entry["sub"].startswith("00000000-")
    assert "Alice" not in json.dumps(entry)  # no display name in the audit log


async def test_a_chair_without_a_second_factor_is_refused_at_the_gate(entra: RunningNode) -> None:
    async with browser_session() as s:
        await sign_in_at_provider(s, entra.url + "/auth/signin?return=/join/mdt-1", "carol")
        assert (await session_info(entra, s))["signed_in"]
        _, answer = await join_signed_in(entra, s)
    assert answer == {"type": "closed", "code": 4403}
    assert any(
        e.get("reason", "").startswith("mfa_required") for e in audited(entra, "join_refused")
    )


async def test_no_session_and_no_token_is_not_authenticated(entra: RunningNode) -> None:
    async with browser_session() as s:
        assert (await session_info(entra, s))["signed_in"] is False
        _, answer = await join_signed_in(entra, s)
    assert answer == {"type": "closed", "code": 4401}


async def test_keycloak_confidential_client_maps_realm_roles_department_and_acr(
    tmp_path: Path, oidc_provider: StartProvider
) -> None:
    _, settings = await signed_in_node(tmp_path, oidc_provider, "keycloak", confidential=True)
    async with running_node(settings) as node:
        async with browser_session() as s:
            await sign_in_at_provider(s, node.url + "/auth/signin?return=/join/mdt-2", "bob")
            info = await session_info(node, s)
            assert (info["sub"], info["role"], info["dept"]) == ("bob", "specialist", ["oncology"])
            # A specialist waits for the chair (acr 2 counted as the second factor: not refused).
            _, answer = await join_signed_in(node, s, "mdt-2")
            assert answer["type"] != "closed", answer
        async with browser_session() as s:
            await sign_in_at_provider(s, node.url + "/auth/signin?return=/join/mdt-2", "alice")
            _, answer = await join_signed_in(node, s, "mdt-2")
            assert answer["type"] == "joined", answer


async def test_a_person_without_a_consilium_role_gets_a_clear_refusal(entra: RunningNode) -> None:
    async with browser_session() as s:
        done = await sign_in_at_provider(s, entra.url + "/auth/signin?return=/join/mdt-1", "dave")
        assert done.status == 303
        assert done.headers["Location"] == "/join/mdt-1#signin_error=missing_claim"
        assert (await session_info(entra, s))["signed_in"] is False
    [entry] = audited(entra, "sign_in_refused")
    assert entry["reason"] == "missing_claim" and entry["claim"] == "roles"


async def test_a_callback_with_a_wrong_state_is_refused(entra: RunningNode) -> None:
    async with browser_session() as s:
        url = entra.url + "/auth/callback?state=forged&code=anything"
        async with s.get(url, allow_redirects=False) as r:
            assert r.status == 303 and signin_error(r) == "bad_state"
            assert oidc.SESSION_COOKIE not in r.cookies
        async with s.get(url, headers={"Accept": "application/json"}) as r:
            assert r.status == 401
            assert await r.json() == {
                "error": "sign_in_failed",
                "message": "this sign-in is unknown, expired or already used",
                "reason": "bad_state",
            }
    assert [e["reason"] for e in audited(entra, "sign_in_refused")] == ["bad_state", "bad_state"]


async def test_a_replayed_callback_gives_no_second_session(entra: RunningNode) -> None:
    async with browser_session() as s:
        to_callback = await sign_in_at_provider(
            s, entra.url + "/auth/signin?return=/join/mdt-1", "alice", follow_callback=False
        )
        callback = str(to_callback.url.join(aiohttp.client.URL(to_callback.headers["Location"])))
        async with s.get(callback, allow_redirects=False) as first:
            assert first.status == 303 and signin_error(first) is None
    async with browser_session() as attacker:
        async with attacker.get(callback, allow_redirects=False) as again:
            assert signin_error(again) == "bad_state"
        assert (await session_info(entra, attacker))["signed_in"] is False
    assert len(audited(entra, "sign_in")) == 1


async def test_a_callback_opened_in_another_browser_is_refused(entra: RunningNode) -> None:
    """Login CSRF: someone's callback URL (their code) opened in a victim's browser does not
    sign the victim in as them."""
    async with browser_session() as attacker:
        to_callback = await sign_in_at_provider(
            attacker, entra.url + "/auth/signin?return=/join/mdt-1", "bob", follow_callback=False
        )
        callback = str(to_callback.url.join(aiohttp.client.URL(to_callback.headers["Location"])))
    async with browser_session() as victim:
        async with victim.get(callback, allow_redirects=False) as r:
            assert signin_error(r) == "other_browser"
            assert oidc.SESSION_COOKIE not in r.cookies
        assert (await session_info(entra, victim))["signed_in"] is False
    assert audited(entra, "sign_in") == []


async def test_a_session_is_seen_by_every_node_sharing_redis(
    tmp_path: Path, oidc_provider: StartProvider, redis_url: str
) -> None:
    _, settings_a = await signed_in_node(tmp_path, oidc_provider, "entra", redis=redis_url)
    settings_b = node_settings(
        tmp_path / "data-b", media=False, redis=redis_url,
        **{k: getattr(settings_a, k) for k in (
            "oidc_signin_issuer", "oidc_client_id", "oidc_claims", "oidc_role_map",
        )},
    )  # fmt: skip
    async with running_node(settings_a) as a, running_node(settings_b) as b:
        async with browser_session() as s:
            await sign_in_at_provider(s, a.url + "/auth/signin?return=/join/mdt-1", "alice")
            # The cookie is for 127.0.0.1 (any port), as a load balancer's one name would be.
            info = await session_info(b, s)
            assert info["signed_in"] and info["role"] == "chair"
            _, answer = await join_signed_in(b, s)
            assert answer["type"] == "joined", answer
            async with s.post(b.url + "/auth/signout") as r:
                assert (await r.json())["signed_out"] is True
            assert (await session_info(a, s))["signed_in"] is False


async def test_a_tampered_id_token_is_refused(tmp_path: Path, oidc_provider: StartProvider) -> None:
    provider, settings = await signed_in_node(tmp_path, oidc_provider, "entra")
    async with running_node(settings) as node, browser_session() as s:
        await provider.tamper_id_tokens(True)
        done = await sign_in_at_provider(s, node.url + "/auth/signin?return=/join/mdt-1", "bob")
        assert signin_error(done) == "id_token_bad_signature"
        assert (await session_info(node, s))["signed_in"] is False


async def test_an_unreachable_provider_is_a_clear_error_not_a_500(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path / "data", media=False, oidc_client_id="consilium-public",
        oidc_signin_issuer=f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    async with running_node(settings) as node, browser_session() as s:
        url = node.url + "/auth/signin?return=/join/mdt-1"
        async with s.get(url, allow_redirects=False) as r:
            assert r.status == 303 and signin_error(r) == "idp_unreachable"
            assert r.headers["Location"].startswith("/join/mdt-1#")
        async with s.get(url, headers={"Accept": "application/json"}) as r:
            assert r.status == 503 and (await r.json())["reason"] == "idp_unreachable"
    assert audited(node, "sign_in_refused")[0]["reason"] == "idp_unreachable"


async def test_an_expired_session_no_longer_joins(entra: RunningNode) -> None:
    assert entra.node is not None
    store = entra.node.store
    async with browser_session() as s:
        await sign_in_at_provider(s, entra.url + "/auth/signin?return=/join/mdt-1", "alice")
        [(key, session)] = await stored_sessions(entra, s)
        session["expires_at"] = time.time() - 1
        await store.put_expiring(key, session, 60)
        assert (await session_info(entra, s))["signed_in"] is False
        _, answer = await join_signed_in(entra, s)
    assert answer == {"type": "closed", "code": 4401}


async def stored_sessions(
    node: RunningNode, s: aiohttp.ClientSession
) -> list[tuple[str, dict[str, Any]]]:
    """The stored session this client's cookie names."""
    from signaling.http.sessions import session_id_of

    assert node.node is not None
    secret = next(c.value for c in s.cookie_jar if c.key == oidc.SESSION_COOKIE)
    key = SESSION_KEY_PREFIX + session_id_of(secret)
    stored = await node.node.store.get_expiring(key)
    return [] if stored is None else [(key, stored)]


async def test_revoking_the_subject_ends_the_session_and_its_connection(
    entra: RunningNode,
) -> None:
    async with browser_session() as s:
        await sign_in_at_provider(s, entra.url + "/auth/signin?return=/join/mdt-1", "alice")
        sub = (await session_info(entra, s))["sub"]
        ws, answer = await join_signed_in(entra, s)
        assert answer["type"] == "joined"
        admin = await entra.session()
        token = entra.token("admin-1", "admin", rooms=[])
        async with admin.post(
            entra.url + "/api/revocations", json={"sub": sub, "reason": "left the hospital"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:  # fmt: skip
            assert r.status == 201, await r.text()
        assert await close_code(ws, timeout=10) == 4401
        assert (await session_info(entra, s))["signed_in"] is False
        _, again = await join_signed_in(entra, s)
        assert again == {"type": "closed", "code": 4401}
        # Signing in again does not get round it.
        done = await sign_in_at_provider(s, entra.url + "/auth/signin?return=/join/mdt-1", "alice")
        assert signin_error(done) == "revoked_sub"


async def test_sign_out_ends_the_session(entra: RunningNode) -> None:
    async with browser_session() as s:
        await sign_in_at_provider(s, entra.url + "/auth/signin?return=/join/mdt-1", "alice")
        async with s.post(entra.url + "/auth/signout") as r:
            body = await r.json()
        assert body["signed_out"] is True
        assert body["logout_url"].startswith(entra.node.settings.signin_issuer + "/session/end")  # type: ignore[union-attr]
        assert (await session_info(entra, s))["signed_in"] is False
    assert len(audited(entra, "sign_out")) == 1


ONCOLOGIST = RecordedParticipant("p-onc", "dr-onc", "Dr Onc", "specialist", ["oncology"])


async def test_playing_a_recording_needs_a_recent_sign_in_rfc9470(entra: RunningNode) -> None:
    assert entra.node is not None
    keyring = entra.node.room_keys.keyring
    record(
        entra.data_dir / "recordings", "rec-1", keyring.create("rec-1"), entra.node.audit_key,
        seconds=3.0, participants=(ONCOLOGIST,),
    )  # fmt: skip
    path = entra.url + "/api/recordings/rec-1/media"
    max_age = entra.node.settings.step_up_max_age_min * 60
    async with browser_session() as s:
        await sign_in_at_provider(s, entra.url + "/auth/signin?return=/archive", "erin")
        async with s.get(entra.url + "/api/recordings/rec-1") as r:
            assert r.status == 200, await r.text()  # listing needs no step-up
        async with s.get(path) as r:
            assert r.status == 200, await r.text()  # just signed in: recent enough
        [(key, session)] = await stored_sessions(entra, s)
        session["auth_time"] = time.time() - max_age - 60
        await entra.node.store.put_expiring(key, session, 600)
        async with s.get(path) as r:
            assert r.status == 401
            challenge = r.headers["WWW-Authenticate"]
            body = await r.json()
        assert challenge.startswith('Bearer error="insufficient_user_authentication"')
        assert challenge.endswith(f"max_age={max_age}")
        assert body["error"] == "insufficient_user_authentication" and body["max_age"] == max_age
        # The web client's re-prompt: sign in again asking the provider for max_age.
        async with s.get(
            entra.url + f"/auth/signin?return=/archive&max_age={max_age}", allow_redirects=False
        ) as r:
            assert f"max_age={max_age}" in r.headers["Location"]
        done = await sign_in_at_provider(
            s, entra.url + f"/auth/signin?return=/archive&max_age={max_age}", "erin"
        )
        assert done.headers["Location"] == "/archive"
        async with s.get(path) as r:
            assert r.status == 200
    refused = [e for e in audited(entra, "api_refused") if e["reason"] == oidc.STEP_UP_ERROR]
    assert len(refused) == 1
    assert [e["step_up"] for e in audited(entra, "sign_in")] == [False, True]


async def test_a_bearer_token_still_plays_recordings_without_step_up(entra: RunningNode) -> None:
    assert entra.node is not None
    keyring = entra.node.room_keys.keyring
    record(
        entra.data_dir / "recordings", "rec-2", keyring.create("rec-2"), entra.node.audit_key,
        seconds=3.0, participants=(ONCOLOGIST,),
    )  # fmt: skip
    token = entra.token("arch-1", "archivist", rooms=[], depts=["oncology"])
    s = await entra.session()
    async with s.get(
        entra.url + "/api/recordings/rec-2/media", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200


async def _callback_of(s: aiohttp.ClientSession, node: RunningNode, login: str) -> str:
    to_callback = await sign_in_at_provider(
        s, node.url + "/auth/signin?return=/join/mdt-1", login, follow_callback=False
    )
    return str(to_callback.url.join(aiohttp.client.URL(to_callback.headers["Location"])))


async def test_a_callback_opened_again_in_its_own_browser_goes_on_to_the_room(
    entra: RunningNode,
) -> None:
    async with browser_session() as s:
        callback = await _callback_of(s, entra, "alice")
        async with s.get(callback, allow_redirects=False) as first:
            assert first.status == 303 and first.headers["Location"] == "/join/mdt-1"
        # A reload of the callback, the back button: on to the room, no second session.
        async with s.get(callback, allow_redirects=False) as again:
            assert again.status == 303 and again.headers["Location"] == "/join/mdt-1"
            assert oidc.SESSION_COOKIE not in again.cookies
        assert (await session_info(entra, s))["signed_in"] is True
    assert len(audited(entra, "sign_in")) == 1


async def test_a_callback_whose_answer_the_browser_dropped_signs_in_afresh(
    entra: RunningNode,
) -> None:
    """The person reloads while the callback is being answered: the browser drops that answer
    (and its session cookie). The reload's callback, its state used, starts the sign-in again
    (the provider knows the person: no second login) instead of an error."""
    async with browser_session() as s:
        callback = await _callback_of(s, entra, "alice")
        cookies = s.cookie_jar.filter_cookies(aiohttp.client.URL(callback))
        header = "; ".join(f"{k}={m.value}" for k, m in cookies.items())
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as dropped:
            async with dropped.get(
                callback, headers={"Cookie": header}, allow_redirects=False
            ) as lost:
                assert lost.status == 303 and lost.headers["Location"] == "/join/mdt-1"
        async with s.get(callback, allow_redirects=False) as reload:
            assert reload.status == 303
            restart = reload.headers["Location"]
        assert restart == "/auth/signin?return=%2Fjoin%2Fmdt-1"
        assert (await session_info(entra, s))["signed_in"] is False
        done = await sign_in_at_provider(s, entra.url + restart, "alice")
        assert done.status == 303 and done.headers["Location"] == "/join/mdt-1"
        assert (await session_info(entra, s))["signed_in"] is True
    # A stranger with the same URL gets nothing from it.
    async with browser_session() as stranger:
        async with stranger.get(callback, allow_redirects=False) as r:
            assert signin_error(r) == "bad_state"
    assert len(audited(entra, "sign_in")) == 2
