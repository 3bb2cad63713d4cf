"""The video grid from 1 to 12 participants, in a real browser with real participants.

A chair joins in Chromium; eleven `consilium bot` participants (bot/runner.py, run in this process:
they publish a pre-encoded test pattern and tone and subscribe to nothing, so they cost little)
join one at a time. After each arrival the page's grid is measured: every tile inside the space
the room leaves it, none overlapping another, all the same 16:9 size, together covering a good
part of that space, the page not scrolling. Pictures of 4 and 12 are saved in both languages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    BrowserTab,
    OpenTab,
    join_from_the_prejoin_screen,
    no_page_problems,
    schedule_room,
    screenshot,
)
from tests.fixtures.servers import ServeProcess

ROOM = "grid-board"
VIEWPORT = (1280, 800)
PEOPLE = [
    ("Dr Zhang Wei", "radiologist", "radiology"),
    ("Dr Maria Rossi", "specialist", "cardiology"),
    ("李娜", "nurse", "oncology"),
    ("Dr Omar Haddad", "specialist", "surgery"),
    ("Dr Emily Clarke", "trainee", "oncology"),
    ("王强", "specialist", "pathology"),
    ("Dr Kenji Sato", "radiologist", "radiology"),
    ("Dr Aisha Bello", "specialist", "cardiology"),
    ("陈静", "nurse", "surgery"),
    ("Dr Lukas Weber", "specialist", "pathology"),
    ("Dr Sofia Lind", "trainee", "oncology"),
]
"""The eleven who join the chair: name, role, department."""
MIN_COVERAGE = 0.45
"""Tiles together cover at least this share of the grid's space, whatever the count."""

MEASURE = """() => {
    const box = (el) => { const r = el.getBoundingClientRect();
                          return { x: r.x, y: r.y, w: r.width, h: r.height }; };
    return {
        stage: box(document.querySelector('.stage')),
        tiles: [...document.querySelectorAll('#grid figure')].map(box),
        captions: [...document.querySelectorAll('#grid figcaption .tile-name')]
            .map((el) => el.textContent),
        viewport: { w: innerWidth, h: innerHeight },
        scrolls: [document.scrollingElement, document.querySelector('main')]
            .some((el) => el.scrollHeight > el.clientHeight),
    };
}"""


class Bots:
    """Headless participants run in this event loop (the code of `consilium bot`)."""

    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self.idp = DevelopmentIdP.load_or_create(serve.data_dir)
        self.stop = asyncio.Event()
        self.runs: list[asyncio.Task[Any]] = []

    def join(self, index: int, name: str, role: str, dept: str) -> None:
        """Start one more participant; it joins, publishes, and stays until `close`."""
        from bot.runner import Bot, BotSettings

        token = self.idp.mint(sub=f"bot-{index}", role=role, name=name, depts=[dept], rooms=[ROOM])
        bot = Bot(BotSettings(room=ROOM, token=token, server=self.serve.url, subscribe=False))
        self.runs.append(asyncio.get_running_loop().create_task(bot.run(None, self.stop)))

    async def close(self) -> list[Any]:
        """Make them all leave; their reports."""
        self.stop.set()
        return list(await asyncio.gather(*self.runs))


@pytest.fixture
async def bots(serve_process: Any) -> AsyncIterator[Bots]:
    """Bots against a fresh `consilium serve`; their ICE gathers on loopback, as the server's."""
    from bot.testsource import encode_test_pattern, encode_tone
    from sfu import ice

    serve = serve_process(env=ICE_ENV)
    encode_test_pattern()  # once per process, before anyone joins
    encode_tone()
    ice.install(ice.IceSettings(host_addresses=("127.0.0.1",)))
    group = Bots(serve)
    try:
        yield group
    finally:
        await group.close()
        ice.uninstall()


def _overlap(a: dict[str, float], b: dict[str, float]) -> float:
    width = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    height = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return max(0.0, width) * max(0.0, height)


