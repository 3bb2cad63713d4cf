"""Export: RTP back into frames (on packets built here), and a real recorded room remuxed into a
WebM file that ffprobe reads and PyAV decodes, whole or one case of it, with its sidecar."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import av
import pytest

from core.errors import IntegrityError
from core.media.payloads import parse_vp8_descriptor, split_annex_b, vp8_picture_size
from core.media.rtp import Unwrapper, parse_header
from recorder.depacketize import (
    FrameAssembler,
    H264Depacketizer,
    OpusDepacketizer,
    Vp8Depacketizer,
)
from recorder.export import export_recording
from tests.fixtures.recordings import DATA_KEY, LiveRecording, ffprobe_path, live_recording

__all__ = ["live_recording"]  # the fixture, imported for this module

# --- packets built here ---------------------------------------------------------------------


def rtp(seq: int, ts: int, payload: bytes, *, marker: bool = False, pt: int = 96,
        csrcs: int = 0, extension: bytes | None = None, padding: int = 0) -> bytes:  # fmt: skip
    """An RTP packet with the given header features."""
    b0 = 0x80 | csrcs | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF,
                      0x1234)  # fmt: skip
    out += b"".join(struct.pack("!I", 100 + i) for i in range(csrcs))
    if extension is not None:
        out += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


def vp8_frame(keyframe: bool, index: int, size: int = 3000) -> bytes:
    """Bytes shaped like a VP8 frame: a keyframe has P=0, the start code and 640x480."""
    if keyframe:
        head = bytes([0x10, 0x02, 0x00]) + b"\x9d\x01\x2a" + struct.pack("<HH", 640, 480)
    else:
        head = bytes([0x11, 0x02, 0x00])
    body = bytes((index + i) & 0xFF for i in range(size - len(head)))
    return head + body


def vp8_packets(frame: bytes, seq: int, ts: int, picture_id: int, mtu: int = 1200) -> list[bytes]:
    """A frame split as aiortc sends it: X=1, I=1, 15-bit PictureID, S on the first packet."""
    chunks = [frame[i : i + mtu] for i in range(0, len(frame), mtu)]
    out = []
    for i, chunk in enumerate(chunks):
        descriptor = bytes([0x90 if i == 0 else 0x80, 0x80, 0x80 | (picture_id >> 8),
                            picture_id & 0xFF])  # fmt: skip
        out.append(rtp(seq + i, ts, descriptor + chunk, marker=i == len(chunks) - 1))
    return out


def vp8_stream(count: int, keyframe_every: int, seq0: int = 0, ts0: int = 0) -> list[list[bytes]]:
    """`count` frames, each a list of packets; 3000 ticks (30 fps) apart."""
    frames = []
    seq = seq0
    for n in range(count):
        packets = vp8_packets(vp8_frame(n % keyframe_every == 0, n), seq, ts0 + 3000 * n, n)
        seq += len(packets)
        frames.append(packets)
    return frames


def assemble(packets: list[bytes], assembler: FrameAssembler) -> list[Any]:
    frames = []
    for i, packet in enumerate(packets):
        frames += assembler.push(packet, i)
    return frames + assembler.flush()


# --- RTP and VP8 ----------------------------------------------------------------------------


def test_rtp_header_csrcs_extension_and_padding_are_stripped_to_the_payload() -> None:
    data = rtp(7, 99, b"payload", marker=True, csrcs=2, extension=b"\x10\xab\x00\x00", padding=4)
    header = parse_header(data)
    assert data[header.payload_start : header.payload_end] == b"payload"
    assert header.extensions == {1: b"\xab"}
    assert (header.sequence, header.timestamp, header.marker) == (7, 99, True)
    with pytest.raises(ValueError, match="version 2"):
        parse_header(b"\x40" + bytes(11))


def test_a_packet_cut_inside_its_csrcs_is_malformed_not_a_frame() -> None:
    assembler = FrameAssembler(OpusDepacketizer())
    assert assembler.push(rtp(1, 0, b"", csrcs=3)[:16], 0) == []
    assert assembler.stats.malformed == 1


def test_vp8_descriptor_reads_every_optional_field() -> None:
    d = parse_vp8_descriptor(bytes([0x90 | 0x20, 0xF0, 0x81, 0x23, 0x07, 0x45]) + b"data")
    assert d.start_of_partition and d.partition_index == 0 and d.non_reference
    assert (d.picture_id, d.tl0_pic_idx, d.temporal_id, d.key_idx) == (0x123, 7, 1, 5)
    assert d.size == 6
    short = parse_vp8_descriptor(bytes([0x80, 0x80, 0x05]) + b"x")
    assert short.picture_id == 5 and short.size == 3
    assert parse_vp8_descriptor(bytes([0x01]) + b"x").partition_index == 1


def test_vp8_frames_split_over_packets_are_reassembled_with_their_keyframe_size() -> None:
    stream = vp8_stream(6, keyframe_every=3)
    frames = assemble([p for f in stream for p in f], FrameAssembler(Vp8Depacketizer()))
    assert [f.data for f in frames] == [vp8_frame(n % 3 == 0, n) for n in range(6)]
    assert [f.keyframe for f in frames] == [True, False, False, True, False, False]
    assert [f.timestamp for f in frames] == [3000 * n for n in range(6)]
    assert vp8_picture_size(frames[0].data) == (640, 480)
    assert vp8_picture_size(frames[1].data) is None


def test_reordered_and_duplicated_packets_give_the_same_frames() -> None:
    stream = vp8_stream(6, keyframe_every=3)
    packets = [p for f in stream for p in f]
    shuffled = packets[:]
    shuffled[1], shuffled[3] = shuffled[3], shuffled[1]
    shuffled[5], shuffled[6] = shuffled[6], shuffled[5]
    shuffled.insert(8, packets[2])  # a duplicate
    assembler = FrameAssembler(Vp8Depacketizer(), window=8)
    frames = assemble(shuffled, assembler)
    assert [f.data for f in frames] == [vp8_frame(n % 3 == 0, n) for n in range(6)]
    assert assembler.stats.duplicates == 1 and assembler.stats.lost == 0


def test_sequence_and_timestamp_wraparound_is_unwrapped() -> None:
    stream = vp8_stream(4, keyframe_every=4, seq0=65530, ts0=0xFFFFFFFF - 5000)
    frames = assemble([p for f in stream for p in f], FrameAssembler(Vp8Depacketizer()))
    assert len(frames) == 4
    assert [f.timestamp - frames[0].timestamp for f in frames] == [0, 3000, 6000, 9000]
    unwrap = Unwrapper(16)
    assert [unwrap.unwrap(s) for s in (65534, 65535, 1, 0, 2)] == [65534, 65535, 65537, 65536,
                                                                    65538]  # fmt: skip


def test_a_lost_packet_drops_its_frame_and_everything_until_the_next_keyframe() -> None:
    stream = vp8_stream(8, keyframe_every=4)
    del stream[1][1]  # frame 1 loses its second packet
    assembler = FrameAssembler(Vp8Depacketizer())
    frames = assemble([p for f in stream for p in f], assembler)
    assert [f.data for f in frames] == [vp8_frame(n % 4 == 0, n) for n in (0, 4, 5, 6, 7)]
    assert assembler.stats.lost == 1 and assembler.stats.dropped_frames == 3


def test_video_before_the_first_keyframe_is_dropped() -> None:
    stream = vp8_stream(6, keyframe_every=4)[1:]  # starts on a delta frame
    frames = assemble([p for f in stream for p in f], FrameAssembler(Vp8Depacketizer()))
    assert frames[0].keyframe and len(frames) == 2


def test_opus_packets_are_frames_and_a_loss_drops_only_that_packet() -> None:
    packets = [rtp(i, 960 * i, bytes([0xFC, i]), pt=111) for i in range(10)]
    del packets[4]
    assembler = FrameAssembler(OpusDepacketizer(), payload_type=111)
    frames = assemble([*packets, rtp(50, 0, b"other", pt=96)], assembler)
    assert [f.data[1] for f in frames] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert frames[5].timestamp == 960 * 6


# --- H.264 ----------------------------------------------------------------------------------

SPS = bytes([0x67, 0x42, 0xC0, 0x1F, 0xDA])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65]) + bytes(range(1, 200)) * 10
SLICE = bytes([0x41]) + bytes(range(7, 150))


def stap_a(*units: bytes) -> bytes:
    return bytes([0x78]) + b"".join(struct.pack("!H", len(u)) + u for u in units)


def fu_a(unit: bytes, size: int = 500) -> list[bytes]:
    indicator = (unit[0] & 0xE0) | 28
    body = unit[1:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return [
        bytes([indicator, (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0)
               | (unit[0] & 0x1F)]) + chunk
        for i, chunk in enumerate(chunks)
    ]  # fmt: skip


def test_h264_stap_a_and_fu_a_become_annex_b_access_units() -> None:
    idr = [stap_a(SPS, PPS), *fu_a(IDR)]
    packets = [rtp(i, 0, p, marker=i == len(idr) - 1) for i, p in enumerate(idr)]
    packets.append(rtp(len(idr), 3000, SLICE, marker=True))
    frames = assemble(packets, FrameAssembler(H264Depacketizer()))
    start = b"\x00\x00\x00\x01"
    assert frames[0].data == start + SPS + start + PPS + start + IDR
    assert frames[0].keyframe and not frames[1].keyframe
    assert frames[1].data == start + SLICE
    assert split_annex_b(frames[0].data) == [SPS, PPS, IDR]


def test_h264_idr_without_parameter_sets_gets_the_last_ones_seen() -> None:
    depacketizer = H264Depacketizer()
    depacketizer.assemble([stap_a(SPS, PPS)])
    assert split_annex_b(depacketizer.assemble(fu_a(IDR))) == [SPS, PPS, IDR]


def test_h264_lost_fragment_drops_until_the_next_idr() -> None:
    first = fu_a(IDR)
    packets = [rtp(0, 0, stap_a(SPS, PPS))]
    packets += [rtp(1 + i, 0, p, marker=i == len(first) - 1) for i, p in enumerate(first)]
    n = len(packets)
    second = fu_a(SLICE + bytes(600))
    packets += [rtp(n + i, 3000, p, marker=i == len(second) - 1) for i, p in enumerate(second)]
    del packets[n]  # the slice's FU-A start is lost
    n = len(packets) + 1
    packets += [rtp(n, 6000, SLICE, marker=True)]
    packets += [rtp(n + 1 + i, 9000, p, marker=i == len(first) - 1) for i, p in enumerate(first)]
    frames = assemble(packets, FrameAssembler(H264Depacketizer()))
    assert [f.timestamp for f in frames] == [0, 9000]
    assert all(f.keyframe for f in frames)


# --- a real room, exported ------------------------------------------------------------------

needs_ffprobe = pytest.mark.skipif(
    ffprobe_path() is None, reason="ffprobe is not installed (Debian package ffmpeg)"
)


def ffprobe(path: Path) -> dict[str, Any]:
    """ffprobe's view of a file."""
    out = subprocess.run(
        [str(ffprobe_path()), "-v", "error", "-show_streams", "-show_format", "-of", "json",
         str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@needs_ffprobe
def test_a_recorded_room_exports_to_webm_that_plays(
    live_recording: LiveRecording, tmp_path: Path
) -> None:
    out = tmp_path / "meeting.webm"
    seen: list[tuple[int, int]] = []
    result = export_recording(
        live_recording.directory, DATA_KEY, out,
        public_key=live_recording.key.public_key(), progress=lambda d, t: seen.append((d, t)),
    )  # fmt: skip
    assert result.container == "webm" and out.exists()
    assert seen and seen[-1][0] == seen[-1][1] > 0
    probe = ffprobe(out)
    print("\nffprobe:", json.dumps(probe, indent=1))
    assert probe["format"]["format_name"].startswith("matroska,webm")
    video = [s for s in probe["streams"] if s["codec_type"] == "video"]
    audio = [s for s in probe["streams"] if s["codec_type"] == "audio"]
    assert len(video) == 2 and len(audio) == 2  # one per participant's camera and microphone
    assert {(s["codec_name"], s["width"], s["height"]) for s in video} == {("vp8", 640, 480)}
    assert {(s["codec_name"], s["sample_rate"], s["channels"]) for s in audio} == {
        ("opus", "48000", 2)
    }
    titles = {s["tags"]["title"] for s in probe["streams"]}
    assert "Dr Alice Ames (chair) – camera" in titles
    assert "Dr Bo Bell (radiologist) – microphone" in titles
    duration_ms = float(probe["format"]["duration"]) * 1000
    # The file is as long as what the export wrote into it, as a player reads it...
    assert abs(duration_ms - result.duration_ms) < 50, (duration_ms, result)
    assert result.duration_ms == max(s.last_ms for s in result.streams)
    # ...which ends at the stop, less the media still on its way then (the sender, the SFU
    # and the recorder share a loaded machine: up to a second seen), and never after it.
    stopped_ms = live_recording.stopped_ms
    assert stopped_ms - 1500 < duration_ms < stopped_ms + 100, (duration_ms, stopped_ms, result)
    for stream in result.streams:
        assert stream.stats.lost == 0 and stream.stats.malformed == 0, stream
    with av.open(str(out)) as container:
        pictures = []
        for frame in container.decode(video=0):
            pictures.append(frame.to_ndarray(format="rgb24"))
            if len(pictures) == 5:
                break
        samples = sum(f.samples for _, f in zip(range(50), container.decode(audio=0), strict=False))
    assert len(pictures) == 5 and pictures[0].shape == (480, 640, 3)
    assert pictures[0].std() > 10  # the colour bars, not a grey error picture
    # 20 ms packets, less the 312-sample pre-skip libopus's OpusHead declares.
    assert samples == 50 * 960 - 312


@needs_ffprobe
def test_a_case_export_holds_only_that_case(live_recording: LiveRecording, tmp_path: Path) -> None:
    first, second = live_recording.case_times
    out = tmp_path / "case1.webm"
    result = export_recording(live_recording.directory, DATA_KEY, out, case=1,
                              public_key=live_recording.key.public_key())  # fmt: skip
    assert (result.start_ms, result.end_ms) == (first, second)
    duration_ms = float(ffprobe(out)["format"]["duration"]) * 1000
    assert abs(duration_ms - (second - first)) < 200, duration_ms
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))  # starts at a keyframe: the first one decodes
        assert frame.key_frame
    for stream in result.streams:
        # Audio from the case's start (a packet every 20 ms; a loaded machine delivered the
        # first 122 ms in), video from its first keyframe: not seconds late, not before the case.
        assert 0 <= stream.first_ms < (1100 if stream.kind == "video" else 300), stream
        # Media arriving after the case ended is cut (by arrival); frames are placed by their RTP
        # time from the first frame's arrival, so a first frame that came late (a loaded
        # machine: tens of ms) shifts the last frame's time by as much.
        assert stream.last_ms <= second - first + 150

    sidecar = json.loads(result.annotations_path.read_text())
    assert sidecar["export"]["case"] == {"number": 1, "label": "case 1"}
    ops = [e for e in sidecar["events"] if e["message"]["kind"] == "op"]
    assert len(ops) == 1 and 0 <= ops[0]["offset_ms"] < second - first
    assert ops[0]["at_ms"] == first + ops[0]["offset_ms"]
    assert ops[0]["participant"] == "a" and ops[0]["message"]["seq"] == 1
    assert ops[0]["message"]["op"]["shape"]["id"] == "s1"
    assert not [e for e in sidecar["events"] if e["message"].get("kind") == "chat"]
    assert [c["label"] for c in sidecar["cases"]] == ["case 1", "case 2"]
    assert {c["participant_id"] for c in sidecar["consent"]} == {"a", "b"}

    case2 = export_recording(live_recording.directory, DATA_KEY, tmp_path / "case2.webm", case=2,
                             public_key=live_recording.key.public_key())  # fmt: skip
    events = json.loads(case2.annotations_path.read_text())["events"]
    chats = [e for e in events if e["message"].get("kind") == "chat"]
    assert [c["message"]["text"] for c in chats] == ["see the margin"]


