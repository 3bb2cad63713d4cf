"""The bot's simulcast camera (`bot.simulcast`, `consilium bot --simulcast`): three VP8 layers
sent as a browser sends them, a keyframe only when the SFU asks for one."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
from typing import Any

from bot.client import MediaClient
from bot.simulcast import SimulcastSender, encode_layers, keyframe_requests, simulcast_offer
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import REPO, eventually


def _pli(ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, 1, ssrc)


def _fir(*ssrcs: int) -> bytes:
    entries = b"".join(struct.pack("!IB3x", ssrc, n) for n, ssrc in enumerate(ssrcs))
    return struct.pack("!BBHII", 0x84, 206, 2 + 2 * len(ssrcs), 1, 0) + entries


def _receiver_report() -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, 7)


def test_keyframe_requests_are_read_from_a_compound_packet() -> None:
    compound = _receiver_report() + _pli(1111) + _fir(2222, 3333)
    assert keyframe_requests(compound) == [1111, 2222, 3333]
    assert keyframe_requests(_receiver_report()) == []
    assert keyframe_requests(_pli(1111)[:10]) == [], "a cut packet is ignored, not misread"


def test_the_clip_loops_without_a_keyframe_and_has_one_for_every_frame_on_request() -> None:
    layers = encode_layers(320, 180, 600_000, seconds=0.5)
    assert [(layer.rid, layer.width, layer.height) for layer in layers] == [
        ("q", 80, 44), ("h", 160, 90), ("f", 320, 180)]  # fmt: skip
    for layer in layers:
        sent = [layer.frame_at(position, keyframe=False) for position in range(60)]
        assert sent[0].keyframe and not any(frame.keyframe for frame in sent[1:])
        assert layer.frame_at(37, keyframe=True).keyframe
        assert layer.frame_at(37, keyframe=True) is layer.keyframes[37 % (len(layer.frames) - 1)]


def test_the_offer_names_three_layers() -> None:
    offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97\r\n"
    offer += "a=mid:1\r\n"
    munged = simulcast_offer(offer)
    video = munged[munged.index("m=video") :]
    assert "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f" in video
    assert "a=simulcast" not in munged[: munged.index("m=video")]


def _width(client: MediaClient) -> int:
    return next((t.width for t in client.stats.tracks.values() if t.kind == "video"), 0)


async def test_a_late_subscriber_sees_the_camera_because_the_sfu_asks_for_keyframes(
    media: MediaHarness,
) -> None:
    sender = SimulcastSender(encode_layers(640, 360, 1_000_000))
    await media.join("a", [], simulcast=sender)
    # Past the clip's first (and only unasked) keyframe and one loop of it.
    await eventually(lambda: sender.frames_sent > 70, timeout=15)
    subscriber = await media.join("b", [])
    await eventually(lambda: subscriber.stats.frames("video") > 15, timeout=15)
    assert max(sender.keyframes_sent.values()) > 1, "the SFU asked for a keyframe"
    await eventually(lambda: _width(subscriber) == 640, timeout=10)

    mid = next(t.mid for t in subscriber.stats.tracks.values() if t.kind == "video")
    asked = sender.keyframes_sent["q"]
    media.server.show("b", {mid: (160, 90)})  # a thumbnail: the quarter layer
    await eventually(lambda: _width(subscriber) == 160, timeout=10)
    assert sender.keyframes_sent["q"] > asked, "the switch waited for the layer's keyframe"
    frames = subscriber.stats.frames("video")
    await asyncio.sleep(1.0)
    assert subscriber.stats.frames("video") > frames + 15
    assert not media.errors


def test_consilium_bot_publishes_in_simulcast(serve_process: Any) -> None:
    """Two bots a few seconds apart: the second decodes the first only if a keyframe is sent
    when asked (the clip has no other)."""
    serve = serve_process(env={"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1"})
    result = subprocess.run(
        [sys.executable, "-m", "consilium.cli", "bot", "--server", serve.url, "--room", "load",
         "--count", "2", "--stagger", "3", "--seconds", "7", "--simulcast", "--video-size",
         "320x180", "--json", "--data-dir", str(serve.data_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bots"] == 2 and not report.get("errors"), report
    assert report["video_frames_decoded_min"] > 30, report
    assert report["frames_decoded"]["audio"] > 100, report
