"""The connection-quality indicator: rated from real statistics and said in words, with whose
side the problem is on (web/js/quality.js, shown by web/js/grid.js), and the picture each tile
receives against the size it draws it at (web/js/view.js).

The rating and the attribution are pure functions of numbers: their table of cases runs in the
served page (the module as the client loads it) with no media. Then one meeting through real
coturn, with the specialist's link to it (nettest's proxy) clean at first, then losing a tenth
of its datagrams both ways: the specialist's page says their own network is the problem, the
chair's page says it is the specialist's network, and a third participant on a clean link stays
good. And a camera that sends a small picture, shown large: its tile says the picture is lower than
wanted, whose side it is on, and stops saying it when the tile is a thumbnail again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nettest.impairment import link
from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import (
    ICE_ENV,
    OpenTab,
    admit_another,
    diagnosis,
    meet_through_the_lobby,
    no_axe_violations,
    no_page_problems,
    screenshot,
    second_tab_with,
    tile,
)
from tests.fixtures.servers import RunningNode
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_turn import relay_env
from tests.test_turn_impaired import second_browser_behind

# Each case: the input of `assess` (streams given as `incoming` arguments) → what it says, in a
# compact form: my rating and problem keys, and per other person their rating and problem keys.
ASSESS = """
async (cases) => {
  const q = await import('/js/quality.js');
  const brief = ({ rating, problems }) => ({
    rating, problems: problems.map((p) => [p.key, p.level, p.values]),
  });
  const out = {};
  for (const [name, input] of Object.entries(cases)) {
    const { mine, others } = q.assess({ ...input, streams: (input.streams ?? []).map(q.incoming) });
    out[name] = {
      mine: brief(mine),
      others: Object.fromEntries([...others].map(([pid, entry]) => [pid, brief(entry)])),
    };
  }
  return out;
}
"""

CLEAN = {"loss": 0.0, "frozen": 0.0, "fps": 30, "jitterMs": 5}


def stream(pid: str, **figures: Any) -> dict[str, Any]:
    """One other person's incoming figures: clean unless told."""
    return {"participantId": pid, **CLEAN, **figures}


def rated(rating: str | None, *problems: Any) -> dict[str, Any]:
    return {"rating": rating, "problems": [list(p) for p in problems]}


RTT_450 = ("quality.mine_rtt", "fair", {"ms": 450})

CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "nothing known yet": ({}, {"mine": rated(None), "others": {}}),
    "loopback, all clean": (
        {"uplinkLoss": 0, "rttMs": 1, "streams": [stream("a"), stream("b")]},
        {"mine": rated("good"), "others": {"a": rated("good"), "b": rated("good")}},
    ),
    "what I send is lost: mine, their tiles stay good": (
        {"uplinkLoss": 0.08, "rttMs": 20, "streams": [stream("a"), stream("b")]},
        {
            "mine": rated("fair", ("quality.mine_uplink_loss", "fair", {"percent": 8})),
            "others": {"a": rated("good"), "b": rated("good")},
        },
    ),
    "heavy uplink loss is poor": (
        {"uplinkLoss": 0.15, "rttMs": 20},
        {
            "mine": rated("poor", ("quality.mine_uplink_loss", "poor", {"percent": 15})),
            "others": {},
        },
    ),
    "a slow round trip is mine, and on every tile": (
        {"uplinkLoss": 0, "rttMs": 450, "streams": [stream("a"), stream("b")]},
        {
            "mine": rated("fair", RTT_450),
            "others": {"a": rated("fair", RTT_450), "b": rated("fair", RTT_450)},
        },
    ),
    "a very slow round trip is poor": (
        {"rttMs": 800},
        {"mine": rated("poor", ("quality.mine_rtt", "poor", {"ms": 800})), "others": {}},
    ),
    "loss on one person's media while another's is clean: theirs": (
        {"uplinkLoss": 0, "rttMs": 20, "streams": [stream("a", loss=0.08), stream("b")]},
        {
            "mine": rated("good"),
            "others": {
                "a": rated("fair", ("quality.their_loss", "fair", {"percent": 8})),
                "b": rated("good"),
            },
        },
    ),
    "loss on everyone's media: my downlink, said once with the worst figure": (
        {
            "uplinkLoss": 0,
            "rttMs": 20,
            "streams": [stream("a", loss=0.04), stream("b", loss=0.12), stream("c", loss=0.05)],
        },
        {
            "mine": rated("poor", ("quality.mine_downlink_loss", "poor", {"percent": 12})),
            "others": {
                "a": rated("fair", ("quality.mine_downlink_loss", "fair", {"percent": 4})),
                "b": rated("poor", ("quality.mine_downlink_loss", "poor", {"percent": 12})),
                "c": rated("fair", ("quality.mine_downlink_loss", "fair", {"percent": 5})),
            },
        },
    ),
    "loss on one, the other's not clean either: nothing says it is theirs, so mine": (
        {"uplinkLoss": 0, "rttMs": 20, "streams": [stream("a", loss=0.05), stream("b", loss=0.02)]},
        {
            "mine": rated("fair", ("quality.mine_downlink_loss", "fair", {"percent": 5})),
            "others": {
                "a": rated("fair", ("quality.mine_downlink_loss", "fair", {"percent": 5})),
                "b": rated("good"),
            },
        },
    ),
    "one other person only: nothing to compare with": (
        {"uplinkLoss": 0, "rttMs": 20, "streams": [stream("a", loss=0.2)]},
        {
            "mine": rated("good"),
            "others": {"a": rated("poor", ("quality.between_loss", "poor", {"percent": 20}))},
        },
    ),
    "one person's video freezing: theirs, and no word about its frame rate": (
        {"streams": [stream("a", frozen=0.3, fps=3), stream("b")]},
        {
            "mine": rated(None),
            "others": {
                "a": rated("poor", ("quality.their_freezing", "poor", {"percent": 30})),
                "b": rated("good"),
            },
        },
    ),
    "everyone's video freezing: mine": (
        {"streams": [stream("a", frozen=0.05), stream("b", frozen=0.04)]},
        {
            "mine": rated("fair", ("quality.mine_downlink_freezing", "fair", {"percent": 5})),
            "others": {
                "a": rated("fair", ("quality.mine_downlink_freezing", "fair", {"percent": 5})),
                "b": rated("fair", ("quality.mine_downlink_freezing", "fair", {"percent": 4})),
            },
        },
    ),
    "a slow picture that moves": (
        {"streams": [stream("a", fps=6), stream("b", fps=2), stream("c")]},
        {
            "mine": rated(None),
            "others": {
                "a": rated("fair", ("quality.their_fps", "fair", {"fps": 6})),
                "b": rated("poor", ("quality.their_fps", "poor", {"fps": 2})),
                "c": rated("good"),
            },
        },
    ),
    "uneven sound from one person": (
        {"streams": [stream("a", jitterMs=80), stream("b")]},
        {
            "mine": rated(None),
            "others": {
                "a": rated("fair", ("quality.their_jitter", "fair", {"ms": 80})),
                "b": rated("good"),
            },
        },
    ),
    "a picture much smaller than its tile for one: fair, theirs": (
        {
            "streams": [
                stream("a", layer={"received": 180, "wanted": 720}),
                stream("b", layer={"received": 720, "wanted": 720}),
            ]
        },
        {
            "mine": rated(None),
            "others": {
                "a": rated(
                    "fair", ("quality.their_lower_layer", "fair", {"received": 180, "wanted": 720})
                ),
                "b": rated("good"),
            },
        },
    ),
    "small pictures in large tiles for everyone: my bandwidth": (
        {
            "streams": [
                stream("a", layer={"received": 180, "wanted": 720}),
                stream("b", layer={"received": 360, "wanted": 800}),
            ]
        },
        {
            "mine": rated(
                "fair", ("quality.mine_lower_layer", "fair", {"received": 180, "wanted": 720})
            ),
            "others": {
                "a": rated(
                    "fair", ("quality.mine_lower_layer", "fair", {"received": 180, "wanted": 720})
                ),
                "b": rated(
                    "fair", ("quality.mine_lower_layer", "fair", {"received": 360, "wanted": 800})
                ),
            },
        },
    ),
    "a picture drawn up to twice its size is not worth words (a thumbnail, a 360p camera)": (
        {
            "streams": [
                stream("a", layer={"received": 360, "wanted": 700}),
                stream("b", layer={"received": 180, "wanted": 135}),
            ]
        },
        {"mine": rated(None), "others": {"a": rated("good"), "b": rated("good")}},
    ),
    "worst first: their loss (poor) before my slow round trip (fair)": (
        {"uplinkLoss": 0, "rttMs": 450, "streams": [stream("a", loss=0.2), stream("b")]},
        {
            "mine": rated("fair", RTT_450),
            "others": {
                "a": rated("poor", ("quality.their_loss", "poor", {"percent": 20}), RTT_450),
                "b": rated("fair", RTT_450),
            },
        },
    ),
    "figures not known yet say nothing": (
        {
            "streams": [
                {"participantId": "a"},
                {"participantId": "b", "loss": 0.2},
            ]
        },
        {
            "mine": rated(None),
            "others": {
                "a": rated(None),
                "b": rated("poor", ("quality.between_loss", "poor", {"percent": 20})),
            },
        },
    ),
}