def test_an_export_of_chosen_tracks_holds_only_them(
    live_recording: LiveRecording, tmp_path: Path
) -> None:
    # The archive's player shows one camera (with the sound), or each video of a grid alone.
    manifest = live_recording.manifest
    (b_video,) = [t for t in manifest.tracks if t.participant_id == "b" and t.kind == "video"]
    audio = [t.track_id for t in manifest.tracks if t.kind == "audio"]
    result = export_recording(live_recording.directory, DATA_KEY, tmp_path / "b.webm",
                              public_key=live_recording.key.public_key(),
                              track_ids=[b_video.track_id, *audio])  # fmt: skip
    assert [s.track_id for s in result.streams if s.kind == "video"] == [b_video.track_id]
    assert sorted(s.track_id for s in result.streams if s.kind == "audio") == sorted(audio)
    with av.open(str(tmp_path / "b.webm")) as container:
        assert len(container.streams.video) == 1 and next(container.decode(video=0)).key_frame
    with pytest.raises(ValueError, match="no track"):
        export_recording(live_recording.directory, DATA_KEY, tmp_path / "x.webm",
                         public_key=live_recording.key.public_key(),
                         track_ids=["nobody:9"])  # fmt: skip
    assert not (tmp_path / "x.webm").exists()


def test_an_edited_manifest_is_refused_before_export(
    live_recording: LiveRecording, tmp_path: Path
) -> None:
    copy = tmp_path / live_recording.directory.name
    shutil.copytree(live_recording.directory, copy)
    document = json.loads((copy / "manifest.json").read_bytes())
    document["cases"][0]["at_ms"] += 1
    (copy / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="signature is not valid"):
        export_recording(copy, DATA_KEY, tmp_path / "x.webm",
                         public_key=live_recording.key.public_key())  # fmt: skip
    assert not (tmp_path / "x.webm").exists()


