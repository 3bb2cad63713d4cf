"""The sizes a real page tells the SFU (`render_sizes`, web/js/view.js), read off its WebSocket as
Chromium sends them (Playwright's `framesent`): a grid of two gives the other person's tile size in
device pixels; the speaker view makes it large and pinning my own tile makes it a thumbnail; a
hidden page sends [0, 0] and showing it again the sizes; a window dragged to a new size sends the
new size, a few messages and not one per frame; a resumed connection is told every size again; a
screen of twice the pixel density doubles the sizes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fixtures.browser import (
    ICE_ENV,
    BrowserTab,
    Meeting,
    OpenTab,
    diagnosis,
    meet_through_the_lobby,
    no_page_problems,
    page_state,
    screenshot,
    tile,
)

MIN_GAP_S = 0.25
"""view.js MIN_GAP_MS: at most one `render_sizes` per this long."""


@dataclass
class Sent:
    """The `render_sizes` messages one page sent: (when, which socket, sizes)."""

    messages: list[tuple[float, int, dict[str, list[int]]]] = field(default_factory=list)
    sockets: int = 0
    """How many WebSockets the page opened (a resume opens another)."""

    def since(self, start: float) -> list[dict[str, list[int]]]:
        return [sizes for when, _, sizes in self.messages if when >= start]


def recording_sizes(chromium: OpenTab, sent: dict[int, Sent]) -> OpenTab:
    """`chromium`, with every page's `render_sizes` frames recorded in `sent` by id(page), from
    its first WebSocket on (the listener is on before the room's page loads)."""

    async def open_tab(url: str, **options: Any) -> BrowserTab:
        tab = await chromium("about:blank", **options)
        record = sent.setdefault(id(tab.page), Sent())

        def on_websocket(ws: Any) -> None:
            record.sockets += 1
            socket = record.sockets

            def on_frame(payload: str | bytes) -> None:
                message = json.loads(payload)
                if message.get("type") == "render_sizes":
                    record.messages.append((time.monotonic(), socket, message["sizes"]))

            ws.on("framesent", on_frame)

        tab.page.on("websocket", on_websocket)
        await tab.page.goto(url)
        return tab

    return open_tab


async def camera_mid(tab: BrowserTab, participant_id: str) -> str:
    """The subscribe mid that carries `participant_id`'s camera video to this page."""
    mid = await tab.until(
        "window.consilium.state().tracks.find((t) => t.kind === 'video'"
        f" && t.participant_id === '{participant_id}' && t.source === 'camera')?.mid"
    )
    return str(mid)


async def drawn_size(tab: BrowserTab, participant_id: str) -> list[int]:
    """The device pixels the page draws `participant_id`'s camera tile at now."""
    return list(
        await tab.page.evaluate(
            f"""(() => {{
                const r = document.querySelector("{tile(participant_id)} video")
                    .getBoundingClientRect();
                return [Math.round(r.width * devicePixelRatio),
                        Math.round(r.height * devicePixelRatio)];
            }})()"""
        )
    )


async def until_sent(
    record: Sent, check: Callable[[dict[str, list[int]]], bool], since: float, what: str
) -> dict[str, list[int]]:
    """The latest `render_sizes` sent after `since`, once one passes `check`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        latest = record.since(since)
        if latest and check(latest[-1]):
            return latest[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: sent {record.since(since)}")


async def until_tile_sent(
    tab: BrowserTab, record: Sent, mid: str, pid: str, since: float, what: str
) -> list[int]:
    """Wait until the page sent, for `mid`, the size it draws `pid`'s tile at (the tile settles
    first: a layout switch is a few frames of resizing)."""
    deadline = time.monotonic() + 10
    while True:
        size = await drawn_size(tab, pid)
        latest = record.since(since)
        if size != [0, 0] and latest and latest[-1].get(mid) == size:
            return size
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: drawn at {size}, sent {latest}")
        await asyncio.sleep(0.1)


PAGE_HIDDEN = """(hidden) => {
    // Headless Chromium keeps every page visible (another tab in front, a minimised window):
    // the page is told it is hidden the way a browser tells it, by visibilityState and the event.
    if (hidden) {
        const is = (value) => ({ configurable: true, get: () => value });
        Object.defineProperty(document, "visibilityState", is("hidden"));
        Object.defineProperty(document, "hidden", is(true));
    } else {
        delete document.visibilityState;  // Document.prototype's own again
        delete document.hidden;
    }
    document.dispatchEvent(new Event("visibilitychange"));
}"""


async def test_the_page_tells_the_sfu_the_size_of_each_tile(
    serve_process: Any, chromium: OpenTab
) -> None:
    sent: dict[int, Sent] = {}
    browsers = recording_sizes(chromium, sent)
    meeting: Meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), browsers)
    chair = meeting.chair
    record = sent[id(chair.page)]
    try:
        mid = await camera_mid(chair, meeting.specialist_id)
        pid = meeting.specialist_id

        # A grid of two: the specialist's tile, in device pixels, under its subscribe mid.
        grid_size = await until_tile_sent(chair, record, mid, pid, 0, "grid of two")
        assert grid_size[0] > 100
        assert all(len(sizes) <= 2 for sizes in record.since(0))  # video mids only

        # The speaker view: the other person large.
        start = time.monotonic()
        await chair.page.click("#layout-button")
        await chair.until("document.getElementById('grid').dataset.layout === 'speaker'")
        large = await until_tile_sent(chair, record, mid, pid, start, "speaker view")
        assert large[0] > grid_size[0] and large[1] > grid_size[1]
        await screenshot(chair, "view-speaker")

        # Pinning my own tile: the specialist goes to the strip, a thumbnail.
        start = time.monotonic()
        await chair.page.click(f"{tile(meeting.chair_id)} .tile-pin")
        await chair.until("document.getElementById('grid').dataset.layout === 'pinned'")
        thumbnail = await until_tile_sent(chair, record, mid, pid, start, "pinned")
        assert thumbnail[0] < grid_size[0]
        assert thumbnail[0] * 3 < large[0]
        await chair.page.click(f"{tile(meeting.chair_id)} .tile-pin")  # back to the speaker view
        await chair.page.click("#layout-button")  # and to the grid
        await chair.until("document.getElementById('grid').dataset.layout === 'grid'")
        await until_tile_sent(chair, record, mid, pid, start, "the grid again")

        # The page hidden (another tab in front, the window minimised): [0, 0]; shown again:
        # the size again.
        start = time.monotonic()
        await chair.page.evaluate(PAGE_HIDDEN, True)
        await until_sent(record, lambda s: s.get(mid) == [0, 0], start, "page hidden")
        start = time.monotonic()
        await chair.page.evaluate(PAGE_HIDDEN, False)
        await chair.until("document.visibilityState === 'visible'")
        await until_tile_sent(chair, record, mid, pid, start, "page shown again")

        # The window dragged narrower: a new size every few milliseconds, for as long as the
        # browser takes; a few messages (at most one per MIN_GAP_S), the last one the final size.
        before = await drawn_size(chair, pid)
        steps = [(1000 - 8 * i, 700 - 5 * i) for i in range(1, 21)]
        start = time.monotonic()
        for width, height in steps:
            await chair.page.set_viewport_size({"width": width, "height": height})
            await asyncio.sleep(0.01)
        dragged = time.monotonic() - start
        final = await until_tile_sent(chair, record, mid, pid, start, "after the drag")
        await asyncio.sleep(1.0)  # anything still to come
        during = len(record.since(start))
        window_s = time.monotonic() - start
        assert final != before
        assert 1 <= during <= 1 + window_s / MIN_GAP_S, (during, window_s)
        assert during < len(steps) / 2, (during, dragged)

        # The connection drops and resumes: the sizes, unchanged, are sent on the new socket.
        socket = record.sockets
        dropped_at = time.monotonic()  # (the same sizes went out before: look after the drop)
        await chair.page.evaluate("window.consilium.dropConnection()")
        await chair.until("window.consilium.state().resumes === 1", 15)
        resent = await until_sent(
            record, lambda s: s.get(mid) == final, dropped_at, "after the resume"
        )
        assert record.sockets == socket + 1
        assert [s for _, sock, s in record.messages if sock == record.sockets][-1] == resent

        # A screen of twice the pixel density (the window moved to a laptop's own screen): the
        # same tile in CSS pixels, twice as many device pixels, told without any resize.
        viewport = chair.page.viewport_size
        assert viewport is not None
        css = await chair.page.evaluate(
            f'(() => {{ const r = document.querySelector("{tile(pid)} video")'
            ".getBoundingClientRect(); return [r.width, r.height]; })()"
        )
        start = time.monotonic()
        cdp = await chair.context.new_cdp_session(chair.page)
        await cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {**viewport, "deviceScaleFactor": 2, "mobile": False},
        )
        await chair.until("devicePixelRatio === 2")
        doubled = [round(css[0] * 2), round(css[1] * 2)]
        await until_sent(record, lambda s: s.get(mid) == doubled, start, "twice the density")

        no_page_problems(chair)
        assert (await page_state(chair))["errors"] == []
        # The specialist's page reports too: the chair's tile in its grid.
        other = sent[id(meeting.specialist.page)]
        chair_mid = await camera_mid(meeting.specialist, meeting.chair_id)
        await until_tile_sent(
            meeting.specialist, other, chair_mid, meeting.chair_id, 0, "the specialist's grid"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnosis(meeting)}") from None
