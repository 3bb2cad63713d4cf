"""Device binding (DPoP, RFC 9449) in a real Chromium: the web client signs in with its
non-extractable device key, joins the room with proofs; the session cookie copied to a plain
HTTP client (no key) is refused; a reload keeps the key (IndexedDB) and joins again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.fixtures.browser import (
    ROOM,
    OpenTab,
    join_from_the_prejoin_screen,
    no_page_problems,
)
from tests.test_web_signin import sign_in_at_the_provider, signed_in_serve

DPOP_MODULE = "import('/js/dpop.js')"


async def test_signed_in_with_a_device_key_and_a_stolen_cookie_is_refused(
    serve_process: Any, oidc_provider: Any, chromium: OpenTab
) -> None:
    serve, _ = signed_in_serve(serve_process, oidc_provider)
    tab = await chromium(f"{serve.url}/join/{ROOM}")
    await tab.until("window.consilium.state().screen === 'signin'")
    jkt = await tab.page.evaluate(f"{DPOP_MODULE}.then((m) => m.deviceThumbprint())")
    assert isinstance(jkt, str) and len(jkt) == 43
    # The private key cannot be read out by script.
    assert await tab.page.evaluate(f"{DPOP_MODULE}.then((m) => m.deviceKeyExtractable())") is False
    assert f"dpop_jkt={jkt}" in await tab.page.get_attribute("#signin-link", "href")
    proofs: list[str] = []
    tab.page.on(
        "request",
        lambda r: proofs.append(r.url) if "/api/" in r.url and "dpop" in r.headers else None,
    )
    await sign_in_at_the_provider(tab, "alice")
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'", timeout_s=20)
    # The pre-join admission check went with a proof (the join's proof is in its message).
    assert any("/admission" in url for url in proofs), proofs
    no_page_problems(tab)

    # The session cookie, copied to a machine without the key: refused on the API and the join.
    cookie = next(
        c["value"] for c in await tab.context.cookies() if c["name"] == "consilium_session"
    )
    async with aiohttp.ClientSession(headers={"Cookie": f"consilium_session={cookie}"}) as thief:
        async with thief.get(f"{serve.url}/api/rooms/{ROOM}/admission") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
            assert (await r.json())["reason"] == "missing"
        ws = await thief.ws_connect(serve.url.replace("http", "ws", 1) + "/ws")
        await ws.send_json({"type": "join", "token": "", "room": ROOM})
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert (msg.data, msg.extra) == (4401, "invalid_dpop_proof: missing")

    # A reload: the same key from IndexedDB, so the bound session still works.
    await tab.page.reload()
    await tab.until("window.consilium !== undefined")
    again = await tab.page.evaluate(f"{DPOP_MODULE}.then((m) => m.deviceThumbprint())")
    assert again == jkt
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'", timeout_s=20)
    state = json.loads(await tab.page.evaluate("JSON.stringify(window.consilium.state())"))
    assert state["signedIn"] is True


async def thumbprint_once_loaded(page: Any) -> str | None:
    """The device key's thumbprint once the page's client shows its sign-in screen."""
    for _ in range(150):
        if await page.evaluate("window.consilium?.state().screen === 'signin'"):
            break
        await asyncio.sleep(0.1)
    value = await page.evaluate(f"{DPOP_MODULE}.then((m) => m.deviceThumbprint())")
    return value if isinstance(value, str) else None


async def test_two_tabs_opened_at_once_share_one_device_key(
    serve_process: Any, oidc_provider: Any, chromium: OpenTab
) -> None:
    serve, _ = signed_in_serve(serve_process, oidc_provider)
    # A page of the same origin that loads no client: no key is made yet.
    tab = await chromium(f"{serve.url}/auth/session")
    pages = [await tab.context.new_page() for _ in range(2)]
    await asyncio.gather(*(page.goto(f"{serve.url}/join/{ROOM}") for page in pages))
    thumbprints = {await thumbprint_once_loaded(page) for page in pages}
    # Both tabs made a key at once; one was kept, and both use it.
    [jkt] = thumbprints
    assert isinstance(jkt, str) and len(jkt) == 43
    reloaded = pages[0]
    await reloaded.reload()
    assert await thumbprint_once_loaded(reloaded) == jkt
