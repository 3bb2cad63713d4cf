"""Cameras that were on before the chair pressed Start are in the recording (real Chromium).

Chromium, like every browser, sends a keyframe when its camera starts and then only when asked.
Here both people's cameras have been on and decoded for seconds before the recording starts; the
recording must still hold each camera from a keyframe on: `verify` says intact, and the export an
archivist downloads decodes (PyAV) to at least 150 frames per camera for 12 s recorded. A screen
shared during the recording is in it too.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import av

from recorder.manifest import read_manifest
from tests.fixtures.browser import (
    ICE_ENV,
    OpenTab,
    meet_through_the_lobby,
    no_page_problems,
    start_recording_with_consent,
)

RECORDED_S = 12.0
"""How long the meeting is recorded."""
MIN_FRAMES = 150
"""Decoded frames per camera the export must hold (Chromium's fake camera runs at 20-30 fps)."""


def _download(url: str, token: str, out: Path) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=120) as response, out.open("wb") as file:
        while chunk := response.read(1 << 20):
            file.write(chunk)


def _decoded_frames(path: Path) -> dict[str, int]:
    """Frames decoded per video stream of an exported file, by the stream's track id."""
    counts: dict[str, int] = {}
    with av.open(str(path)) as container:
        for stream in container.streams.video:
            counts[stream.metadata.get("track", str(stream.index))] = 0
        for packet in container.demux(*container.streams.video):
            track = packet.stream.metadata.get("track", str(packet.stream.index))
            try:
                counts[track] += len(packet.decode())
            except av.error.FFmpegError:
                pass
    return counts


async def test_cameras_on_before_start_are_recorded_and_exported(
    serve_process: Any, chromium: OpenTab, tmp_path: Path
) -> None:
    serve = serve_process(env={**ICE_ENV, "CONSILIUM_RECORDING_SEGMENT_SECONDS": "2"})
    meeting = await meet_through_the_lobby(serve, chromium)
    chair, specialist = meeting.chair, meeting.specialist
    # The cameras' first keyframes are long gone by the time anyone presses Start.
    await asyncio.sleep(3)

    recording_id = await start_recording_with_consent(meeting)
    await asyncio.sleep(RECORDED_S / 3)
    # A screen share that starts while recording is recorded too (its own track).
    await chair.page.click("#screen-button")
    await chair.until("window.consilium.state().media.sharing === true")
    await asyncio.sleep(RECORDED_S * 2 / 3)
    await chair.page.click("#stop-recording-button")
    await specialist.until("document.getElementById('recording-indicator').hidden")
    directory = serve.data_dir / "recordings" / recording_id
    for _ in range(100):
        if read_manifest(directory)[0].status == "complete":
            break
        await asyncio.sleep(0.1)

    manifest = read_manifest(directory)[0]
    cameras = {
        t.track_id: t.participant_id
        for t in manifest.tracks
        if t.kind == "video" and t.source == "camera"
    }
    assert set(cameras.values()) == {meeting.chair_id, meeting.specialist_id}, manifest.tracks
    (screen,) = [t.track_id for t in manifest.tracks if t.kind == "video" and t.source == "screen"]

    archivist = meeting.idp.mint(
        sub="arch-1", role="archivist", name="Mo Records", depts=["oncology", "cardiology"]
    )
    verified = await asyncio.to_thread(
        _api_json, f"{serve.url}/api/recordings/{recording_id}/verify", archivist
    )
    assert verified["ok"] is True, verified
    out = tmp_path / "export.webm"
    url = f"{serve.url}/api/recordings/{recording_id}/export"
    await asyncio.to_thread(_download, url, archivist, out)
    frames = await asyncio.to_thread(_decoded_frames, out)
    print("\ndecoded frames per camera:", frames)
    for track_id, participant_id in cameras.items():
        assert frames.get(track_id, 0) >= MIN_FRAMES, (participant_id, frames)
    assert frames.get(screen, 0) > 0, frames
    for tab in (chair, specialist):
        no_page_problems(tab)


def _api_json(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url, method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))
