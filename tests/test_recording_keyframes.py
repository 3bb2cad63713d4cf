"""A recording's video starts at a keyframe, and the SFU asks for one.

Browsers (and aiortc's own encoder) send a keyframe when they start and then only when asked.
A recording that starts, or a participant whose consent arrives, mid-stream must therefore ask
the publisher (PLI) and begin each video track at the keyframe that answers; a video track that
never got one is a lost video, and `verify` says so.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import VideoStreamTrack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.media.rtp import parse_header
from core.media.track import TrackInfo
from recorder.export import export_recording
from recorder.manifest import ConsentRecord, RecordedParticipant
from recorder.sink import RecordingSink
from recorder.verify import verify_recording
from sfu.forwarder import PublishedTrack
from tests.fixtures.media import MediaHarness
from tests.fixtures.recordings import DATA_KEY, rtp_packet
from tests.fixtures.servers import eventually
from tests.test_sfu_rtp import IDS, VP8_DELTA, VP8_KEY

VIDEO = TrackInfo("mdt-1", "alice", "alice:0", "video", "video/VP8", 90000, 96, "camera")


def _is_pli(packet: bytes) -> bool:
    return len(packet) >= 12 and packet[1] == 206 and packet[0] & 0x1F == 1


def _packet(sequence: int, payload: bytes) -> bytes:
    header = bytes([0x80, 96]) + sequence.to_bytes(2, "big") + (sequence * 3000).to_bytes(4, "big")
    return header + (1234).to_bytes(4, "big") + payload


def test_a_sink_waiting_for_a_keyframe_makes_the_forwarder_ask_the_publisher(
    tmp_path: Path,
) -> None:
    sink = RecordingSink(
        tmp_path, "rec-kf", "mdt-1", DATA_KEY, Ed25519PrivateKey.generate(), record_everyone=True
    )
    sink.start()
    to_publisher: list[bytes] = []
    track = PublishedTrack(
        VIDEO, ssrc=1234, rtx_ssrc=None, rtx_payload_type=None, ext_ids=IDS, rtcp_ssrc=55,
        send_rtcp=lambda b: to_publisher.append(b) or True, sinks=[sink],
    )  # fmt: skip
    for sequence in range(20):  # mid-stream: delta frames only
        data = _packet(sequence, VP8_DELTA + bytes(100))
        track.forward(data, parse_header(data), 0)
    # One request, not one per packet (the publisher's rate limit), and nothing stored yet.
    assert len([p for p in to_publisher if _is_pli(p)]) == 1
    for sequence in range(20, 40):
        payload = VP8_KEY if sequence == 20 else VP8_DELTA
        data = _packet(sequence, payload + bytes(100))
        track.forward(data, parse_header(data), 0)
    manifest = sink.stop()
    assert manifest.streams["track-0"][0].records == 20  # from the keyframe on
    assert manifest.tracks[0].before_keyframe == 20


def test_a_video_track_without_a_keyframe_fails_verification(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    # Never a keyframe: every packet left out, and the manifest says how many.
    never = RecordingSink(tmp_path, "rec-never", "mdt-1", DATA_KEY, key, record_everyone=True)
    never.start()
    for sequence in range(50):
        assert never.on_rtp(VIDEO, rtp_packet(sequence, sequence * 3000, 1), 0, False)
    never.stop()
    report = verify_recording(tmp_path / "rec-never", DATA_KEY, key.public_key())
    assert not report.ok
    assert "50 video packets arrived but no keyframe" in "; ".join(report.problems)
    # Stored from a packet said to start a keyframe that does not decode (a lying or broken
    # publisher): the stored video cannot be played, and verification says so.
    broken = RecordingSink(tmp_path, "rec-broken", "mdt-1", DATA_KEY, key, record_everyone=True)
    broken.start()
    for sequence in range(50):
        broken.on_rtp(VIDEO, _packet(sequence, VP8_KEY + bytes(100)), 0, True)
    broken.stop()
    report = verify_recording(tmp_path / "rec-broken", DATA_KEY, key.public_key())
    assert not report.ok
    assert "no keyframe that decodes" in "; ".join(report.problems)
    # The same with a real keyframe first verifies.
    good = RecordingSink(tmp_path, "rec-good", "mdt-1", DATA_KEY, key, record_everyone=True)
    good.start()
    for sequence in range(50):
        packet = rtp_packet(sequence, sequence * 3000, 1, keyframe=sequence == 0)
        good.on_rtp(VIDEO, packet, 0, sequence == 0)
    good.stop()
    assert verify_recording(tmp_path / "rec-good", DATA_KEY, key.public_key()).ok


class Camera(VideoStreamTrack):
    """A camera as a browser drives it: aiortc's VP8 encoder sends a keyframe when it starts
    and then only when asked (its keyframe interval is 3000 frames)."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        picture = np.full((120, 160, 3), (pts // 3000) % 200, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return sum(1 for _ in container.decode(video))


