"""A browser that cannot decode the room's video codec: Firefox ESR as Debian ships it has no
H.264 (its H.264 is Cisco's OpenH264 plugin, which Firefox downloads at first use: a download
this test's profile, and many hospital networks, block), in a room whose video is H.264 (a node
with `video_codecs = ["H264"]`, or a room whose first publisher offered only H.264).

Firefox rejects the video of the SFU's subscribe offer (port 0, outside its bundle). The SFU
used to refuse that whole answer, so Firefox received nothing, not even the audio it accepted;
now it applies the rest (`sfu.rejected`), offers that participant no video again, and tells the
page why in words, while both sides hear each other."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    MEDIA_TIMEOUT_S,
    ROOM,
    OpenTab,
    join_from_the_prejoin_screen,
)
from tests.fixtures.firefox import OpenFirefox
from tests.test_firefox import (
    diagnosis,
    evaluate,
    meet_chromium_and_firefox,
    received_from,
)

FIREFOX_VIDEO = """
(async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video");
  const offer = await pc.createOffer();
  pc.close();
  return offer.sdp.split("\\n").filter((l) => l.startsWith("a=rtpmap:")).map((l) => l.trim());
})()
"""


async def samples_received(tab: Any, sender: str) -> int:
    audio = (await received_from(tab, sender)).get("audio", {})
    return int(audio.get("totalSamplesReceived", 0))


async def test_firefox_without_h264_in_an_h264_room_hears_and_is_heard_and_is_told_why(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    serve = serve_process(env={**ICE_ENV, "CONSILIUM_VIDEO_CODECS": "H264"})
    meeting = await meet_chromium_and_firefox(serve, chromium, firefox, decoding=False)
    chair, specialist = meeting.chair, meeting.specialist
    codecs = " ".join(await specialist.evaluate(FIREFOX_VIDEO))
    assert "VP8" in codecs and "H264" not in codecs, f"this Firefox has H.264: {codecs}"

    # Audio flows both ways: Firefox's subscribe answer was applied, video rejected and all.
    deadline = time.monotonic() + MEDIA_TIMEOUT_S
    while True:
        heard = (
            await samples_received(chair, meeting.specialist_id),
            await samples_received(specialist, meeting.chair_id),
        )
        if min(heard) > 48_000:  # a second of audio each way
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"no audio both ways: {heard}\n{await diagnosis(meeting)}")
        await asyncio.sleep(0.5)
    before = heard
    await asyncio.sleep(2)
    assert await samples_received(chair, meeting.specialist_id) > before[0]
    assert await samples_received(specialist, meeting.chair_id) > before[1]

    state = await specialist.evaluate("window.consilium.state()")
    assert state["connection"]["subscribe"] == "connected", await diagnosis(meeting)
    # Firefox is told why, in words; the chair's page carries no error.
    assert state["notice"] == "room.error_receive_codec_unsupported", await diagnosis(meeting)
    assert any("receive_codec_unsupported" in e and "H264" in e for e in state["errors"]), state
    assert any("codec_unsupported" in e and "H264" in e for e in state["errors"]), state
    text = await specialist.evaluate("document.body.innerText")
    assert "H.264" in text and "hear" in text
    assert not any("bad_media_request" in e for e in state["errors"]), state["errors"]
    # No video is offered to Firefox: its subscriptions carry the chair's microphone only.
    assert [(t["participant_id"], t["kind"]) for t in state["tracks"]] == [
        (meeting.chair_id, "audio")
    ]
    chair_state = await evaluate(chair, "window.consilium.state()")
    assert chair_state["errors"] == []
    assert {(t["participant_id"], t["kind"]) for t in chair_state["tracks"]} == {
        (meeting.specialist_id, "audio")
    }

    # A second person joins from Chromium with their camera on: their video is not offered to
    # Firefox (no new error, no renegotiation that fails), their audio is; the chair sees them.
    errors = len(state["errors"])
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    token = idp.mint(sub="dr-li", role="chair", name="Dr Li Na", depts=["oncology"], rooms=[ROOM])
    second = await chromium(f"{serve.url}/join/{ROOM}#token={token}")
    await join_from_the_prejoin_screen(second)
    second_id = await second.until("window.consilium.state().participantId")
    await chair.until(
        "window.consilium.state().tracks.filter((t) => t.kind === 'video').length === 1", 20
    )
    await specialist.until(
        f"window.consilium.state().tracks.some((t) => t.participant_id === '{second_id}')", 20
    )
    await asyncio.sleep(2)
    state = await specialist.evaluate("window.consilium.state()")
    assert sorted(t["kind"] for t in state["tracks"]) == ["audio", "audio"], state["tracks"]
    assert len(state["errors"]) == errors, state["errors"]
    assert state["connection"]["subscribe"] == "connected"
    heard = await samples_received(specialist, second_id)
    await asyncio.sleep(1.5)
    assert await samples_received(specialist, second_id) > heard
    assert specialist.page_errors == []
