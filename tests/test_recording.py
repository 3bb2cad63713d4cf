"""The recording sink, its signed manifest, crash recovery, verify and reading back.

No network and no browser: the sink is fed synthetic RTP packets on a fake clock, so where the
segments fall is deterministic. The crash test SIGKILLs a real recording process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from core.media.track import TrackInfo
from recorder.chunked import C2SP_HEADER_SIZE, CHUNK_SIZE, SegmentIntegrityError
from recorder.manifest import MANIFEST_NAME, RecordingManifest, read_manifest
from recorder.recovery import recover_interrupted
from recorder.segments import SegmentHeader
from recorder.sink import RecordingSettings, RecordingSink
from recorder.verify import RecordingIntegrityError, iter_packets, verify_recording
from tests.fixtures import recordings
from tests.fixtures.recordings import (
    AUDIO,
    MARKER,
    VIDEO,
    AuditRecorder,
    FakeClock,
    Recorded,
    rtp_packet,
)
from tests.fixtures.servers import REPO

DATA_KEY = bytes(range(32))


def record(
    recordings_dir: Path,
    recording_id: str = "rec-1",
    *,
    seconds: float = 25.0,
    key: Ed25519PrivateKey | None = None,
    cases_at: tuple[float, ...] = (),
    settings: RecordingSettings | None = None,
) -> Recorded:
    """`tests.fixtures.recordings.record` under this module's data key (a fresh node key)."""
    return recordings.record(
        recordings_dir, recording_id, DATA_KEY, key or Ed25519PrivateKey.generate(),
        seconds=seconds, cases_at=cases_at, settings=settings,
    )  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """One 25 s recording with two case markers, made once for the read-only tests."""
    return record(tmp_path_factory.mktemp("recordings"), cases_at=(4.0, 13.5))


@pytest.fixture
def copy(recorded: Recorded, tmp_path: Path) -> Path:
    """A private copy of the recording, to tamper with."""
    target = tmp_path / recorded.directory.name
    shutil.copytree(recorded.directory, target)
    return target


def manifest_of(directory: Path) -> RecordingManifest:
    return read_manifest(directory)[0]


def problems(directory: Path, key: Ed25519PrivateKey) -> str:
    report = verify_recording(directory, DATA_KEY, key.public_key())
    assert not report.ok
    with pytest.raises(RecordingIntegrityError):
        report.check()
    return "; ".join(report.problems)


# --- the sink and its manifest --------------------------------------------------------------


def test_a_clean_recording_verifies_and_is_complete(recorded: Recorded) -> None:
    report = verify_recording(recorded.directory, DATA_KEY, recorded.key.public_key())
    assert report.ok, report.problems
    assert report.status == "complete" and not report.interrupted
    manifest = manifest_of(recorded.directory)
    assert [t.track_id for t in manifest.tracks] == [VIDEO.track_id, AUDIO.track_id]
    assert manifest.tracks[0].codec == "video/VP8" and manifest.tracks[0].clock_rate == 90000
    assert manifest.ended is not None and manifest.dropped_records == 0
    for track in manifest.tracks:
        assert report.records[track.stream] == len(recorded.sent[track.track_id])
        assert manifest.streams[track.stream][-1].final


def test_segments_close_every_segment_seconds(recorded: Recorded) -> None:
    manifest = manifest_of(recorded.directory)
    video = manifest.streams["track-0"]
    assert len(video) >= 4
    for segment in video:
        # A segment lasts at most 10 s (counted from the last boundary: a tick or a case).
        assert segment.last_ms - segment.first_ms < 10_000
        assert segment.size > segment.records * 1100


def test_case_markers_are_segment_boundaries(recorded: Recorded) -> None:
    manifest = manifest_of(recorded.directory)
    assert [(c.label, c.at_ms) for c in manifest.cases] == [("case 1", 4000), ("case 2", 13500)]
    for case in manifest.cases:
        for stream, segments in manifest.streams.items():
            assert not any(s.first_ms < case.at_ms <= s.last_ms for s in segments), stream
            assert any(s.first_ms == case.at_ms for s in segments), stream


