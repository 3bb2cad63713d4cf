"""In the room, in real browsers: my own microphone, camera and screen, another device mid-call,
leaving, the speaking and connection-quality indicators, the participant list, and chair
controls that a specialist neither sees nor may use.

Each test starts from a chair (Dr Chen) and a specialist (Dr Silva) who met through the lobby
and see each other (tests/fixtures/browser.py, `meet_through_the_lobby`).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from core.codes import ErrorCode
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    BrowserTab,
    OpenTab,
    api,
    meet_through_the_lobby,
    no_page_problems,
    page_state,
    received_from,
    screenshot,
    tile,
    until_decoding,
)
from tests.fixtures.servers import RunningNode

CATALOGUES = Path(__file__).resolve().parents[1] / "web" / "i18n"
LANGUAGES = ("en", "zh-CN")
REFUSAL_WORDS = """
async (codes) => {
  const [call, i18n] = await Promise.all([import('/js/call.js'), import('/js/i18n.js')]);
  const words = {};
  for (const lang of ['zh-CN', 'en']) {
    await i18n.setLanguage(lang);
    words[lang] = Object.fromEntries(codes.map((code) => [code, i18n.t(call.refusalNotice(code))]));
  }
  return words;
}
"""

RECORD_DEVICE_TRACKS = """
(() => {
  window.deviceTracks = [];
  const original = MediaDevices.prototype.getUserMedia;
  MediaDevices.prototype.getUserMedia = async function (constraints) {
    const stream = await original.call(this, constraints);
    window.deviceTracks.push(...stream.getTracks());
    return stream;
  };
})();
"""
"""Keeps every track getUserMedia gives from now on in `window.deviceTracks`."""


async def _text(tab: BrowserTab, selector: str) -> str:
    return str(await tab.page.locator(selector).inner_text())


async def _still_decoding(
    tab: BrowserTab, sender: str, source: str = "camera", frames: int = 10
) -> None:
    """Video frames from `sender` keep being decoded by `tab`: more than `frames` over two
    seconds."""
    sources = (source, "microphone")
    # The page's statistics may lag its video element by a moment (Chromium caches them).
    deadline = time.monotonic() + 10
    while "video" not in (received := await received_from(tab, sender, sources)):
        assert time.monotonic() < deadline, f"no inbound video stats from {sender}'s {source}"
        await asyncio.sleep(0.2)
    before = received["video"]["framesDecoded"]
    await asyncio.sleep(2.0)
    after = await received_from(tab, sender, sources)
    assert after["video"]["framesDecoded"] > before + frames, (before, after)
    assert after["video"]["frameWidth"] > 0


async def test_speaking_connection_quality_and_the_participant_list(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    other = tile(meeting.specialist_id)
    # The fake microphone beeps: the specialist's tile shows them speaking at the chair's end.
    await chair.until(f"document.querySelector(\"{other}\").classList.contains('speaking')")
    await chair.until(f"document.querySelector(\"{other} .tile-mic\").textContent === 'Speaking'")
    # Connection quality from the statistics, for them and for me. Loopback has next to no
    # round trip, but a busy machine may drop a packet or two: good or fair, not poor.
    for whose in (other, tile(meeting.chair_id)):
        quality = await chair.until(
            f'document.querySelector("{whose} .tile-quality").dataset.quality'
        )
        assert quality in ("good", "fair")
        words = {"good": "Good connection", "fair": "Fair connection"}[quality]
        assert await _text(chair, f"{whose} .tile-quality") == words

    # The participant list: everyone with role and microphone; the chair's rows have controls.
    rows = chair.page.locator("#participant-list li")
    assert await rows.count() == 2
    assert await rows.nth(0).locator(".person").inner_text() == (
        "Dr Chen Wei (you) · Chair · Microphone on"
    )
    assert await rows.nth(1).locator(".person").inner_text() == (
        "Dr Ana Silva · Specialist · Microphone on"
    )
    assert await rows.nth(1).locator("button").all_inner_texts() == [
        "Mute Dr Ana Silva",
        "Remove Dr Ana Silva",
    ]
    assert await specialist.page.locator("#participant-list li").count() == 2
    assert await specialist.page.locator("#participant-list button").count() == 0
    no_page_problems(chair)


async def test_the_quality_rating_follows_loss_and_round_trip_time(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    tab = await chromium(f"{dev_node.url}/")
    ratings = await tab.page.evaluate(
        """import('/js/quality.js').then((q) => {
            const loss = new q.LossWindow(3);
            loss.add(100, 0);
            loss.add(200, 0);
            loss.add(280, 20);  // 20 lost of the 200 expected since the first sample
            return {
                unknown: q.rateConnection({}),
                loopback: q.rateConnection({ loss: 0, rttMs: 1 }),
                someLoss: q.rateConnection({ loss: 0.05, rttMs: 20 }),
                slow: q.rateConnection({ rttMs: 400 }),
                heavyLoss: q.rateConnection({ loss: 0.2, rttMs: 20 }),
                verySlow: q.rateConnection({ loss: 0, rttMs: 1000 }),
                window: loss.fraction(),
            };
        })"""
    )
    assert ratings == {
        "unknown": None,
        "loopback": "good",
        "someLoss": "fair",
        "slow": "fair",
        "heavyLoss": "poor",
        "verySlow": "poor",
        "window": 0.1,
    }


async def test_a_specialist_sees_no_chair_controls_and_the_server_refuses_them(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    assert not await specialist.page.locator("#chair-panel").is_visible()
    assert not await specialist.page.locator("#lock-button").is_visible()
    assert await specialist.page.locator(".chair-mute, .chair-remove, .chair-admit").count() == 0

    # Sent anyway, through the page's own protocol module: each is refused, nothing happens.
    chair_id = json.dumps(meeting.chair_id)
    for n, action in enumerate(
        (f"m.mute({chair_id})", "m.setLocked(true)", f"m.remove({chair_id})"), start=1
    ):
        await specialist.page.evaluate(f"import('/js/chair.js').then((m) => {action})")
        await specialist.until(f"window.consilium.state().received.error === {n}")
    assert await _text(specialist, "#room-notice") == (
        "Your role does not allow that in this meeting."
    )
    assert all("not_allowed" in error for error in (await page_state(specialist))["errors"])
    await asyncio.sleep(0.5)
    state = await page_state(chair)
    assert state["screen"] == "room" and state["room"]["locked"] is False
    assert all(not p["audio_muted"] for p in state["participants"])
    assert (await page_state(specialist))["screen"] == "room"

    # Every refusal the room's notice shows is in the code's own words, in each language; a code
    # this client has no words for (a newer server's) gets the generic notice.
    catalogues = {
        lang: json.loads((CATALOGUES / f"{lang}.json").read_text("utf-8")) for lang in LANGUAGES
    }
    codes = [str(code) for code in ErrorCode if f"room.error_{code}" in catalogues["en"]]
    assert "already_joined" in codes and "bad_media_request" in codes
    words = await specialist.page.evaluate(REFUSAL_WORDS, [*codes, "a_newer_code"])
    for lang, catalogue in catalogues.items():
        assert words[lang] == {
            **{code: catalogue[f"room.error_{code}"] for code in codes},
            "a_newer_code": catalogue["room.refused"],
        }


async def test_my_microphone_and_camera_buttons_show_on_the_others_tiles(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    theirs = tile(meeting.specialist_id)

    await specialist.page.click("#mic-button")
    await specialist.until(
        "document.getElementById('mic-button').textContent === 'Unmute microphone'"
    )
    await chair.until(f"document.querySelector(\"{theirs}\").dataset.audioMuted === 'true'")
    assert await _text(chair, f"{theirs} .tile-mic") == "Microphone off"
    row = f"#participant-list li[data-participant-id='{meeting.specialist_id}']"
    assert "Microphone off" in await _text(chair, row)
    # A microphone the person turned off themselves gets no chair's "mute" button.
    assert await chair.page.locator(f"{row} .chair-mute").count() == 0
    await specialist.page.click("#mic-button")
    await specialist.until(
        "document.getElementById('mic-button').textContent === 'Mute microphone'"
    )
    await chair.until(f"document.querySelector(\"{theirs}\").dataset.audioMuted === 'false'")

    mine = f'document.querySelector("{theirs} video").srcObject'
    await specialist.page.evaluate(f"window.heldCamera = {mine}.getVideoTracks()[0]")
    await specialist.page.click("#camera-button")
    await specialist.until(
        "document.getElementById('camera-button').textContent === 'Turn camera on'"
    )
    # Turned off is stopped: the capture ends (the camera light goes off), not just disabled.
    await specialist.until("window.heldCamera.readyState === 'ended'")
    await chair.until(f"document.querySelector(\"{theirs}\").classList.contains('no-picture')")
    placeholder = chair.page.locator(f"{theirs} .tile-placeholder")
    assert await placeholder.is_visible()
    assert await placeholder.inner_text() == "DS\nCamera off"
    assert not await chair.page.locator(f"{theirs} video").is_visible()
    # My own tile shows the same.
    assert await specialist.page.locator(f"{theirs} .tile-placeholder").is_visible()
    await asyncio.sleep(0.5)
    await screenshot(chair, "room-camera-off")

    await specialist.page.click("#camera-button")
    await chair.until(f"!document.querySelector(\"{theirs}\").classList.contains('no-picture')")
    assert not await placeholder.is_visible()
    # Turned on again is a new capture from the device, sent in place of the stopped one.
    await specialist.until(
        f"{mine}?.getVideoTracks()[0]?.readyState === 'live'"
        f" && {mine}.getVideoTracks()[0] !== window.heldCamera"
    )
    await _still_decoding(chair, meeting.specialist_id)
    for tab in (chair, specialist):
        no_page_problems(tab)
        assert (await page_state(tab))["errors"] == []


async def test_another_camera_and_microphone_mid_call_replace_the_tracks(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist, me = meeting.chair, meeting.specialist, meeting.specialist_id
    answers = (await page_state(specialist))["received"]["answer"]

    await specialist.page.click(".devices summary")
    camera = specialist.page.locator("#room-camera-select")
    await camera.wait_for(state="visible")
    cameras = ["fake_device_0", "fake_device_1", "fake_device_2"]
    assert await camera.locator("option").all_inner_texts() == cameras
    await camera.select_option(label="fake_device_2")
    await specialist.until(
        f'document.querySelector("{tile(me)} video").srcObject'
        ".getVideoTracks()[0].label === 'fake_device_2'"
    )
    # The old camera is stopped, so frames reaching the chair now come from the new one.
    await _still_decoding(chair, me)

    microphone = specialist.page.locator("#room-microphone-select")
    await microphone.select_option(label="Fake Audio Input 1")
    packets = (await received_from(chair, me))["audio"]["packetsReceived"]
    await asyncio.sleep(1.5)
    assert (await received_from(chair, me))["audio"]["packetsReceived"] > packets + 30

    # Swapped in place: no new offer, no new answer, the session still connected.
    state = await page_state(specialist)
    assert state["received"]["answer"] == answers
    assert state["connection"]["publish"] == "connected"
    assert state["errors"] == []
    # The pre-join pickers follow the choice too.
    assert await specialist.page.locator("#camera-select option:checked").inner_text() == (
        "fake_device_2"
    )
    await screenshot(specialist, "room-devices")
    no_page_problems(specialist)


async def test_a_shared_screen_reaches_the_other_participant(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    await chair.page.click("#screen-button")
    await chair.until("window.consilium.state().media.sharing === true")
    await chair.until("document.getElementById('screen-button').textContent === 'Stop sharing'")

    shared = tile(meeting.chair_id, "screen")
    await specialist.until(f'document.querySelector("{shared}")', timeout_s=15)
    assert await _text(specialist, f"{shared} .tile-name") == "Screen shared by Dr Chen Wei"
    await specialist.until(f'document.querySelector("{shared} video").videoWidth > 0')
    # A screen is sent at the rate its content and the sender's estimate allow: a still fake
    # desktop on a loaded machine (its estimator sees the queueing) may come at 2 fps.
    await _still_decoding(specialist, meeting.chair_id, source="screen", frames=2)
    # The camera goes on alongside.
    await _still_decoding(specialist, meeting.chair_id)
    await screenshot(specialist, "room-screen-share")

    await chair.page.click("#screen-button")
    await chair.until("window.consilium.state().media.sharing === false")
    await chair.until("document.getElementById('screen-button').textContent === 'Share screen'")
    for tab in (chair, specialist):
        no_page_problems(tab)
        assert (await page_state(tab))["errors"] == []
    # The SFU unpublishes the stopped screen: the others' screen tile goes away.
    await specialist.until(f'!document.querySelector("{shared}")', timeout_s=5)


async def test_leaving_and_joining_again_without_a_second_lobby_wait(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    await specialist.page.click("#leave-button")
    await specialist.until("window.consilium.ending() === 'left'")
    await specialist.until(
        "document.getElementById('ended-heading').textContent === 'You left the consultation'"
    )
    await screenshot(specialist, "left")
    await chair.until("document.querySelectorAll('#participant-list li').length === 1")
    await chair.until("document.querySelectorAll('#grid figure').length === 1")

    await specialist.page.click("#rejoin-button")
    await specialist.until("window.consilium.state().screen === 'room'")
    assert (await page_state(specialist))["received"]["lobby"] == 1
    await chair.until("document.querySelectorAll('#participant-list li').length === 2")
    meeting.specialist_id = (await page_state(specialist))["participantId"]
    await until_decoding(meeting)
    no_page_problems(specialist)


async def test_joining_again_a_moment_after_leaving_sees_and_is_seen(
    serve_process: Any, chromium: OpenTab
) -> None:
    """Leave, then Join again 0.2 s later: both see each other, and the server counts both
    (the leave's clean-up does not wait for the WebSocket's close handshake)."""
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    # My camera as my tile shows it, and every track the devices give from now on.
    await specialist.page.evaluate(
        f'window.heldTracks = document.querySelector("{tile(meeting.specialist_id)} video")'
        ".srcObject.getTracks()"
    )
    await specialist.page.evaluate(RECORD_DEVICE_TRACKS)
    await specialist.page.click("#leave-button")
    await specialist.until("window.consilium.ending() === 'left'")
    # The camera is stopped: its light goes off.
    await specialist.until(
        "window.heldTracks.length === 1 && window.heldTracks.every(t => t.readyState === 'ended')"
    )
    await asyncio.sleep(0.2)
    await specialist.page.click("#rejoin-button")
    await specialist.until("window.consilium.state().screen === 'room'")
    meeting.specialist_id = (await page_state(specialist))["participantId"]
    await chair.until("document.querySelectorAll('#participant-list li').length === 2")
    await specialist.until("document.querySelectorAll('#participant-list li').length === 2")
    await until_decoding(meeting)
    room = await asyncio.to_thread(
        api, meeting.serve.url, meeting.specialist_token, "GET", f"/api/rooms/{ROOM}"
    )
    assert room["participants"] == 2
    # Some seconds on (past any close handshake), still both in the room.
    await asyncio.sleep(3)
    assert len((await page_state(chair))["participants"]) == 2
    assert len((await page_state(specialist))["participants"]) == 2
    room = await asyncio.to_thread(
        api, meeting.serve.url, meeting.specialist_token, "GET", f"/api/rooms/{ROOM}"
    )
    assert room["participants"] == 2
    await until_decoding(meeting)
    # Join again opened the devices again; Leave stops every camera and microphone track.
    kinds = "window.deviceTracks.map(t => t.kind).sort().join()"
    assert await specialist.page.evaluate(kinds) == "audio,video"
    await specialist.page.click("#leave-button")
    await specialist.until("window.deviceTracks.every(t => t.readyState === 'ended')")
    await chair.until("document.querySelectorAll('#participant-list li').length === 1")
    no_page_problems(specialist)


async def test_a_closed_annotations_and_chat_channel_is_opened_again(
    serve_process: Any, chromium: OpenTab
) -> None:
    """My ordered data channel closes mid-meeting: the SFU notices (and says so), the page opens
    a new one and catches up, and chat reaches me again, in the same visit."""
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    await specialist.until("window.consilium.state().annotations.synced")
    await specialist.page.evaluate("window.consilium.closeDataChannel()")
    await chair.page.fill("#chat-text", "Is the margin clear on the CT?")
    await chair.page.press("#chat-text", "Enter")
    await specialist.until(
        "document.getElementById('chat-list').textContent.includes('Is the margin clear')", 15
    )
    state = await page_state(specialist)
    assert state["annotations"]["synced"] and state["screen"] == "room"
    assert state["participantId"] == meeting.specialist_id  # not a rejoin
    await asyncio.sleep(0.5)
    assert "reliable data channel closed" in meeting.serve.output()
    no_page_problems(specialist)


async def test_a_camera_turned_off_stays_off_after_joining_again_and_turns_on(
    serve_process: Any, chromium: OpenTab
) -> None:
    """Camera off, Leave, Join again: the camera is not opened (its light stays off); turned on,
    it is asked for again and its video reaches the chair."""
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    await specialist.page.click("#camera-button")
    await specialist.until("window.consilium.state().media.videoMuted === true")
    await specialist.page.evaluate(RECORD_DEVICE_TRACKS)
    await specialist.page.click("#leave-button")
    await specialist.until("window.consilium.ending() === 'left'")
    await specialist.page.click("#rejoin-button")
    await specialist.until("window.consilium.state().screen === 'room'")
    meeting.specialist_id = (await page_state(specialist))["participantId"]
    await specialist.until("window.consilium.state().connection.publish === 'connected'")
    live = "window.deviceTracks.filter(t => t.readyState === 'live').map(t => t.kind).join()"
    assert await specialist.page.evaluate(live) == "audio"
    theirs = tile(meeting.specialist_id)
    await chair.until(f"document.querySelector(\"{theirs}\")?.dataset.videoMuted === 'true'")

    await specialist.page.click("#camera-button")
    await specialist.until("window.consilium.state().media.videoMuted === false")
    assert await specialist.page.evaluate(live) == "audio,video"
    await chair.until(f"!document.querySelector(\"{theirs}\").classList.contains('no-picture')")
    await _still_decoding(chair, meeting.specialist_id)
    no_page_problems(specialist)
    assert (await page_state(specialist))["errors"] == []


async def test_a_reload_and_a_double_click_on_join_bring_the_person_back_once(
    serve_process: Any, chromium: OpenTab
) -> None:
    """What a person does when the picture freezes: reload the page, then click Join twice at
    once. They come back once (no ghost, no second seat), see and are seen."""
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    await specialist.page.reload()
    await specialist.until("window.consilium.state().screen === 'join'")
    await specialist.until("document.getElementById('preview-video').videoWidth > 0")
    await specialist.page.click("#join-button", click_count=2)
    await specialist.until("window.consilium.state().screen === 'room'")
    meeting.specialist_id = (await page_state(specialist))["participantId"]
    await chair.until("document.querySelectorAll('#participant-list li').length === 2")
    await specialist.until("document.querySelectorAll('#participant-list li').length === 2")
    await until_decoding(meeting)
    # Some seconds on (past any replaced connection's close), still one seat each.
    await asyncio.sleep(3)
    assert len((await page_state(chair))["participants"]) == 2
    assert len((await page_state(specialist))["participants"]) == 2
    room = await asyncio.to_thread(
        api, meeting.serve.url, meeting.specialist_token, "GET", f"/api/rooms/{ROOM}"
    )
    assert room["participants"] == 2
    await until_decoding(meeting)
    no_page_problems(specialist)
