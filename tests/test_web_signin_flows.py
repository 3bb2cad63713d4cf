"""Sign-in as people really do it, in a real Chromium against the real oidc-provider: a double
click on "Sign in", a reload of the provider's page or of the callback, the back button after
signing in, and two tabs of one browser signing in at once. Each ends in the room's page signed
in, or on a page that says what happened in the person's language, never a raw error."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Request, Route

from tests.fixtures.browser import ROOM, BrowserTab, OpenTab, no_page_problems, page_state
from tests.fixtures.oidc_provider import PASSWORD, node_signing_in_at
from tests.fixtures.servers import REPO

CATALOGUES = {
    lang: json.loads((REPO / "web" / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "zh-CN")
}


def _starts(page: Page) -> list[str]:
    """The sign-in starts (`/auth/signin`) and callbacks the page requests, in order."""
    seen: list[str] = []

    def on_request(request: Request) -> None:
        if "/auth/signin" in request.url or "/auth/callback" in request.url:
            seen.append(request.url)

    page.on("request", on_request)
    return seen


async def _log_in(page: Page, login: str) -> None:
    await page.wait_for_selector("#login", timeout=15_000)
    await page.fill("#login", login)
    await page.fill("#password", PASSWORD)
    await page.click("#submit")


async def _signed_in_at_the_room(tab: BrowserTab) -> None:
    await tab.page.wait_for_url(f"**/join/{ROOM}", timeout=15_000)
    await tab.until("window.consilium !== undefined")
    await tab.until("window.consilium.state().screen === 'join'", timeout_s=15)
    state = await page_state(tab)
    assert state["signedIn"] is True and state["claims"]["name"] == "Dr Alice Chen"


async def test_a_double_click_on_sign_in_starts_one_round_trip(
    tmp_path: Path, oidc_provider: Any, chromium: OpenTab
) -> None:
    async with node_signing_in_at(oidc_provider, tmp_path) as node:
        tab = await chromium(f"{node.url}/join/{ROOM}")
        requests = _starts(tab.page)
        await tab.until("window.consilium.state().screen === 'signin'")

        async def slowly(route: Route) -> None:
            await asyncio.sleep(0.5)  # a loaded node: the page is still there for a 2nd click
            await route.continue_()

        await tab.page.route("**/auth/signin?*", slowly)
        # A double click, and an impatient second click while nothing seems to happen.
        await tab.page.dblclick("#signin-link")
        await asyncio.sleep(0.2)
        with contextlib.suppress(PlaywrightError):  # the page may be leaving already
            await tab.page.evaluate("document.getElementById('signin-link').click()")
        await _log_in(tab.page, "alice")
        await _signed_in_at_the_room(tab)
        # One round trip (Chromium itself drops a repeated navigation to the same address; the
        # page's own guard, web/js/signin.js, covers browsers that do not).
        assert len([url for url in requests if "/auth/signin" in url]) == 1, requests
        no_page_problems(tab)


async def test_reloading_the_provider_page_or_the_callback_still_signs_in(
    tmp_path: Path, oidc_provider: Any, chromium: OpenTab
) -> None:
    async with node_signing_in_at(oidc_provider, tmp_path) as node:
        tab = await chromium(f"{node.url}/join/{ROOM}")
        requests = _starts(tab.page)
        await tab.until("window.consilium.state().screen === 'signin'")
        await tab.page.click("#signin-link")
        await tab.page.wait_for_selector("#login", timeout=15_000)
        await tab.page.reload()  # the person reloads the provider's login page
        await _log_in(tab.page, "alice")
        await _signed_in_at_the_room(tab)
        # The callback opened again (a reload of it, a bookmark, a restored tab): the code was
        # used, the browser is signed in: it lands on the room, not on an error.
        [callback] = [url for url in requests if "/auth/callback" in url]
        await tab.page.goto(callback)
        await _signed_in_at_the_room(tab)
        assert await tab.page.locator("#signin-error").is_hidden()
        no_page_problems(tab)
        # The same callback in another browser (a copied address) signs nobody in: it says so
        # in words, in the person's language, never as raw JSON or a stack trace.
        for lang in ("en", "zh-CN"):
            other = await chromium(callback, locale=lang)
            await other.page.wait_for_url(f"{node.url}/", timeout=15_000)
            await other.until("window.consilium.state().screen === 'home'")
            problem = other.page.locator("#home-signin-error")
            await other.until("!document.getElementById('home-signin-error').hidden")
            assert await problem.inner_text() == CATALOGUES[lang]["signin.error.bad_state"]
            assert "consilium_session" not in {c["name"] for c in await other.context.cookies()}
            no_page_problems(other)


async def test_the_back_button_after_signing_in_does_not_show_an_error(
    tmp_path: Path, oidc_provider: Any, chromium: OpenTab
) -> None:
    async with node_signing_in_at(oidc_provider, tmp_path) as node:
        tab = await chromium(f"{node.url}/join/{ROOM}")
        await tab.until("window.consilium.state().screen === 'signin'")
        await tab.page.click("#signin-link")
        await _log_in(tab.page, "alice")
        await _signed_in_at_the_room(tab)
        await tab.page.go_back()
        await tab.page.wait_for_load_state()
        print(f"\nback after signing in led to {tab.page.url}")
        # Back leads to the provider's page (its own business: oidc-provider shows its used
        # login step) or, through the provider, to our callback again: never to an error of
        # ours. Forward again, the person is on the room's page, still signed in.
        if tab.page.url.startswith(node.url):
            await _signed_in_at_the_room(tab)
        else:
            await tab.page.go_forward()
            await _signed_in_at_the_room(tab)
        assert await tab.page.locator("#signin-error").is_hidden()
        no_page_problems(tab)


async def test_two_tabs_signing_in_at_once_both_complete(
    tmp_path: Path, oidc_provider: Any, chromium: OpenTab
) -> None:
    async with node_signing_in_at(oidc_provider, tmp_path) as node:
        first = await chromium(f"{node.url}/join/{ROOM}")
        # A second tab of the same browser (same cookies), opened on the same room.
        second_page = await first.context.new_page()
        second = BrowserTab(first.context, second_page)
        second_page.on("pageerror", second._on_page_error)
        await second_page.goto(f"{node.url}/join/{ROOM}")
        for tab in (first, second):
            await tab.until("window.consilium.state().screen === 'signin'")
            await tab.page.click("#signin-link")
            await tab.page.wait_for_selector("#login", timeout=15_000)
        # The first tab, started first, finishes first: its sign-in must not have been
        # undone by the second's start.
        await _log_in(first.page, "alice")
        await _signed_in_at_the_room(first)
        # The second tab finishes too (the provider may ask again, or know the person).
        if await second.page.locator("#login").count():
            await _log_in(second.page, "alice")
        await _signed_in_at_the_room(second)
        no_page_problems(first)
        no_page_problems(second)