async def _camera_already_on(media: MediaHarness) -> list[bytes]:
    """Alice's camera, on for a while (its only unasked keyframe long past); the PLIs the SFU
    sends her from now on are collected."""
    await media.join("alice", [Camera()])
    room = media.server.room("mdt-1")
    await eventually(lambda: any(t.received > 60 for t in room.tracks()), timeout=20)
    (track,) = room.tracks()
    sent: list[bytes] = []
    original = track.send_to_publisher

    def spy(packet: bytes) -> bool:
        sent.append(packet)
        return original(packet)

    track.send_to_publisher = spy
    return sent


async def _check_recorded(directory: Path, key: Ed25519PrivateKey, seconds: float) -> None:
    report = verify_recording(directory, DATA_KEY, key.public_key())
    assert report.ok, report.problems
    out = directory.parent / f"{directory.name}.webm"
    result = await asyncio.to_thread(
        export_recording, directory, DATA_KEY, out, public_key=key.public_key()
    )
    assert [s.kind for s in result.streams] == ["video"] and not result.lost_video
    frames = _decoded_frames(out)
    assert frames >= seconds * 30 * 0.6, frames


async def test_starting_a_recording_asks_a_camera_that_is_already_on_for_a_keyframe(
    media: MediaHarness, tmp_path: Path
) -> None:
    sent = await _camera_already_on(media)
    key = Ed25519PrivateKey.generate()
    sink = RecordingSink(tmp_path, "rec-start", "mdt-1", DATA_KEY, key, record_everyone=True)
    sink.start()
    media.server.attach_sink("mdt-1", sink)
    await eventually(lambda: any(_is_pli(p) for p in sent), timeout=5)
    await asyncio.sleep(3)
    media.server.detach_sink("mdt-1", sink)
    manifest = await asyncio.to_thread(sink.stop)
    assert manifest.streams[manifest.tracks[0].stream], "the camera's video was not recorded"
    await _check_recorded(tmp_path / "rec-start", key, 3)


async def test_consent_arriving_asks_for_a_keyframe(media: MediaHarness, tmp_path: Path) -> None:
    sent = await _camera_already_on(media)
    key = Ed25519PrivateKey.generate()
    sink = RecordingSink(tmp_path, "rec-consent", "mdt-1", DATA_KEY, key)
    sink.start()
    sink.add_participant(RecordedParticipant("alice", "dr-alice", "Dr Alice", "chair", ["onc"]))
    media.server.attach_sink("mdt-1", sink)
    await asyncio.sleep(1)
    assert not any(_is_pli(p) for p in sent)  # not recorded yet: nothing to ask for
    sink.record_consent(
        ConsentRecord("alice", "dr-alice", "granted", "client", "t", sink.now_ms(), "v1")
    )
    await eventually(lambda: any(_is_pli(p) for p in sent), timeout=5)
    await asyncio.sleep(3)
    media.server.detach_sink("mdt-1", sink)
    await asyncio.to_thread(sink.stop)
    await _check_recorded(tmp_path / "rec-consent", key, 3)


def test_a_manifest_without_packets_before_a_keyframe_signs_as_before(tmp_path: Path) -> None:
    # Manifests written before the count existed must still verify: a zero count is not signed.
    sink = RecordingSink(
        tmp_path, "rec-old", "mdt-1", DATA_KEY, Ed25519PrivateKey.generate(), record_everyone=True
    )
    sink.start()
    sink.on_rtp(VIDEO, rtp_packet(0, 0, 1, keyframe=True), 0, True)
    manifest = sink.stop()
    assert manifest.tracks[0].before_keyframe == 0
    assert "before_keyframe" not in manifest.body()["tracks"][0]


def test_a_gap_in_a_recorded_video_asks_for_a_keyframe(tmp_path: Path) -> None:
    # Alone in the room nobody else would ask: lost packets would break the stored video until
    # the publisher's next keyframe, which a browser sends only when asked.
    sink = RecordingSink(
        tmp_path, "rec-gap", "mdt-1", DATA_KEY, Ed25519PrivateKey.generate(), record_everyone=True
    )
    sink.start()
    asked = []
    for sequence in (0xFFFE, 0xFFFF, 0, 2, 1, 3):  # wraps round; 1 is lost, then comes late
        first = sequence == 0xFFFE
        packet = rtp_packet(sequence, sequence * 3000, 1, keyframe=first)
        asked.append(sink.on_rtp(VIDEO, packet, 0, first))
    assert asked == [False, False, False, True, False, False]
    assert sink.stop().streams["track-0"][0].records == 6
