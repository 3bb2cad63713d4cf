"""Two real browsers (Debian's Chromium) meet through a real `consilium serve` and its SFU."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signaling.devidp import DevelopmentIdP
from tests.fixtures.servers import REPO

if TYPE_CHECKING:
    # Types only: importing the module here would register it before pytest can rewrite it.
    from tests.fixtures.browser import BrowserTab, OpenTab


ROOM = "interop"
SCREENSHOTS = REPO / "test-output" / "browser"
MEDIA_TIMEOUT_S = 30.0


async def _state(tab: BrowserTab) -> dict[str, Any]:
    return dict(await tab.page.evaluate("window.consiliumTest.state"))


async def _received_from(tab: BrowserTab, sender: str) -> dict[str, dict[str, Any]]:
    """The tab's inbound-rtp stats for what `sender` publishes, by kind."""
    stats = await tab.page.evaluate("window.consiliumTest.stats()")
    return {s["kind"]: s for s in stats["inbound"] if s["participantId"] == sender}


def _decoding(received: dict[str, dict[str, Any]]) -> bool:
    video, audio = received.get("video", {}), received.get("audio", {})
    return (
        video.get("framesDecoded", 0) > 0
        and video.get("frameWidth", 0) > 0
        and audio.get("totalSamplesReceived", 0) > 0
    )


async def _diagnosis(tabs: dict[str, BrowserTab], sender_of: dict[str, str], log: str) -> str:
    """What each page knows, for a failure message."""
    lines = []
    for sub, tab in tabs.items():
        lines.append(f"--- {sub}: state {json.dumps(await _state(tab))}")
        lines.append(f"    from the other: {await _received_from(tab, sender_of[sub])}")
        lines.extend(f"    console {m}" for m in tab.console)
        lines.extend(f"    page error {e}" for e in tab.page_errors)
    lines.append("--- server log (tail)")
    lines.append(log[-4000:])
    return "\n".join(lines)


async def test_two_browsers_see_hear_and_message_each_other_through_the_sfu(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env={"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1"})
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    tabs: dict[str, BrowserTab] = {}
    for sub in ("dr-ana", "dr-ben"):
        token = idp.mint(sub=sub, role="chair", depts=["cardiology"], rooms=[ROOM])
        tabs[sub] = await chromium(f"{serve.url}/test.html#token={token}&room={ROOM}")
    ana, ben = tabs["dr-ana"], tabs["dr-ben"]
    try:
        for tab in tabs.values():
            await tab.until("window.consiliumTest.state.status === 'joined'")
        ids = {sub: (await _state(tab))["participantId"] for sub, tab in tabs.items()}
        sender_of = {"dr-ana": ids["dr-ben"], "dr-ben": ids["dr-ana"]}

        # Each page decodes the other's video and audio within the time limit...
        deadline = time.monotonic() + MEDIA_TIMEOUT_S
        before: dict[str, dict[str, dict[str, Any]]] = {}
        while time.monotonic() < deadline:
            before = {sub: await _received_from(tab, sender_of[sub]) for sub, tab in tabs.items()}
            if all(_decoding(received) for received in before.values()):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(
                "the browsers did not decode each other's media within "
                f"{MEDIA_TIMEOUT_S:g} s\n{await _diagnosis(tabs, sender_of, serve.output())}"
            )
        # ...and keeps decoding it.
        await asyncio.sleep(1.0)
        for sub, tab in tabs.items():
            video, audio = before[sub]["video"], before[sub]["audio"]
            later = await _received_from(tab, sender_of[sub])
            assert later["video"]["framesDecoded"] > video["framesDecoded"], sub
            assert later["video"]["frameWidth"] > 0, sub
            assert later["audio"]["totalSamplesReceived"] > audio["totalSamplesReceived"], sub

        # Both show exactly one labelled video of the other participant.
        for sub, tab in tabs.items():
            figures = tab.page.locator("#remotes figure")
            assert await figures.count() == 1, sub
            assert await figures.first.get_attribute("data-participant-id") == sender_of[sub]
            assert sender_of[sub] in await figures.first.locator("figcaption").inner_text()

        # A chat message on the reliable data channel comes back stamped with its sender.
        open_channels = "window.consiliumTest.state.channels['consilium-reliable'] === 'open'"
        snapshot = "window.consiliumTest.state.received.some((m) => m.message.type === 'snapshot')"
        for tab in (ana, ben):
            await tab.until(open_channels)
            await tab.until(snapshot)
        chat = json.dumps({"type": "chat", "text": "hello ben"})
        await ana.page.evaluate(
            f"window.consiliumTest.sendData('consilium-reliable', {json.dumps(chat)})"
        )
        await ben.until(
            "window.consiliumTest.state.received.some((m) => m.message.text === 'hello ben')"
        )
        (event,) = [
            m["message"] for m in (await _state(ben))["received"] if m["message"].get("text")
        ]
        assert event["type"] == "event" and event["kind"] == "chat"
        assert event["author"] == ids["dr-ana"] and event["seq"] >= 1

        for sub, tab in tabs.items():
            state = await _state(tab)
            assert state["errors"] == [], (sub, state["errors"])
            assert tab.page_errors == [], (sub, tab.page_errors)
            csp = [m for m in tab.console if "Content Security Policy" in m]
            assert csp == [], (sub, csp)
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for sub, tab in tabs.items():
            await tab.page.screenshot(path=Path(SCREENSHOTS, f"{sub}.png"), full_page=True)
