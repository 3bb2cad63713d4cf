"""The web client's sign-in in a real Chromium: a person with no link and no token opens
/join/<room>, signs in at a real OpenID provider (panva's oidc-provider, Entra ID-shaped
claims), and is in the room; in Chinese as in English; sign-out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from signaling.audit import iter_entries
from signaling.http.sessions import SESSION_KEY_PREFIX, session_id_of
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    BrowserTab,
    OpenTab,
    join_from_the_prejoin_screen,
    no_page_problems,
    page_state,
    screenshot,
)
from tests.fixtures.oidc_provider import PASSWORD, OidcProvider, node_signing_in_at
from tests.fixtures.recordings import record
from tests.fixtures.servers import (
    ServeProcess,
    eventually,
    free_port,
)
from tests.test_signin import ONCOLOGIST


def signed_in_serve(serve_process: Any, oidc_provider: Any) -> tuple[ServeProcess, OidcProvider]:
    """A `consilium serve` whose people sign in at an Entra ID-shaped provider."""
    port = free_port()
    provider = oidc_provider("entra", [f"http://127.0.0.1:{port}/auth/callback"])
    env = {
        **ICE_ENV,
        **{f"CONSILIUM_{k.upper()}": str(v) for k, v in provider.node_settings().items()},
    }
    return serve_process(env=env, port=port), provider


async def sign_in_at_the_provider(tab: BrowserTab, login: str) -> None:
    """Press "Sign in with ..." and fill the provider's login form."""
    await tab.until("window.consilium.state().screen === 'signin'")
    await tab.page.click("#signin-link")
    await tab.page.wait_for_selector("#login")
    await tab.page.fill("#login", login)
    await tab.page.fill("#password", PASSWORD)
    await tab.page.click("#submit")
    # Back from the provider at the room's page (a failed sign-in carries its reason after #).
    await tab.page.wait_for_url(f"**/join/{ROOM}**", timeout=15_000)
    await tab.page.wait_for_load_state()
    await tab.until("window.consilium !== undefined")


async def test_a_person_with_no_link_signs_in_and_is_in_the_room(
    serve_process: Any, oidc_provider: Any, chromium: OpenTab
) -> None:
    serve, provider = signed_in_serve(serve_process, oidc_provider)
    started = time.monotonic()
    tab = await chromium(f"{serve.url}/join/{ROOM}")
    await tab.until("window.consilium.state().screen === 'signin'")
    link = tab.page.locator("#signin-link")
    assert await link.inner_text() == "Sign in with Test Hospital"
    await screenshot(tab, "signin")
    await sign_in_at_the_provider(tab, "alice")
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'", timeout_s=20)
    elapsed = time.monotonic() - started
    print(f"\nopened /join/{ROOM} with no link -> in the room: {elapsed:.2f} s (aim: < 5 s)")
    state = await page_state(tab)
    assert state["signedIn"] is True
    assert state["claims"]["role"] == "chair" and state["claims"]["name"] == "Dr Alice Chen"
    # The session is an HttpOnly cookie: the page cannot read it.
    assert "consilium_session" not in await tab.page.evaluate("document.cookie")
    cookies = {c["name"]: c for c in await tab.context.cookies()}
    assert (
        cookies["consilium_session"]["httpOnly"]
        and cookies["consilium_session"]["sameSite"] == "Lax"
    )
    no_page_problems(tab)
    # Sign out: the session ends here, and the browser goes on to the provider's logout.
    assert await tab.page.locator("#signout-button").is_visible()
    await tab.page.click("#signout-button")
    await tab.page.wait_for_url(f"{provider.issuer}/session/end**", timeout=15_000)
    assert "consilium_session" not in {c["name"] for c in await tab.context.cookies(serve.url)}
    await tab.page.goto(f"{serve.url}/auth/session")
    assert '"signed_in": false' in await tab.page.inner_text("body")


async def test_the_sign_in_screen_in_chinese_and_its_error_words(
    serve_process: Any, oidc_provider: Any, chromium: OpenTab
) -> None:
    serve, _ = signed_in_serve(serve_process, oidc_provider)
    tab = await chromium(f"{serve.url}/join/{ROOM}", locale="zh-CN")
    await tab.until("window.consilium.state().screen === 'signin'")
    assert await tab.page.locator("#signin-link").inner_text() == "使用Test Hospital登录"
    await screenshot(tab, "signin-zh-CN")
    # A person whose account gives no role comes back with the reason in their language.
    await sign_in_at_the_provider(tab, "dave")
    await tab.until("document.getElementById('screen-signin').dataset.error === 'missing_claim'")
    problem = await tab.page.locator("#signin-error").inner_text()
    assert "没有角色" in problem
    assert (await page_state(tab))["screen"] == "signin"