def test_manifest_hash_is_reported_at_start_each_case_and_stop(recorded: Recorded) -> None:
    actions = [action for action, _, _ in recorded.audit]
    assert actions == [
        "recording_started", "recording_case_marked", "recording_case_marked", "recording_stopped",
    ]  # fmt: skip
    for _, _, fields in recorded.audit:
        assert len(str(fields["manifest_sha256"])) == 64
        assert fields["recording"] == "rec-1"
    assert "case 1" not in json.dumps([f for _, _, f in recorded.audit])  # labels may name patients
    final = (recorded.directory / MANIFEST_NAME).read_bytes()
    assert recorded.audit[-1][2]["manifest_sha256"] == hashlib.sha256(final).hexdigest()


def test_packets_read_back_exactly_as_received(recorded: Recorded) -> None:
    for track in (VIDEO, AUDIO):
        back = [
            (p.arrival_ms, p.data)
            for p in iter_packets(recorded.directory, DATA_KEY, track.track_id)
        ]
        assert back == recorded.sent[track.track_id]


def test_reading_from_a_time_starts_at_its_segment(recorded: Recorded) -> None:
    back = list(
        iter_packets(recorded.directory, DATA_KEY, VIDEO.track_id, start_ms=17_000,
                     public_key=recorded.key.public_key())
    )  # fmt: skip
    expected = [(ms, p) for ms, p in recorded.sent[VIDEO.track_id] if ms >= 17_000]
    assert [(p.arrival_ms, p.data) for p in back] == expected
    # Earlier segments are never opened: remove them and the read still works.
    target = recorded.directory.parent / "partial"
    shutil.copytree(recorded.directory, target)
    for segment in manifest_of(target).streams["track-0"]:
        if segment.last_ms < 17_000:
            (target / "track-0" / f"{segment.number:06d}.seg").unlink()
    assert len(list(iter_packets(target, DATA_KEY, VIDEO.track_id, start_ms=17_000))) == len(
        expected
    )


def test_events_stream_holds_data_channel_and_meeting_events(recorded: Recorded) -> None:
    events = [json.loads(p.data) for p in iter_packets(recorded.directory, DATA_KEY, None)]
    chats = [e for e in events if e["type"] == "data"]
    assert len(chats) == 25 and chats[0]["participant"] == "bob"
    meeting = [e["event"] for e in events if e["type"] == "meeting"]
    assert meeting[:2] == ["track_started", "track_started"]
    assert meeting.count("case_marked") == 2 and meeting[-1] == "recording_stopped"


def test_plaintext_media_never_touches_disk(recorded: Recorded) -> None:
    for path in recorded.directory.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), path


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    # A bound below one hand-off: every buffer is dropped, none waited for.
    done = record(tmp_path, seconds=3.0, settings=RecordingSettings(max_queued_bytes=1))
    manifest = manifest_of(done.directory)
    fed = sum(len(packets) for packets in done.sent.values())
    assert manifest.dropped_records >= fed
    assert all(not segments for segments in manifest.streams.values())
    assert verify_recording(done.directory, DATA_KEY, done.key.public_key()).ok


def test_segment_bytes_closes_a_large_segment_early(tmp_path: Path) -> None:
    done = record(tmp_path, seconds=6.0, settings=RecordingSettings(segment_bytes=100_000))
    video = manifest_of(done.directory).streams["track-0"]
    assert len(video) >= 3 and all(s.size < 110_000 for s in video)
    assert verify_recording(done.directory, DATA_KEY, done.key.public_key()).ok


