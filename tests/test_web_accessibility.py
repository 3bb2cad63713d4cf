"""Accessibility of the web client: axe-core on every screen, and a meeting run by keyboard alone.

axe-core comes with the `axe-playwright-python` test dependency and is injected into the page by
Playwright (never served by the product). It checks WCAG 2.x A/AA and its best practices on the
pre-join, lobby, room, chair and ending screens, in English and Chinese, light and dark. The
keyboard test joins and admits with Tab and Enter only, and checks that the focused control
shows a focus ring.
"""

from __future__ import annotations

import json
from typing import Any

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    BrowserTab,
    OpenTab,
    join_from_the_prejoin_screen,
    no_axe_violations,
    no_page_problems,
    page_state,
    schedule_room,
    screenshot,
)
from tests.fixtures.servers import ServeProcess

MAX_TABS = 25
"""Tab presses allowed to reach a control (the page has about a dozen)."""


async def _tab_to(tab: BrowserTab, selector: str) -> None:
    """Press Tab until the control `selector` has the focus; check the focus ring shows."""
    for _ in range(MAX_TABS):
        if await tab.page.evaluate(f"document.activeElement?.matches({json.dumps(selector)})"):
            break
        await tab.page.keyboard.press("Tab")
    else:
        raise AssertionError(f"{selector} not reached with {MAX_TABS} presses of Tab")
    ring = await tab.page.evaluate(
        """(() => {
            const style = getComputedStyle(document.activeElement);
            return { visible: document.activeElement.matches(':focus-visible'),
                     style: style.outlineStyle, width: parseFloat(style.outlineWidth) };
        })()"""
    )
    assert ring["visible"] and ring["style"] == "solid" and ring["width"] >= 2, (selector, ring)


def _tokens(serve: ServeProcess) -> tuple[str, str]:
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    chair = idp.mint(
        sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[ROOM]
    )
    specialist = idp.mint(
        sub="dr-ana", role="specialist", name="Dr Ana Silva", depts=["cardiology"], rooms=[ROOM]
    )
    return chair, specialist