async def test_the_rating_and_whose_side_it_is_on(dev_node: RunningNode, chromium: OpenTab) -> None:
    tab = await chromium(f"{dev_node.url}/")
    results = await tab.page.evaluate(ASSESS, {name: case for name, (case, _) in CASES.items()})
    for name, (_, expected) in CASES.items():
        assert results[name] == expected, name


async def test_rate_connection_and_the_frame_window(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    tab = await chromium(f"{dev_node.url}/")
    got = await tab.page.evaluate(
        """import('/js/quality.js').then((q) => {
            const steady = new q.FrameWindow();
            for (let i = 0; i <= 10; i++) {
              steady.add(i * 500, { framesDecoded: 100 + i * 15, packetsReceived: 1000 + i * 60 });
            }
            // Frames stop while packets keep coming (lost pieces of a frame): a freeze.
            const stalled = new q.FrameWindow();
            stalled.add(0, { framesDecoded: 100, packetsReceived: 1000 });
            stalled.add(500, { framesDecoded: 115, packetsReceived: 1060 });
            stalled.add(1000, { framesDecoded: 115, packetsReceived: 1100 });
            stalled.add(1500, { framesDecoded: 115, packetsReceived: 1130 });
            // Frames and packets stop together (the camera off): not a freeze.
            const off = new q.FrameWindow();
            off.add(0, { framesDecoded: 100, packetsReceived: 1000 });
            off.add(500, { framesDecoded: 115, packetsReceived: 1060 });
            off.add(2500, { framesDecoded: 115, packetsReceived: 1060 });
            // Chromium's own count: a freeze of a second in the last four.
            const counted = new q.FrameWindow();
            counted.add(0, {
              framesDecoded: 1, packetsReceived: 10, freezeCount: 1, totalFreezesDuration: 2,
            });
            counted.add(4000, {
              framesDecoded: 91, packetsReceived: 500, freezeCount: 2, totalFreezesDuration: 3,
            });
            // Five hitches of 180 ms that Chromium counts as freezes: not freezes here.
            const hitches = new q.FrameWindow();
            hitches.add(0, {
              framesDecoded: 1, packetsReceived: 10, freezeCount: 0, totalFreezesDuration: 0,
            });
            hitches.add(4000, {
              framesDecoded: 91, packetsReceived: 500, freezeCount: 5, totalFreezesDuration: 0.9,
            });
            // Counters that go back (the transceiver carries someone else now) start again.
            const reused = new q.FrameWindow();
            reused.add(0, { framesDecoded: 500, packetsReceived: 5000 });
            reused.add(500, { framesDecoded: 10, packetsReceived: 100 });
            return {
              steady: [steady.fps(), steady.frozen(), steady.stallMs()],
              stalled: [stalled.stallMs(), stalled.frozen()],
              off: [off.stallMs(), off.frozen()],
              counted: counted.frozen(),
              hitches: hitches.frozen(),
              reused: [reused.fps(), reused.frozen()],
              rate: {
                unknown: q.rateConnection({}),
                clean: q.rateConnection({ loss: 0, rttMs: 1, frozen: 0, jitterMs: 3, fps: 30 }),
                frozen: q.rateConnection({ loss: 0, frozen: 0.2 }),
                frozenAndSlow: q.rateConnection({ frozen: 0.05, fps: 1 }),
                jittery: q.rateConnection({ jitterMs: 60 }),
                slowPicture: q.rateConnection({ fps: 7 }),
              },
            };
        })"""
    )
    assert got["steady"] == [30, 0, 0]
    assert got["stalled"] == [1000, pytest.approx(1000 / 1500)]
    assert got["off"] == [0, 0]
    assert got["counted"] == pytest.approx(0.25)
    assert got["hitches"] == 0
    assert got["reused"] == [None, None]
    assert got["rate"] == {
        "unknown": None,
        "clean": "good",
        "frozen": "poor",
        "frozenAndSlow": "fair",  # the freeze says it; the frame rate of a still picture does not
        "jittery": "fair",
        "slowPicture": "fair",
    }


async def test_the_picture_window_says_soft_only_when_soft_for_a_while(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    """PictureWindow: the frame's height against the height its tile draws it at (device
    pixels), its sharpest sample over LAYER_SPAN_MS: a layer switch in progress (the tile grew a
    second ago) says nothing yet."""
    tab = await chromium(f"{dev_node.url}/")
    got = await tab.page.evaluate(
        """import('/js/quality.js').then((q) => {
            const sample = (w, h, tw, th) => ({
              frameWidth: w, frameHeight: h, tileWidth: tw, tileHeight: th,
            });
            // The low layer (320x180) in a large tile (1280x720) for five seconds: soft.
            const soft = new q.PictureWindow();
            for (let t = 0; t <= 5000; t += 1000) soft.add(t, sample(320, 180, 1280, 720));
            // The tile just grew: sharp until a second ago, then the low layer drawn large.
            const growing = new q.PictureWindow();
            for (let t = 0; t <= 3000; t += 1000) growing.add(t, sample(320, 180, 320, 180));
            growing.add(4000, sample(320, 180, 1280, 720));
            // Not long enough yet to say anything.
            const young = new q.PictureWindow();
            young.add(0, sample(320, 180, 1280, 720));
            young.add(1000, sample(320, 180, 1280, 720));
            // Hidden (no size) in between: the window starts again.
            const hidden = new q.PictureWindow();
            for (let t = 0; t <= 4000; t += 1000) hidden.add(t, sample(320, 180, 1280, 720));
            hidden.add(5000, sample(320, 180, 0, 0));
            hidden.add(6000, sample(320, 180, 1280, 720));
            return {
              soft: soft.layer(),
              growing: growing.layer(),
              young: young.layer(),
              hidden: hidden.layer(),
              // A 4:3 camera filling a 16:9 tile is drawn taller than the tile (cropped); a
              // shared screen is fitted inside it.
              cover: q.drawnHeight(sample(640, 480, 1280, 720)),
              contain: q.drawnHeight(sample(1920, 1200, 1280, 720), "contain"),
            };
        })"""
    )
    assert got["soft"] == {"received": 180, "wanted": 720}
    assert got["growing"] == {"received": 180, "wanted": 180}
    assert got["young"] is None
    assert got["hidden"] is None
    assert got["cover"] == 960
    assert got["contain"] == 720


async def test_the_pictures_words_join_the_statistics_words(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    """withLayers adds the pictures' figures (measured at the tiles) to what `assess` said from
    the statistics: the same words, the same sides, worst first, my own entry kept."""
    tab = await chromium(f"{dev_node.url}/")
    got = await tab.page.evaluate(
        """import('/js/quality.js').then((q) => {
            const brief = (m) => Object.fromEntries([...m].map(([pid, { rating, problems }]) =>
              [pid, [rating, problems.map((p) => p.key)]]));
            const { mine, others } = q.assess({
              uplinkLoss: 0, rttMs: 20,
              streams: [q.incoming({ participantId: 'a', loss: 0.2 }),
                        q.incoming({ participantId: 'b', loss: 0 })],
            });
            const quality = new Map([...others, ['me', mine]]);
            const layers = new Map([['a', { received: 180, wanted: 720 }],
                                    ['b', { received: 360, wanted: 360 }]]);
            return {
              before: brief(quality),
              after: brief(q.withLayers(quality, 'me', layers)),
              none: q.withLayers(quality, 'me', new Map()) === quality,
            };
        })"""
    )
    assert got["before"] == {
        "a": ["poor", ["quality.their_loss"]],
        "b": ["good", []],
        "me": ["good", []],
    }
    assert got["after"]["a"] == ["poor", ["quality.their_loss", "quality.their_lower_layer"]]
    assert got["after"]["b"] == ["good", []]
    assert got["after"]["me"] == ["good", []]
    assert got["none"] is True


async def test_the_words_name_whose_network_in_both_languages(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    tab = await chromium(f"{dev_node.url}/")
    words = await tab.page.evaluate(
        """async () => {
            const i18n = await import('/js/i18n.js');
            const out = {};
            for (const lang of ['en', 'zh-CN']) {
              await i18n.setLanguage(lang);
              out[lang] = [
                i18n.t('quality.their_freezing', { name: 'Dr Ana Silva' }),
                i18n.t('quality.mine_uplink_loss', { percent: 8 }),
                i18n.t('quality.mine_rtt', { ms: 450 }),
              ];
            }
            return out;
        }"""
    )
    assert words["en"] == [
        "Dr Ana Silva's network: their video is freezing",
        "Your network: 8% of what you send is lost",
        "Your connection to the server is slow (RTT 450 ms)",
    ]
    assert words["zh-CN"] == [
        "Dr Ana Silva 的网络：对方的视频卡顿",
        "你的网络：你发送的数据丢失了 8%",
        "你到服务器的连接较慢（往返时延 450 毫秒）",
    ]


CLEAN_LINK = link(rtt_ms=40)
"""The specialist's link to coturn while everyone joins (video starts slowly over a lossy one)."""
LOSSY_LINK = link(loss=0.10, rtt_ms=40)
"""The same link, then: a tenth of the datagrams lost each way."""

WHY = 'document.querySelector("{tile} .tile-quality-why").textContent'
RATING = 'document.querySelector("{tile} .tile-quality").dataset.quality'


async def test_a_lossy_link_is_shown_as_the_specialists_own_network(
    turnserver: TurnServer, serve_process: Any, chromium: OpenTab
) -> None:
    up, down = CLEAN_LINK
    proxy = ImpairedUdpProxy((TURN_HOST, turnserver.port), up=up, down=down, seed=15)
    await proxy.start()
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        impaired_url = f"turn:{TURN_HOST}:{proxy.port}?transport=udp"
        browsers = second_browser_behind(chromium, turnserver.udp_url, impaired_url)
        meeting = await meet_through_the_lobby(serve, browsers)
        third, third_id = await admit_another(
            meeting, browsers, sub="dr-okafor", role="radiologist", name="Dr Ngozi Okafor"
        )
        chair, specialist = meeting.chair, meeting.specialist
        specialist_tile, third_tile = tile(meeting.specialist_id), tile(third_id)
        try:
            # On the clean link, nobody's network is blamed.
            for tab in (chair, specialist):
                await tab.until("document.getElementById('my-quality').dataset.quality === 'good'")
            await chair.until(f"{RATING.format(tile=specialist_tile)} === 'good'")
            # Then the specialist's link loses a tenth of its datagrams each way.
            proxy.up.impairment, proxy.down.impairment = LOSSY_LINK
            # The specialist's own indicator: their network (what they send is lost, and what
            # they receive from everyone).
            mine = await specialist.until(
                "(() => { const el = document.getElementById('my-quality');"
                " return ['fair', 'poor'].includes(el.dataset.quality)"
                " && el.textContent.includes('Your network') && el.textContent; })()",
                timeout_s=30,
            )
            assert "% of what you" in mine
            # The chair: the specialist's tile is fair or poor, in words naming their network.
            words = await chair.until(
                f"{RATING.format(tile=specialist_tile)} !== 'good'"
                f' && {WHY.format(tile=specialist_tile)}.includes("Dr Ana Silva\'s network")'
                f" && {WHY.format(tile=specialist_tile)}",
                timeout_s=30,
            )
            rating = await chair.page.evaluate(RATING.format(tile=specialist_tile))
            assert rating in ("fair", "poor")
            assert "Dr Ana Silva's network" in await chair.page.locator(
                f"{specialist_tile} .tile-quality"
            ).get_attribute("title"), words
            # The third participant, on a clean link, stays good at the chair's end.
            assert await chair.page.evaluate(RATING.format(tile=third_tile)) == "good"
            assert await chair.page.evaluate(WHY.format(tile=third_tile)) == ""
            await asyncio.sleep(2)
            assert await chair.page.evaluate(RATING.format(tile=third_tile)) == "good"
            # And the chair's own downlink is not blamed for it. (What the chair sends may
            # itself show some loss on a loaded machine: the SFU drops media that waited past
            # its real-time bound, and says so honestly; that is not the specialist's link.)
            mine_at_chair = await chair.page.evaluate(
                "window.consilium.state().quality[window.consilium.state().participantId]"
            )
            assert not [
                p for p in mine_at_chair["problems"] if p["key"].startswith("quality.mine_down")
            ], mine_at_chair
            for tab in (chair, specialist, third):
                no_page_problems(tab)
            await chair.page.hover(specialist_tile)  # the words show on hover
            await screenshot(chair, "quality-chair")
            await screenshot(specialist, "quality-specialist")
            # The badges, the words and my own indicator as they are now, checked by axe.
            await no_axe_violations(chair, "room, a tile's quality words shown")
            await no_axe_violations(specialist, "room, my own connection fair or poor")
        except AssertionError as exc:
            states = {
                name: json.dumps(await tab.page.evaluate("window.consilium.state().quality"))
                for name, tab in (("chair", chair), ("specialist", specialist), ("third", third))
            }
            details = f"{states}\n{proxy.counters}\n{await diagnosis(meeting)}"
            raise AssertionError(f"{exc}\n{details}") from None
    finally:
        proxy.close()


SMALL_CAMERA = """
(() => {
  // A camera that sends a small picture (160x90): what a subscriber gets of a simulcast
  // publisher whose high layers do not reach it.
  const devices = navigator.mediaDevices;
  const getUserMedia = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    for (const track of stream.getVideoTracks()) {
      await track.applyConstraints({ width: 160, height: 90 });
    }
    return stream;
  };
})();
"""


def second_with_a_small_camera(chromium: OpenTab) -> OpenTab:
    """`chromium`, whose second page (the specialist of `meet_through_the_lobby`) sends a small
    picture."""
    return second_tab_with(chromium, SMALL_CAMERA)


LOWER = "lower picture quality"
"""In the words of `quality.*_lower_layer` (en)."""


async def test_a_small_picture_in_a_large_tile_is_said_and_a_thumbnail_of_it_is_not(
    serve_process: Any, chromium: OpenTab
) -> None:
    browsers = second_with_a_small_camera(chromium)
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), browsers)
    third, third_id = await admit_another(
        meeting, chromium, sub="dr-okafor", role="radiologist", name="Dr Ngozi Okafor"
    )
    chair = meeting.chair
    specialist_tile, third_tile = tile(meeting.specialist_id), tile(third_id)
    why = WHY.format(tile=specialist_tile)
    try:
        await chair.until(
            f'document.querySelector("{specialist_tile} video").videoHeight === 90', 20
        )
        # The specialist pinned large: a 90-pixel picture drawn several times its size, while
        # Dr Okafor's arrives as large as her thumbnail draws it: the specialist's side.
        # (Until Dr Okafor's picture has been compared for a few seconds too, there is nothing to
        # compare with: the words say it is between us.)
        await chair.until(f'document.querySelector("{third_tile} video").videoHeight > 0', 20)
        await chair.page.click(f"{specialist_tile} .tile-pin")
        theirs = "Dr Ana Silva's network"
        await chair.until(f'{why}.includes("{LOWER}") && {why}.includes("{theirs}")', 15)
        assert await chair.page.evaluate(RATING.format(tile=specialist_tile)) == "fair"
        assert LOWER not in await chair.page.evaluate(WHY.format(tile=third_tile))
        mine = await chair.page.evaluate("document.getElementById('my-quality').textContent")
        assert LOWER not in mine
        await chair.page.hover(specialist_tile)
        await screenshot(chair, "quality-small-picture")
        # My own tile pinned instead: the specialist is a thumbnail, as large as the picture.
        await chair.page.click(f"{tile(meeting.chair_id)} .tile-pin")
        await chair.until(f"!{why}.includes('{LOWER}')", 15)
        for tab in (chair, third):
            no_page_problems(tab)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnosis(meeting)}") from None