def test_sink_ignores_packets_after_stop_and_never_raises(tmp_path: Path) -> None:
    sink = RecordingSink(
        tmp_path, "rec-2", "mdt-1", DATA_KEY, Ed25519PrivateKey.generate(), record_everyone=True
    )
    sink.start()
    sink.on_rtp(
        VIDEO, rtp_packet(1, 0, 1, keyframe=True), 0, True
    )  # a track published before the recording
    sink.on_rtp(VIDEO, None, 0, False)  # type: ignore[arg-type]  # a bug upstream: logged
    sink.stop()
    for sequence in range(2, 200):
        sink.on_rtp(VIDEO, rtp_packet(sequence, 0, 1), 0, False)
    sink.on_data("mdt-1", "bob", "annotations", "{}")
    manifest = sink.manifest
    assert manifest.status == "complete" and manifest.streams["track-0"][0].records == 1
    assert sink.faults == 1


def test_a_failing_writer_stops_recording_without_disturbing_the_forwarder(
    tmp_path: Path,
) -> None:
    audit = AuditRecorder()
    sink = RecordingSink(
        tmp_path,
        "rec-4",
        "mdt-1",
        DATA_KEY,
        Ed25519PrivateKey.generate(),
        audit=audit,
        record_everyone=True,
    )
    sink.start()
    (tmp_path / "rec-4" / "track-0").write_bytes(b"")  # the stream's directory cannot be made
    sink.on_track(VIDEO)
    for sequence in range(200):
        sink.on_rtp(
            VIDEO, rtp_packet(sequence, 0, 1, 1100, keyframe=sequence == 0), 0, sequence == 0
        )
    sink.stop(timeout=10)
    assert sink.failure is not None
    assert [a for a, outcome, _ in audit.calls if outcome == "error"] == ["recording_failed"]


def test_on_rtp_cost_per_call_is_printed(tmp_path: Path) -> None:
    sink = RecordingSink(
        tmp_path, "rec-3", "mdt-1", DATA_KEY, Ed25519PrivateKey.generate(), record_everyone=True
    )
    sink.start()
    packets = [rtp_packet(i, i * 3000, 5, 1100) for i in range(20_000)]
    started = time.perf_counter()
    for packet in packets:
        sink.on_rtp(VIDEO, packet, 0, True)
    elapsed = time.perf_counter() - started
    sink.stop()
    print(f"\non_rtp: {elapsed / len(packets) * 1e6:.2f} µs per packet (1100-byte packets)")


# --- tampering --------------------------------------------------------------------------------


def segment(directory: Path, stream: str, number: int) -> Path:
    return directory / stream / f"{number:06d}.seg"


def test_a_flipped_byte_is_detected(copy: Path, recorded: Recorded) -> None:
    path = segment(copy, "track-0", 1)
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x01
    path.write_bytes(data)
    text = problems(copy, recorded.key)
    assert "track-0/000001.seg: SHA-256 does not match" in text
    assert "chunk 0" in text


def test_a_dropped_segment_is_detected(copy: Path, recorded: Recorded) -> None:
    segment(copy, "track-1", 2).unlink()
    assert "track-1/000002.seg: missing" in problems(copy, recorded.key)


def test_swapped_segments_are_detected(copy: Path, recorded: Recorded) -> None:
    first, second = segment(copy, "track-0", 1), segment(copy, "track-0", 2)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    text = problems(copy, recorded.key)
    assert "track-0/000001.seg" in text and "track-0/000002.seg" in text
    assert "swapped" in text and "wrong recording/track/segment" in text


def test_a_truncated_segment_is_detected(copy: Path, recorded: Recorded) -> None:
    # Cut at a chunk boundary, as a crash or a short copy would: the final chunk is gone.
    path = segment(copy, "track-0", 0)
    cut = len(SegmentHeader().encode()) + C2SP_HEADER_SIZE + 5 * (CHUNK_SIZE + 16)
    path.write_bytes(path.read_bytes()[:cut])
    text = problems(copy, recorded.key)
    assert "track-0/000000.seg" in text and "truncated" in text