async def test_a_keyboard_user_joins_and_the_chair_admits_by_keyboard_and_axe_finds_nothing(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    chair_token, specialist_token = _tokens(serve)
    schedule_room(serve.url, chair_token, ROOM)

    home = await chromium(f"{serve.url}/")
    await home.until("document.getElementById('home-status').textContent.includes('ready')")
    await no_axe_violations(home, "home")
    await home.close()

    chair = await chromium(f"{serve.url}/join/{ROOM}#token={chair_token}")
    await chair.until("document.getElementById('preview-video').videoWidth > 0")
    await no_axe_violations(chair, "pre-join")
    await _tab_to(chair, "#join-button")
    await chair.page.keyboard.press("Enter")
    await chair.until("window.consilium.state().screen === 'room'")
    await no_axe_violations(chair, "room (chair alone)")

    specialist = await chromium(f"{serve.url}/join/{ROOM}#token={specialist_token}")
    await specialist.until("document.getElementById('preview-video').videoWidth > 0")
    await _tab_to(specialist, "#join-button")
    await specialist.page.keyboard.press("Enter")
    await specialist.until("window.consilium.state().lobbyReason === 'lobby_enabled'")
    await specialist.until("!document.getElementById('screen-lobby').hidden")
    await no_axe_violations(specialist, "lobby")

    await chair.until("document.querySelector('#lobby-list .chair-admit')")
    # A screen reader hears the knock: the live region says who is waiting.
    await chair.until(
        "document.getElementById('knock-notice').textContent"
        " === 'Dr Ana Silva is waiting in the lobby.'"
    )
    await no_axe_violations(chair, "chair with a knock")
    await _tab_to(chair, "#lobby-list .chair-admit")
    await screenshot(chair, "keyboard-admit")
    await chair.page.keyboard.press("Enter")
    await specialist.until("window.consilium.state().screen === 'room'")
    await chair.until("document.querySelectorAll('#participant-list li').length === 2")

    await no_axe_violations(specialist, "room (specialist)")
    await no_axe_violations(chair, "room (chair with the specialist)")
    # The device settings open from the keyboard too.
    await _tab_to(specialist, ".devices summary")
    await specialist.page.keyboard.press("Enter")
    await specialist.until("document.querySelector('.devices').open")
    await no_axe_violations(specialist, "room with the device settings open")

    # The participant list is one tab stop: Tab reaches Mute, the next Tab leaves the list
    # (no Remove on the way); the arrow keys move to Remove.
    await _tab_to(chair, "#participant-list .chair-mute")
    await chair.page.keyboard.press("Tab")
    in_list = "document.getElementById('participant-list').contains(document.activeElement)"
    assert not await chair.page.evaluate(in_list)
    await chair.page.keyboard.press("Shift+Tab")
    await chair.until("document.activeElement.matches('#participant-list .chair-mute')")
    await chair.page.keyboard.press("ArrowRight")
    await chair.until("document.activeElement.matches('#participant-list .chair-remove')")
    # The chair removes the specialist by keyboard, after confirming; the screens pass axe.
    await chair.page.keyboard.press("Enter")
    await chair.until("document.getElementById('remove-dialog').open")
    await chair.until("document.activeElement.id === 'remove-cancel'")
    await no_axe_violations(chair, "remove confirmation")
    await screenshot(chair, "keyboard-remove-confirm")
    await chair.page.keyboard.press("Escape")  # changed my mind: nobody is removed
    await chair.until("!document.getElementById('remove-dialog').open")
    await chair.until("document.activeElement.matches('#participant-list .chair-remove')")
    assert (await page_state(specialist))["screen"] == "room"
    await chair.page.keyboard.press("Enter")
    await chair.until("document.activeElement.id === 'remove-cancel'")
    # Cancel and ask again in one moment: the dialog's close event, queued by the cancel, arrives
    # while it asks the second time and must not make the chair's Remove do nothing.
    await chair.page.evaluate(
        "document.getElementById('remove-cancel').click();"
        " document.querySelector('#participant-list .chair-remove').click()"
    )
    await chair.until("document.getElementById('remove-dialog').open")
    await chair.until("document.activeElement.id === 'remove-cancel'")
    await chair.page.keyboard.press("Tab")
    await chair.until("document.activeElement.id === 'remove-confirm'")
    await chair.page.keyboard.press("Enter")
    await specialist.until("window.consilium.ending() === 'removed'")
    await no_axe_violations(specialist, "removed")
    for tab in (chair, specialist):
        no_page_problems(tab)


async def test_axe_finds_nothing_in_chinese_and_in_the_dark_colour_scheme(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    chair_token, specialist_token = _tokens(serve)
    for scheme, lang in (("dark", "en"), ("light", "zh-CN")):
        tab = await chromium(
            f"{serve.url}/join/{ROOM}#token={chair_token}", color_scheme=scheme, locale=lang
        )
        await tab.until(f"document.documentElement.lang === '{lang}'")
        await tab.until("document.getElementById('preview-video').videoWidth > 0")
        await no_axe_violations(tab, f"pre-join ({scheme}, {lang})")
        await join_from_the_prejoin_screen(tab)
        await tab.until("window.consilium.state().screen === 'room'")
        await no_axe_violations(tab, f"room ({scheme}, {lang})")
        await screenshot(tab, f"room-{scheme}-{lang}")
        await tab.page.click("#leave-button")
        await tab.until("window.consilium.ending() === 'left'")
        await no_axe_violations(tab, f"left ({scheme}, {lang})")
        await screenshot(tab, f"left-{scheme}-{lang}")
        await tab.close()
    expired = await chromium(
        f"{serve.url}/join/{ROOM}#token={specialist_token[:-4]}AAAA", color_scheme="dark"
    )
    # Refused before the camera check: the page never shows the pre-join screen.
    await expired.until("window.consilium.ending() === 'expired'")
    await no_axe_violations(expired, "refused (dark)")
    await screenshot(expired, "refused-expired-dark")
