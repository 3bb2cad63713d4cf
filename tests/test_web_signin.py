"""The web client's sign-in in a real Chromium: a person with no link and no token opens
/join/<room>, signs in at a real OpenID provider (panva's oidc-provider, Entra ID-shaped
claims), and is in the room; in Chinese as in English; sign-out."""

from __future__ import annotations

import time
from typing import Any

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
from tests.fixtures.oidc_provider import PASSWORD, OidcProvider
from tests.fixtures.servers import ServeProcess, free_port


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