def test_a_segment_spliced_from_another_recording_is_detected(
    copy: Path, recorded: Recorded, tmp_path: Path
) -> None:
    # Same data key and same track on purpose: only the recording id in the context differs.
    other = record(tmp_path / "other", "rec-other", seconds=12.0, key=recorded.key)
    shutil.copy(segment(other.directory, "track-0", 0), segment(copy, "track-0", 0))
    text = problems(copy, recorded.key)
    assert "track-0/000000.seg" in text and "wrong recording/track/segment" in text


def test_an_extra_segment_is_detected(copy: Path, recorded: Recorded) -> None:
    shutil.copy(segment(copy, "track-0", 0), segment(copy, "track-0", 40))
    assert "track-0/000040.seg: a segment file the manifest does not list" in problems(
        copy, recorded.key
    )


def test_an_edited_manifest_is_detected(copy: Path, recorded: Recorded) -> None:
    path = copy / MANIFEST_NAME
    document = json.loads(path.read_bytes())
    document["cases"][0]["at_ms"] = 5000
    path.write_text(json.dumps(document))
    assert "manifest signature is not valid" in problems(copy, recorded.key)


def test_a_manifest_signed_by_another_key_is_refused(copy: Path) -> None:
    assert "manifest signature is not valid" in problems(copy, Ed25519PrivateKey.generate())


def test_reading_a_tampered_segment_fails_where_it_is_tampered(copy: Path) -> None:
    path = segment(copy, "track-0", 1)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x80
    path.write_bytes(data)
    with pytest.raises(SegmentIntegrityError, match=r"track-0/000001\.seg"):
        list(iter_packets(copy, DATA_KEY, VIDEO.track_id))


# --- crash safety -----------------------------------------------------------------------------

CRASHING_RECORDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from recorder.manifest import read_manifest
    from recorder.sink import RecordingSettings, RecordingSink
    from core.media.track import TrackInfo
    from tests.test_recording import DATA_KEY, VIDEO, FakeClock, rtp_packet

    directory = Path(sys.argv[1])
    key = load_pem_private_key(Path(sys.argv[2]).read_bytes(), None)
    clock = FakeClock()
    sink = RecordingSink(directory, "rec-crash", "mdt-1", DATA_KEY, key, clock=clock,
                         settings=RecordingSettings(segment_seconds=1.0), record_everyone=True)
    sink.start()
    sink.on_track(VIDEO)
    # 100 packets a second of the fake clock: segments 0-2 close, then 80 packets of segment 3
    # (more than one 64 KiB hand-off, so a partial file is on disk when the kill comes).
    for i in range(380):
        clock.now = 1000.0 + i / 100
        sink.on_rtp(VIDEO, rtp_packet(i, i * 900, 7, 1200, keyframe=i == 0), 0, i == 0)
    partial = directory / "rec-crash" / "track-0" / "000003.seg"
    while len(read_manifest(directory / "rec-crash")[0].streams.get("track-0", [])) < 3 or not (
        partial.exists() and partial.stat().st_size > 0
    ):
        time.sleep(0.01)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_sigkill_mid_recording_loses_at_most_the_unfinished_segment(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "audit.pem"
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RECORDER, str(recordings), str(key_file)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    directory = recordings / "rec-crash"
    assert manifest_of(directory).status == "recording"
    assert "not closed" in problems(directory, key)
    assert (directory / "track-0" / "000003.seg").exists()
    (directory / "track-1").mkdir()  # a track announced as the process died: not listed yet

    audit = AuditRecorder()
    assert recover_interrupted(recordings, key, audit) == ["rec-crash"]

    manifest = manifest_of(directory)
    assert manifest.status == "interrupted" and manifest.ended is not None
    video = manifest.streams["track-0"]
    assert [s.number for s in video] == [0, 1, 2] and video[-1].final
    assert not (directory / "track-0" / "000003.seg").exists()
    assert not (directory / "track-1").exists()
    assert "unfinished segments removed" in manifest.notes[0]
    [(action, _, fields)] = audit.calls
    assert action == "recording_recovered" and fields["status"] == "interrupted"
    assert fields["removed_unverifiable_segments"] == ["track-0/000003.seg"]

    report = verify_recording(directory, DATA_KEY, key.public_key())
    assert report.ok, report.problems
    assert report.interrupted
    kept = list(iter_packets(directory, DATA_KEY, VIDEO.track_id))
    assert [struct.unpack_from("!H", p.data, 2)[0] for p in kept] == list(range(300))
    assert 380 - len(kept) < 100  # less than one segment's packets lost
    for path in directory.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), path
    # Recovery is done once: a second start leaves it alone.
    assert recover_interrupted(recordings, key) == []


