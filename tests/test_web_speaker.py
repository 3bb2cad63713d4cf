"""The speaker view in real Chromium: the SFU tells the room who speaks (`active_speaker`), the
page shows that person large; a pinned tile beats the speaker; a shared screen brings the presenter
layout; the layout button goes back to the grid."""

from __future__ import annotations

from typing import Any

from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    BrowserTab,
    OpenTab,
    join_from_the_prejoin_screen,
    meet_through_the_lobby,
    no_axe_violations,
    no_page_problems,
    page_state,
    screenshot,
    tile,
)

VOICE = """
(() => {
  // A voice instead of Chromium's fake microphone (a 20 ms beep twice a second, which no
  // speaker detector should take for speech): a 300 Hz tone switched on and off three times a
  // second, like words and the pauses between them.
  const devices = navigator.mediaDevices;
  const getUserMedia = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    if (!constraints || !constraints.audio) return stream;
    const context = new AudioContext();
    const voice = context.createOscillator();
    voice.frequency.value = 300;
    const words = context.createGain();
    words.gain.value = 0.5;
    const syllables = context.createOscillator();
    syllables.type = "square";
    syllables.frequency.value = 3;
    const depth = context.createGain();
    depth.gain.value = 0.5;
    syllables.connect(depth).connect(words.gain);
    const out = context.createMediaStreamDestination();
    voice.connect(words).connect(out);
    voice.start();
    syllables.start();
    for (const track of stream.getAudioTracks()) {
      stream.removeTrack(track);
      track.stop();
    }
    stream.addTrack(out.stream.getAudioTracks()[0]);
    return stream;
  };
})();
"""


async def _talker(meeting: Any, chromium: OpenTab) -> tuple[BrowserTab, str]:
    """Dr Okafor joins with a voice that talks, and the chair admits her."""
    token = meeting.idp.mint(
        sub="dr-okafor", role="specialist", name="Dr Ngozi Okafor", depts=["oncology"],
        rooms=[ROOM],
    )  # fmt: skip
    tab = await chromium("about:blank")
    await tab.context.add_init_script(VOICE)
    await tab.page.goto(f"{meeting.serve.url}/join/{ROOM}#token={token}")
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().lobbyReason === 'lobby_enabled'")
    admit = meeting.chair.page.locator("#lobby-list li", has_text="Dr Ngozi Okafor")
    await admit.locator(".chair-admit").click()
    await tab.until("window.consilium.state().screen === 'room'")
    return tab, str((await page_state(tab))["participantId"])


async def _width(tab: BrowserTab, selector: str) -> float:
    return float(
        await tab.page.evaluate(
            f'document.querySelector("{selector}").getBoundingClientRect().width'
        )
    )


async def test_the_speaker_is_shown_large_pinned_beats_speaker_and_a_share_presents(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    for tab in (chair, specialist):  # only Dr Okafor will be heard
        await tab.page.click("#mic-button")
        await tab.until("window.consilium.state().media.audioMuted === true")
    talker, talker_id = await _talker(meeting, chromium)

    # The SFU decides: the one microphone with speech is the room's speaker, for everyone.
    for tab in (chair, specialist, talker):
        await tab.until(f"window.consilium.state().activeSpeaker === '{talker_id}'", 15)
    speaker_tile = tile(talker_id)
    await chair.until(f'document.querySelector("{speaker_tile}").dataset.activeSpeaker === "true"')

    # The grid is the default; the layout button switches to the speaker view.
    grid = "document.getElementById('grid')"
    assert await chair.page.evaluate(f"{grid}.dataset.layout") == "grid"
    assert await chair.page.inner_text("#layout-button") == "Speaker view"
    await chair.page.click("#layout-button")
    await chair.until(f"{grid}.dataset.layout === 'speaker'")
    await chair.until(f'document.querySelector("{speaker_tile}").classList.contains("main")')
    specialist_tile = tile(meeting.specialist_id)
    assert await _width(chair, speaker_tile) > 2 * await _width(chair, specialist_tile)
    await screenshot(chair, "speaker-view")

    # Pinning the specialist (by keyboard) makes their tile the large one, over the speaker.
    pin = chair.page.locator(f"{specialist_tile} .tile-pin")
    assert await pin.get_attribute("aria-label") == "Pin Dr Ana Silva as the large tile"
    await pin.focus()
    await chair.page.keyboard.press("Enter")
    await chair.until(f"{grid}.dataset.layout === 'pinned'")
    await chair.until(f'document.querySelector("{specialist_tile}").classList.contains("main")')
    assert await pin.get_attribute("aria-pressed") == "true"
    assert await _width(chair, specialist_tile) > 2 * await _width(chair, speaker_tile)
    await no_axe_violations(chair, "speaker view")

    # The specialist shares a screen: the presenter layout, the share large.
    await specialist.page.click("#screen-button")
    shared = tile(meeting.specialist_id, "screen")
    await chair.until(f'document.querySelector("{shared}")', timeout_s=15)
    await chair.until(f"{grid}.dataset.layout === 'presenter'")
    await chair.until(f'document.querySelector("{shared}").classList.contains("main")')
    assert await _width(chair, shared) > 2 * await _width(chair, speaker_tile)
    await screenshot(chair, "presenter-layout")

    # And back to the grid: every tile the same size.
    assert await chair.page.inner_text("#layout-button") == "Grid view"
    await chair.page.click("#layout-button")
    await chair.until(f"{grid}.dataset.layout === 'grid'")
    assert await _width(chair, shared) == await _width(chair, speaker_tile)
    for tab in (chair, specialist, talker):
        no_page_problems(tab)
        assert (await page_state(tab))["errors"] == []
