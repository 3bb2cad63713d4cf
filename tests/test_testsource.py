"""The replayed media of `consilium bot`: encoded once, valid VP8/Opus, sent by aiortc as is."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import av
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError

from bot.testsource import (
    AUDIO_CLOCK_RATE,
    VIDEO_CLOCK_RATE,
    ReplayAudioTrack,
    ReplayVideoTrack,
    encode_test_pattern,
    encode_tone,
)
from sfu import ice


def decode(codec_name: str, clip: list[bytes]) -> list[Any]:
    """Decode a clip's packets in order with PyAV (video or audio frames)."""
    codec: Any = av.CodecContext.create(codec_name, "r")
    frames: list[Any] = []
    for data in clip:
        frames.extend(codec.decode(av.Packet(data)))
    return frames


def test_clip_starts_with_a_keyframe_and_has_one_every_interval() -> None:
    clip = encode_test_pattern(keyframe_interval=30)
    assert len(clip) == 60
    assert [i for i, frame in enumerate(clip) if frame.keyframe] == [0, 30]
    assert all(frame.duration == VIDEO_CLOCK_RATE // 30 for frame in clip)


def test_shorter_keyframe_interval_is_honoured() -> None:
    clip = encode_test_pattern(width=160, height=120, seconds=1.0, keyframe_interval=10)
    assert [i for i, frame in enumerate(clip) if frame.keyframe] == [0, 10, 20]


def test_every_frame_differs() -> None:
    clip = encode_test_pattern()
    assert len({frame.data for frame in clip}) == len(clip)
    pictures = decode("libvpx", [frame.data for frame in clip])
    planes = [bytes(picture.planes[0]) for picture in pictures]
    assert len(set(planes)) == len(planes)


def test_clip_decodes_to_640x480_at_about_the_bitrate() -> None:
    clip = encode_test_pattern(bitrate=1_000_000)
    pictures = decode("libvpx", [frame.data for frame in clip])
    assert len(pictures) == len(clip)
    assert {(picture.width, picture.height) for picture in pictures} == {(640, 480)}
    bits_per_second = sum(len(frame.data) for frame in clip) * 8 / 2.0
    assert 300_000 < bits_per_second < 2_000_000


def test_clip_is_encoded_once_per_process() -> None:
    first, second = encode_test_pattern(), encode_test_pattern()
    assert first == second
    assert all(a is b for a, b in zip(first, second, strict=True))


def test_tone_decodes_to_48_khz_audio_in_20_ms_packets() -> None:
    clip = encode_tone(seconds=1.0)
    assert len(clip) == 50
    assert all(packet.duration == 960 and packet.keyframe for packet in clip)
    frames = decode("libopus", [packet.data for packet in clip])
    assert {frame.sample_rate for frame in frames} == {AUDIO_CLOCK_RATE}
    assert sum(frame.samples for frame in frames) == 50 * 960
    # A voice's bitrate (what a browser's microphone sends), not a pure tone's VBR overshoot.
    payload_bps = sum(len(packet.data) for packet in clip) * 8
    assert 28_000 <= payload_bps <= 36_000, payload_bps


async def test_replayed_video_has_increasing_pts_at_about_30_fps() -> None:
    track = ReplayVideoTrack()
    start = time.monotonic()
    packets = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - start
    pts = [packet.pts for packet in packets]
    assert pts == [i * 3000 for i in range(10)]
    assert all(packet.time_base == track.time_base for packet in packets)
    assert float(track.time_base) == 1 / VIDEO_CLOCK_RATE
    # Nine frame intervals of 33 ms: paced, not sent at once (bounds loose for busy machines).
    assert 0.2 < elapsed < 3.0
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_replay_loops_forever_and_each_loop_starts_on_a_keyframe() -> None:
    clip = encode_test_pattern(width=160, height=120, seconds=0.2, keyframe_interval=30)
    track = ReplayVideoTrack(clip)
    track._start = time.monotonic() - 3600  # as if an hour late: nothing to wait for
    packets = [await track.recv() for _ in range(3 * len(clip) + 1)]
    assert [packet.pts for packet in packets] == [i * 3000 for i in range(len(packets))]
    restarts = packets[:: len(clip)]
    assert all(packet.is_keyframe and bytes(packet) == clip[0].data for packet in restarts)


async def test_replayed_audio_is_timed_at_48_khz() -> None:
    track = ReplayAudioTrack()
    packets = [await track.recv() for _ in range(3)]
    assert [packet.pts for packet in packets] == [0, 960, 1920]
    assert float(packets[0].time_base) == 1 / AUDIO_CLOCK_RATE


@pytest.fixture
async def loopback_ice() -> AsyncIterator[None]:
    """ICE gathering on 127.0.0.1 only: the suite runs in a namespace with nothing else."""
    ice.install(ice.IceSettings(host_addresses=("127.0.0.1",)))
    try:
        yield
    finally:
        ice.uninstall()


async def first_frames(track: MediaStreamTrack, count: int) -> list[Any]:
    """The first `count` decoded frames of a received track."""
    return [await track.recv() for _ in range(count)]


async def test_aiortc_sends_replayed_packets_without_encoding(
    loopback_ice: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_encoding(*args: Any) -> Any:
        raise AssertionError("a replayed track must be packed, not encoded")

    monkeypatch.setattr(Vp8Encoder, "encode", no_encoding)
    monkeypatch.setattr(OpusEncoder, "encode", no_encoding)
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    received: dict[str, asyncio.Future[MediaStreamTrack]] = {
        "audio": asyncio.get_running_loop().create_future(),
        "video": asyncio.get_running_loop().create_future(),
    }
    receiver.on("track", lambda track: received[track.kind].set_result(track))
    sender.addTrack(ReplayVideoTrack())
    sender.addTrack(ReplayAudioTrack())
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(
            RTCSessionDescription(sdp=receiver.localDescription.sdp, type="answer")
        )
        video = await asyncio.wait_for(received["video"], 10)
        audio = await asyncio.wait_for(received["audio"], 10)
        pictures = await asyncio.wait_for(first_frames(video, 10), 15)
        sounds = await asyncio.wait_for(first_frames(audio, 10), 15)
    finally:
        with contextlib.suppress(Exception):
            await sender.close()
        with contextlib.suppress(Exception):
            await receiver.close()
    assert {(picture.width, picture.height) for picture in pictures} == {(640, 480)}
    assert {sound.sample_rate for sound in sounds} == {AUDIO_CLOCK_RATE}
