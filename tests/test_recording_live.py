"""A real room recorded: aiortc peers publish pre-encoded VP8 and Opus through the SFU, the
recording sink stores what is forwarded, and the recording verifies with every packet there."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from recorder.manifest import read_manifest
from recorder.sink import RecordingSink
from recorder.verify import iter_packets, verify_recording
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually

DATA_KEY = bytes(range(32))


async def test_a_live_room_is_recorded_packet_for_packet(
    media: MediaHarness, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    sink = RecordingSink(tmp_path, "live-1", "mdt-1", DATA_KEY, key, record_everyone=True)
    sink.start()
    media.server.attach_sink("mdt-1", sink)
    await media.join("a", [ReplayAudioTrack(), ReplayVideoTrack()])
    b = await media.join("b", [ReplayAudioTrack(), ReplayVideoTrack()])
    await eventually(lambda: b.stats.frames("video") > 5, timeout=20)

    await asyncio.sleep(3)
    media.server.detach_sink("mdt-1", sink)
    room = media.server.room("mdt-1")
    received = {t.info.track_id: t.received for t in room.tracks()}
    manifest = await asyncio.to_thread(sink.stop)

    report = verify_recording(tmp_path / "live-1", DATA_KEY, key.public_key())
    assert report.ok, report.problems
    assert report.status == "complete"
    assert {t.track_id for t in manifest.tracks} == set(received)
    assert {t.kind for t in manifest.tracks} == {"audio", "video"}
    for track in manifest.tracks:
        stored = report.records[track.stream]
        # Every packet the forwarder handed over was stored (the sink was detached first), but
        # for video that came before the track's first keyframe.
        expected = received[track.track_id] - track.before_keyframe
        assert stored == expected, (track, stored, received)
        assert stored > (40 if track.kind == "audio" else 20)
        first = next(iter_packets(tmp_path / "live-1", DATA_KEY, track.track_id))
        assert first.data[0] >> 6 == 2  # an RTP version-2 header, stored as received
        assert first.data[1] & 0x7F == track.payload_type
    print(
        "\nrecorded:",
        {t.kind + ":" + t.participant_id: report.records[t.stream] for t in manifest.tracks},
        "dropped:",
        manifest.dropped_records,
    )
    assert read_manifest(tmp_path / "live-1")[0].dropped_records == 0