def _check_layout(count: int, layout: dict[str, Any]) -> None:
    stage, tiles = layout["stage"], layout["tiles"]
    assert len(tiles) == count
    assert not layout["scrolls"], f"{count} tiles: the page scrolls"
    for t in tiles:
        assert t["x"] >= stage["x"] - 1 and t["y"] >= stage["y"] - 1, (count, t, stage)
        assert t["x"] + t["w"] <= stage["x"] + stage["w"] + 1, (count, t, stage)
        assert t["y"] + t["h"] <= stage["y"] + stage["h"] + 1, (count, t, stage)
        assert t["w"] == pytest.approx(tiles[0]["w"], abs=1)
        assert t["h"] == pytest.approx(tiles[0]["h"], abs=1)
        assert t["w"] / t["h"] == pytest.approx(16 / 9, rel=0.02)
    for i, a in enumerate(tiles):
        for b in tiles[i + 1 :]:
            assert _overlap(a, b) < 1, (count, a, b)
    coverage = sum(t["w"] * t["h"] for t in tiles) / (stage["w"] * stage["h"])
    assert coverage >= MIN_COVERAGE, f"{count} tiles cover {coverage:.0%} of the grid's space"
    assert stage["w"] >= 0.6 * layout["viewport"]["w"], stage


async def _pictures(tab: BrowserTab, name: str) -> None:
    await screenshot(tab, name)
    await tab.page.select_option("#language-select", "zh-CN")
    await tab.until("document.querySelector('#grid .tile-details').textContent.includes('·')")
    await tab.until("document.getElementById('mic-button').textContent === '关闭麦克风'")
    await screenshot(tab, f"{name}-zh-CN")
    await tab.page.select_option("#language-select", "en")
    await tab.until("document.getElementById('mic-button').textContent === 'Mute microphone'")


async def test_the_grid_lays_out_one_to_twelve_participants(bots: Bots, chromium: OpenTab) -> None:
    serve, idp = bots.serve, bots.idp
    chair_token = idp.mint(
        sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[ROOM]
    )
    departments = tuple(sorted({dept for _, _, dept in PEOPLE} | {"oncology"}))
    schedule_room(serve.url, chair_token, ROOM, lobby=False, departments=departments)
    tab = await chromium(f"{serve.url}/join/{ROOM}#token={chair_token}", viewport=VIEWPORT)
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'")

    for count in range(1, 13):
        if count > 1:
            bots.join(count - 1, *PEOPLE[count - 2])
        await tab.until(f"document.querySelectorAll('#grid figure').length === {count}", 20)
        await tab.until(f"document.getElementById('grid').dataset.count === '{count}'")
        layout = await tab.page.evaluate(MEASURE)
        _check_layout(count, layout)
        if count == 4:
            await _pictures(tab, "grid-4")

    # Twelve names on twelve tiles; the others' video decodes.
    layout = await tab.page.evaluate(MEASURE)
    names = [name.removesuffix(" (you)") for name in layout["captions"]]
    assert sorted(names) == sorted(["Dr Chen Wei"] + [name for name, _, _ in PEOPLE])
    await tab.until(
        "[...document.querySelectorAll('#grid video')].filter((v) => v.videoWidth > 0)"
        ".length === 12",
        timeout_s=30,
    )
    await _pictures(tab, "grid-12")
    no_page_problems(tab)
    reports = await bots.close()
    assert all(report.ok for report in reports), json.dumps([r.as_dict() for r in reports])


async def test_the_grid_follows_the_window_size(bots: Bots, chromium: OpenTab) -> None:
    """A narrow window stacks the sidebar under the grid; the tiles still fit and do not overlap."""
    serve, idp = bots.serve, bots.idp
    chair_token = idp.mint(
        sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[ROOM]
    )
    departments = tuple(sorted({dept for _, _, dept in PEOPLE} | {"oncology"}))
    schedule_room(serve.url, chair_token, ROOM, lobby=False, departments=departments)
    tab = await chromium(f"{serve.url}/join/{ROOM}#token={chair_token}", viewport=(700, 900))
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'")
    for index in range(1, 6):
        bots.join(index, *PEOPLE[index - 1])
    await tab.until("document.querySelectorAll('#grid figure').length === 6", 20)
    await tab.until(
        "[...document.querySelectorAll('#grid video')].every((v) => v.videoWidth > 0)", 30
    )
    layout = await tab.page.evaluate(MEASURE)
    layout["scrolls"] = False  # narrow: the page scrolls to the sidebar below the grid, by design
    _check_layout(6, layout)
    await screenshot(tab, "grid-6-narrow")
    await tab.page.set_viewport_size({"width": 1280, "height": 720})
    await asyncio.sleep(0.3)
    _check_layout(6, await tab.page.evaluate(MEASURE))
    await screenshot(tab, "grid-6-wide")