def test_a_tampered_segment_is_refused_and_leaves_no_file(
    live_recording: LiveRecording, tmp_path: Path
) -> None:
    copy = tmp_path / live_recording.directory.name
    shutil.copytree(live_recording.directory, copy)
    segment = copy / "track-0" / "000001.seg"
    data = bytearray(segment.read_bytes())
    data[100] ^= 1
    segment.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"track-0/000001\.seg: SHA-256 does not match"):
        export_recording(copy, DATA_KEY, tmp_path / "x.webm",
                         public_key=live_recording.key.public_key())  # fmt: skip
    assert not list(tmp_path.glob("*.webm*")) and not list(tmp_path.glob(".x.webm*"))


def test_a_case_the_recording_does_not_have_is_refused(
    live_recording: LiveRecording, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="has 2 case"):
        export_recording(live_recording.directory, DATA_KEY, tmp_path / "x.webm", case=3,
                         public_key=live_recording.key.public_key())  # fmt: skip


@needs_ffprobe
async def test_an_h264_room_exports_to_matroska_that_plays(
    tmp_path: Path, loopback_ice: None
) -> None:
    import asyncio

    from aiortc.mediastreams import VideoStreamTrack
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from recorder.sink import RecordingSink
    from sfu.ice import IceSettings
    from sfu.server import MediaSettings
    from tests.fixtures.media import MediaHarness
    from tests.fixtures.servers import eventually

    media = MediaHarness(
        MediaSettings(video_codecs=("H264",), ice=IceSettings(host_addresses=("127.0.0.1",)))
    )
    await media.server.start()
    key = Ed25519PrivateKey.generate()
    sink = RecordingSink(tmp_path, "rec-h264", "mdt-1", DATA_KEY, key, record_everyone=True)
    sink.start()
    media.server.attach_sink("mdt-1", sink)
    try:
        await media.join("a", [VideoStreamTrack()])
        b = await media.join("b", [])
        await eventually(lambda: b.stats.frames("video") > 20, timeout=30)
        await asyncio.sleep(1.0)
    finally:
        media.server.detach_sink("mdt-1", sink)
        await asyncio.to_thread(sink.stop)
        await media.close()
    out = tmp_path / "h264.mkv"
    result = export_recording(tmp_path / "rec-h264", DATA_KEY, out, public_key=key.public_key())
    assert result.container == "matroska"
    (stream,) = ffprobe(out)["streams"]
    assert stream["codec_name"] == "h264" and stream["width"] == 640
    with av.open(str(out)) as container:
        decoded = [f for _, f in zip(range(5), container.decode(video=0), strict=False)]
    assert len(decoded) == 5 and decoded[0].width == 640