def test_recovery_leaves_a_manifest_that_does_not_verify_as_found(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    sink = RecordingSink(tmp_path, "rec-5", "mdt-1", DATA_KEY, key, record_everyone=True)
    sink.start()
    sink.stop()
    path = tmp_path / "rec-5" / MANIFEST_NAME
    document = json.loads(path.read_bytes())
    document["status"] = "recording"
    path.write_text(json.dumps(document))
    before = path.read_bytes()
    audit = AuditRecorder()
    assert recover_interrupted(tmp_path, key, audit) == []
    assert path.read_bytes() == before
    assert [(a, o) for a, o, _ in audit.calls] == [("recording_recovered", "error")]


def test_only_consenting_participants_media_is_recorded(tmp_path: Path) -> None:
    from recorder.manifest import ConsentRecord, RecordedParticipant

    clock = FakeClock()
    key = Ed25519PrivateKey.generate()
    sink = RecordingSink(tmp_path, "rec-consent", "mdt-1", DATA_KEY, key, clock=clock)
    sink.start()
    bob_video = TrackInfo("mdt-1", "bob", "bob:0", "video", "video/VP8", 90000, 96, "camera")
    for pid in ("alice", "bob"):
        sink.add_participant(RecordedParticipant(pid, f"dr-{pid}", pid, "specialist", ["onc"]))

    def consent(pid: str, decision: str) -> None:
        sink.record_consent(
            ConsentRecord(pid, f"dr-{pid}", decision, "client", "t", sink.now_ms(), "v1")  # type: ignore[arg-type]
        )

    def feed(first: int) -> None:
        for seq in range(first, first + 50):
            clock.now += 0.02
            keyframe = seq == first  # each feed starts with a keyframe
            sink.on_rtp(VIDEO, rtp_packet(seq, seq * 3000, 1, keyframe=keyframe), 0, keyframe)
            sink.on_rtp(bob_video, rtp_packet(seq, seq * 3000, 2, keyframe=keyframe), 0, keyframe)

    feed(0)  # nobody has consented yet: nothing of theirs is stored
    consent("alice", "granted")
    consent("bob", "declined")
    feed(50)  # alice only
    consent("alice", "declined")
    feed(100)  # alice withdrew: nothing more
    consent("bob", "granted")
    feed(150)  # bob only, from now on
    manifest = sink.stop()

    report = verify_recording(tmp_path / "rec-consent", DATA_KEY, key.public_key())
    assert report.ok, report.problems
    by_track = {t.track_id: t for t in manifest.tracks}
    assert set(by_track) == {"alice:0", "bob:0"}
    for track_id, expected in (("alice:0", range(50, 100)), ("bob:0", range(150, 200))):
        packets = list(iter_packets(tmp_path / "rec-consent", DATA_KEY, track_id))
        assert [struct.unpack_from("!H", p.data, 2)[0] for p in packets] == list(expected)
    assert [(c.participant_id, c.decision) for c in manifest.consent] == [
        ("alice", "granted"), ("bob", "declined"), ("alice", "declined"), ("bob", "granted"),
    ]  # fmt: skip
    assert [p.sub for p in manifest.participants] == ["dr-alice", "dr-bob"]
    on_disk = read_manifest(tmp_path / "rec-consent")[0]
    assert on_disk.consent == manifest.consent and on_disk.participants == manifest.participants