async def test_the_archive_asks_for_a_recent_sign_in_and_returns_to_the_recording(
    tmp_path: Path, oidc_provider: Any, chromium: OpenTab
) -> None:
    """RFC 9470 step-up in the archive page: an archivist signed in long ago opens a recording;
    the page signs them in again with max_age and reopens that recording."""
    async with node_signing_in_at(oidc_provider, tmp_path) as node:
        assert node.node is not None
        keyring = node.node.room_keys.keyring
        record(
            node.data_dir / "recordings", "rec-1", keyring.create("rec-1"), node.node.audit_key,
            seconds=3.0, participants=(ONCOLOGIST,),
        )  # fmt: skip
        tab = await chromium(f"{node.url}/archive", viewport=(1280, 900))
        # No link: the archive sends the archivist to the provider at once.
        await tab.page.wait_for_selector("#login", timeout=15_000)
        await tab.page.fill("#login", "erin")
        await tab.page.fill("#password", PASSWORD)
        await tab.page.click("#submit")
        await tab.page.wait_for_url(f"{node.url}/archive", timeout=15_000)
        await tab.until("window.consiliumArchive?.state().recordings.length === 1")
        # The sign-in is now older than step_up_max_age_min.
        secret = next(
            c["value"] for c in await tab.context.cookies() if c["name"] == "consilium_session"
        )
        key = SESSION_KEY_PREFIX + session_id_of(secret)
        session = await node.node.store.get_expiring(key)
        assert session is not None
        session["auth_time"] = time.time() - node.node.settings.step_up_max_age_min * 60 - 60
        await node.node.store.put_expiring(key, session, 600)
        requests: list[str] = []
        tab.page.on("request", lambda request: requests.append(request.url))
        await tab.page.locator("tr[data-recording-id='rec-1'] button").click()

        # Asked again (the provider's own session is recent: no password this time), and back.
        def back_at_the_archive_after_step_up() -> bool:
            asked = [i for i, u in enumerate(requests) if "/auth/signin?" in u and "max_age=" in u]
            return bool(asked) and f"{node.url}/archive" in requests[asked[0] :]

        await eventually(back_at_the_archive_after_step_up, 15)
        await tab.page.wait_for_url(f"{node.url}/archive", timeout=15_000)
        await tab.page.wait_for_load_state()
        await tab.until("window.consiliumArchive?.state().selected === 'rec-1'", 15)
        await tab.until("window.consiliumArchive.state().detail !== null", 15)
        refused = [
            e for e in iter_entries(node.data_dir / "audit", action="api_refused")
            if e.reason == "insufficient_user_authentication"
        ]  # fmt: skip
        assert refused
        signed_in = [
            e.fields["step_up"] for e in iter_entries(node.data_dir / "audit", action="sign_in")
        ]
        assert signed_in == [False, True]
        # The recording plays now (no second step-up).
        await tab.until(
            "['ready', 'failed'].includes(window.consiliumArchive.state().player.status)", 20
        )
        again = [
            e for e in iter_entries(node.data_dir / "audit", action="api_refused")
            if e.reason == "insufficient_user_authentication"
        ]  # fmt: skip
        assert len(again) == len(refused)


async def test_a_session_that_ended_brings_the_sign_in_back_for_the_same_room(
    tmp_path: Path, oidc_provider: Any, chromium: OpenTab
) -> None:
    async with node_signing_in_at(oidc_provider, tmp_path) as node:
        assert node.node is not None
        tab = await chromium(f"{node.url}/join/{ROOM}")
        await sign_in_at_the_provider(tab, "bob")
        await tab.until("window.consilium.state().screen === 'join'")
        # The session's lifetime is over before the person presses Join.
        cookies = await tab.context.cookies()
        secret = next(c["value"] for c in cookies if c["name"] == "consilium_session")
        key = SESSION_KEY_PREFIX + session_id_of(secret)
        session = await node.node.store.get_expiring(key)
        assert session is not None
        session["expires_at"] = time.time() - 1
        await node.node.store.put_expiring(key, session, 600)
        await tab.page.click("#join-button")
        await tab.until("window.consilium.state().screen === 'signin'")
        await tab.until(
            "document.getElementById('screen-signin').dataset.error === 'session_expired'"
        )
        assert "Sign in again" in await tab.page.locator("#signin-error").inner_text()
        href = await tab.page.locator("#signin-link").get_attribute("href")
        # The sign-in binds the session to the browser's device key (test_web_dpop.py).
        jkt = await tab.page.evaluate("import('/js/dpop.js').then((m) => m.deviceThumbprint())")
        assert href == f"/auth/signin?return=%2Fjoin%2F{ROOM}&dpop_jkt={jkt}"
