"""The archive: catalogue and search, legal hold, retention and shredding, Range reads.

Recordings are real (`RecordingSink` on a fake clock, keys from a real keyring); catalogue-only
entries (a signed manifest, no media) stand in where only the listing matters, so their dates
can be chosen.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import recorder.catalogue
from core.errors import IntegrityError, NotFound
from recorder.archive import Archive
from recorder.chunked import SegmentIntegrityError
from recorder.holds import NotOnHold
from recorder.keyring import KeyFileKEK, Keyring, RecordingShredded
from recorder.manifest import (
    MANIFEST_NAME,
    CaseMarker,
    RecordedParticipant,
    RecordingManifest,
    SegmentEntry,
    encode_record,
    read_manifest,
    write_manifest,
)
from recorder.retention import RecordingInProgress, RecordingOnHold, RetentionSettings
from recorder.segments import encrypt_segment, segment_context
from recorder.streams import TrackStream, segment_plaintext_length
from recorder.verify import iter_packets
from tests.fixtures.recordings import MARKER, AuditRecorder, Recorded, record

ALICE = RecordedParticipant("alice", "dr-alice", "Alice", "specialist", ["cardiology"], "H1")
BOB = RecordedParticipant("bob", "dr-bob", "Bob", "chair", ["oncology", "Radiology"], "H2")


class FixedClock:
    """The archive's UTC clock, set by the test."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Library:
    """A recordings directory with its keyring and node key."""

    recordings: Path
    keyring: Keyring
    key: Ed25519PrivateKey
    audit: AuditRecorder
    clock: FixedClock

    def archive(self, retention: RetentionSettings | None = None) -> Archive:
        return Archive(
            self.recordings, self.keyring, self.key.public_key(), retention, self.clock,
            audit=self.audit,
        )  # fmt: skip

    def record(self, recording_id: str, **options: object) -> Recorded:
        data_key = self.keyring.create(recording_id)
        return record(self.recordings, recording_id, data_key, self.key, **options)  # type: ignore[arg-type]


def make_library(root: Path) -> Library:
    kek = KeyFileKEK.generate(root / "secrets" / "kek.json", key_id="kek-a")
    recordings = root / "recordings"
    recordings.mkdir()
    return Library(
        recordings, Keyring(root / "keys", kek), Ed25519PrivateKey.generate(), AuditRecorder(),
        FixedClock(),
    )  # fmt: skip


@pytest.fixture
def library(tmp_path: Path) -> Library:
    return make_library(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Library, Recorded]:
    """One 25 s recording with two case markers, for the read-only tests."""
    lib = make_library(tmp_path_factory.mktemp("archive"))
    done = lib.record("rec-1", participants=(ALICE, BOB), cases_at=(4.0, 13.5))
    return lib, done


def catalogue_entry(
    library: Library,
    recording_id: str,
    *,
    room: str = "mdt-1",
    started: datetime,
    minutes: int = 60,
    participants: tuple[RecordedParticipant, ...] = (ALICE,),
    cases: tuple[str, ...] = (),
    recording_class: str = "mdt",
    status: str = "complete",
) -> None:
    """A signed manifest with no media: enough for the catalogue."""
    manifest = RecordingManifest(
        recording_id, room, started=started.isoformat(timespec="milliseconds"),
        status=status,  # type: ignore[arg-type]
        ended=None if status == "recording" else (started + timedelta(minutes=minutes)).isoformat(),
        participants=list(participants), recording_class=recording_class,
        cases=[CaseMarker(label, 1000 * n) for n, label in enumerate(cases)],
        streams={"events": [SegmentEntry(0, "0" * 64, 80, 0, minutes * 60_000, 1, True)]},
    )  # fmt: skip
    directory = library.recordings / recording_id
    directory.mkdir()
    write_manifest(directory, manifest, library.key)


def full_stream(directory: Path, data_key: bytes, track_id: str | None) -> bytes:
    """The stream's stored plaintext as the streaming reader decrypts it."""
    return b"".join(
        encode_record(p.arrival_ms, p.data) for p in iter_packets(directory, data_key, track_id)
    )


def seg_files(root: Path) -> Iterator[Path]:
    return root.rglob("*.seg")


# --- catalogue and search -------------------------------------------------------------------


def test_search_finds_recordings_by_each_criterion(library: Library) -> None:
    day = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
    catalogue_entry(library, "r-tue", started=day, cases=("Case 3: lung",), participants=(ALICE,))
    catalogue_entry(
        library, "r-wed", room="mdt-2", started=day + timedelta(days=1),
        participants=(ALICE, BOB), cases=("case 1", "Case 2"), recording_class="teaching",
    )  # fmt: skip
    catalogue_entry(
        library, "r-live", started=day + timedelta(days=2), participants=(BOB,), status="recording"
    )
    archive = library.archive()

    def ids(**criteria: object) -> list[str]:
        return [s.recording_id for s in archive.search(**criteria)]  # type: ignore[arg-type]

    assert ids() == ["r-live", "r-wed", "r-tue"]  # newest first
    assert ids(room="mdt-2") == ["r-wed"]
    assert ids(participant="dr-bob") == ["r-live", "r-wed"]
    assert ids(department="radiology") == ["r-live", "r-wed"]  # case-insensitive
    assert ids(department="cardiology") == ["r-wed", "r-tue"]
    assert ids(case="LUNG") == ["r-tue"]
    assert ids(case="case") == ["r-wed", "r-tue"]
    assert ids(status="recording") == ["r-live"]
    # A recording counts for a time window if it was on at any moment of it.
    assert ids(since=day + timedelta(minutes=30), until=day + timedelta(hours=2)) == ["r-tue"]
    assert ids(since=day + timedelta(days=1, hours=2)) == ["r-live"]  # still on: never ended
    assert ids(until=day + timedelta(days=1)) == ["r-tue"]
    assert ids(room="mdt-1", participant="dr-alice") == ["r-tue"]
    # By display name too: a part of it, in any case; a blank never matches everyone.
    assert ids(participant="bob") == ["r-live", "r-wed"]
    assert ids(participant="ALI") == ["r-wed", "r-tue"]
    assert ids(participant=" ") == []

    wed = archive.summary("r-wed")
    assert wed.participants == ("dr-alice", "dr-bob")
    assert wed.departments == ("Radiology", "cardiology", "oncology")
    assert wed.cases == ("case 1", "Case 2") and wed.recording_class == "teaching"
    assert wed.duration_ms == 3_600_000 and not wed.held
    assert wed.expires_at == (day + timedelta(days=1, hours=1) + timedelta(days=365)).isoformat()
    assert archive.summary("r-live").expires_at is None


def test_a_real_recordings_summary_comes_from_its_manifest(
    shared: tuple[Library, Recorded],
) -> None:
    library, done = shared
    summary = library.archive().summary("rec-1")
    manifest = read_manifest(done.directory)[0]
    assert summary.status == "complete" and summary.room_id == "mdt-1"
    assert summary.started == manifest.started and summary.ended == manifest.ended
    assert summary.cases == ("case 1", "case 2")
    assert summary.participants == ("dr-alice", "dr-bob")
    assert 24_000 <= summary.duration_ms < 25_000
    assert manifest.ended is not None and summary.expires_at is not None
    ended = datetime.fromisoformat(manifest.ended)
    assert datetime.fromisoformat(summary.expires_at) - ended < timedelta(days=3650, seconds=1)


def test_a_manifest_that_fails_to_verify_is_listed_as_damaged(library: Library) -> None:
    day = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
    catalogue_entry(library, "r-good", started=day)
    catalogue_entry(library, "r-edited", started=day, room="mdt-9")
    path = library.recordings / "r-edited" / MANIFEST_NAME
    document = json.loads(path.read_bytes())
    document["recording_class"] = "teaching"  # shorter retention, say
    path.write_text(json.dumps(document))
    catalogue_entry(library, "r-garbled", started=day)
    (library.recordings / "r-garbled" / MANIFEST_NAME).write_text("{not json")

    by_id = {s.recording_id: s for s in library.archive().list()}
    assert by_id["r-good"].status == "complete" and not by_id["r-good"].problem
    edited = by_id["r-edited"]
    assert edited.status == "damaged" and "signature is not valid" in edited.problem
    assert edited.room_id == "mdt-9"  # what it claims, unverified, so a search still finds it
    assert edited.expires_at is None  # nothing unverified decides a shred
    assert by_id["r-garbled"].status == "damaged" and by_id["r-garbled"].room_id == ""
    damaged = library.archive().search(status="damaged")
    assert [s.recording_id for s in damaged] == ["r-edited", "r-garbled"]
    assert library.archive().expired(day + timedelta(days=10_000)) == [by_id["r-good"]]


def test_listing_parses_each_manifest_once_until_it_changes(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
    for n in range(20):
        catalogue_entry(library, f"r-{n:02d}", started=day + timedelta(hours=n))
    reads: list[str] = []
    real = recorder.catalogue.read_manifest

    def counting(directory: Path) -> tuple[RecordingManifest, bytes, bytes]:
        reads.append(directory.name)
        return real(directory)

    monkeypatch.setattr(recorder.catalogue, "read_manifest", counting)
    archive = library.archive()
    assert len(archive.list()) == 20 and len(reads) == 20
    assert len(archive.list()) == 20 and len(reads) == 20  # all from the cache
    manifest = real(library.recordings / "r-07")[0]
    manifest.cases.append(CaseMarker("case 9", 5))
    write_manifest(library.recordings / "r-07", manifest, library.key)
    assert archive.summary("r-07").cases == ("case 9",)
    assert reads[20:] == ["r-07"]


# --- legal hold -----------------------------------------------------------------------------


def test_legal_hold_blocks_shredding_and_release_allows_it(library: Library) -> None:
    library.record("rec-h", seconds=3.0)
    archive = library.archive()
    manifest_before = (library.recordings / "rec-h" / MANIFEST_NAME).read_bytes()

    hold = archive.hold("rec-h", "claim 2025/17", by="dr-legal")
    assert hold.reason == "claim 2025/17" and hold.by == "dr-legal"
    assert archive.holds() == [hold] and archive.summary("rec-h").held
    stored = json.loads((library.recordings / "holds" / "rec-h.json").read_bytes())
    assert stored["reason"] == "claim 2025/17" and stored["since"] == hold.since
    # The signed manifest is the sink's; the hold lives beside it.
    assert (library.recordings / "rec-h" / MANIFEST_NAME).read_bytes() == manifest_before

    with pytest.raises(RecordingOnHold, match="legal hold"):
        archive.shred("rec-h", "by request")
    assert library.keyring.unwrap("rec-h")  # nothing destroyed
    assert list(seg_files(library.recordings / "rec-h"))

    assert archive.release("rec-h", by="dr-legal") == hold
    assert archive.holds() == [] and not archive.summary("rec-h").held
    with pytest.raises(NotOnHold):
        archive.release("rec-h", by="dr-legal")
    result = archive.shred("rec-h", "by request", by="dr-dpo")
    assert result.recording_id == "rec-h" and result.files_removed > 3 and not result.leftovers
    assert [(a, f["recording"]) for a, _, f in library.audit.calls] == [
        ("recording_held", "rec-h"), ("recording_released", "rec-h"),
        ("recording_shredded", "rec-h"),
    ]  # fmt: skip


def test_a_second_hold_keeps_its_start_and_updates_its_reason(library: Library) -> None:
    library.record("rec-h2", seconds=1.0)
    archive = library.archive()
    first = archive.hold("rec-h2", "complaint 4", by="dr-a")
    library.clock.now += timedelta(days=3)
    second = archive.hold("rec-h2", "complaint 4 and claim 9", by="dr-b")
    assert second.since == first.since and archive.holds() == [second]


# --- retention and shredding ----------------------------------------------------------------


def test_retention_shreds_only_expired_unheld_finished_recordings_per_class(
    library: Library,
) -> None:
    library.record("teach-old", seconds=1.0, recording_class="teaching")
    library.record("teach-held", seconds=1.0, recording_class="teaching")
    library.record("mdt-old", seconds=1.0, recording_class="mdt")
    library.record("audit-class", seconds=1.0, recording_class="unlisted")
    live = library.record("teach-live", seconds=1.0, recording_class="teaching", stop=False)
    try:
        retention = RetentionSettings(days={"mdt": 3650, "teaching": 365}, default_days=None)
        archive = library.archive(retention)
        archive.hold("teach-held", "inquiry", by="dr-legal")
        in_400_days = datetime.now(UTC) + timedelta(days=400)
        assert [s.recording_id for s in archive.expired(in_400_days)] == ["teach-old"]
        assert archive.expired(datetime.now(UTC)) == []

        assert archive.run_retention(in_400_days) == ["teach-old"]
        left = {s.recording_id for s in archive.list()}
        assert left == {"teach-held", "mdt-old", "audit-class", "teach-live"}
        assert library.keyring.is_shredded("teach-old")
        assert not (library.recordings / "teach-old").exists()
        shred = [f for a, _, f in library.audit.calls if a == "recording_shredded"]
        assert [f["recording"] for f in shred] == ["teach-old"]
        assert "teaching, 365 days" in str(shred[0]["reason"])

        in_11_years = datetime.now(UTC) + timedelta(days=4020)
        # mdt is past 3650 days; the unlisted class is kept (default None); held and live stay.
        assert archive.run_retention(in_11_years) == ["mdt-old"]
        with pytest.raises(RecordingInProgress):
            archive.shred("teach-live", "by hand")
    finally:
        live.sink.stop()


def test_after_shred_reads_say_shredded_and_no_segment_remains(library: Library) -> None:
    done = library.record("rec-s", seconds=12.0)
    archive = library.archive()
    stream = TrackStream(archive, "rec-s", "track-0")  # opened before the shred
    assert stream.read(0, 100)

    result = archive.shred("rec-s", "patient withdrew consent", by="dr-dpo")
    assert result.bytes_overwritten > 12 * 50 * 1100
    assert not done.directory.exists()
    assert list(seg_files(library.recordings)) == []
    for path in library.recordings.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes()

    with pytest.raises(RecordingShredded, match="shredded"):
        TrackStream(archive, "rec-s", "track-0")
    with pytest.raises(RecordingShredded, match="shredded"):
        stream.read(0, 100)  # a reader already open when it went
    with pytest.raises(RecordingShredded, match="shredded"):
        list(archive.read_from_time("rec-s", "alice:0", 0))
    with pytest.raises(RecordingShredded, match="shredded"):
        archive.summary("rec-s")
    with pytest.raises(RecordingShredded, match="shredded"):
        archive.hold("rec-s", "too late", by="dr-legal")
    with pytest.raises(RecordingShredded, match="shredded"):
        archive.shred("rec-s", "again")
    with pytest.raises(RecordingShredded, match="shredded"):
        library.keyring.unwrap("rec-s")
    assert [s.recording_id for s in archive.list()] == []
    [tombstone] = archive.shredded()
    assert tombstone["recording_id"] == "rec-s" and tombstone["room_id"] == "mdt-1"
    assert tombstone["reason"] == "patient withdrew consent"
    assert "dr-alice" not in json.dumps(tombstone)


def test_an_interrupted_shred_is_finished_by_the_next_retention_run(library: Library) -> None:
    library.record("rec-i", seconds=2.0)
    archive = library.archive()
    library.keyring.shred("rec-i")  # the key went, then the process died
    [summary] = archive.list()
    assert summary.status == "shredded" and summary.participants == ()
    with pytest.raises(RecordingShredded):
        TrackStream(archive, "rec-i", "track-0")
    assert archive.run_retention() == ["rec-i"]
    assert not (library.recordings / "rec-i").exists() and archive.list() == []


def test_unknown_recordings_are_not_found(shared: tuple[Library, Recorded]) -> None:
    library, _ = shared
    archive = library.archive()
    for recording_id in ("rec-nope", "../keys", "holds", ""):
        with pytest.raises(NotFound) as caught:
            archive.summary(recording_id)
        assert not isinstance(caught.value, RecordingShredded)
        with pytest.raises(NotFound):
            TrackStream(archive, recording_id, "track-0")
        with pytest.raises(NotFound):
            archive.hold(recording_id, "x", by="y")
        with pytest.raises(NotFound):
            archive.shred(recording_id, "x")
    with pytest.raises(NotFound, match="no stream"):
        TrackStream(archive, "rec-1", "track-7")
    with pytest.raises(NotFound, match="no track"):
        archive.read_from_time("rec-1", "carol:0")


# --- Range reads ----------------------------------------------------------------------------


def test_a_streams_length_comes_from_the_manifest_and_matches_its_plaintext(
    shared: tuple[Library, Recorded],
) -> None:
    library, done = shared
    archive = library.archive()
    data_key = library.keyring.unwrap("rec-1")
    for stream, track_id in (("track-0", "alice:0"), ("track-1", "alice:1"), ("events", None)):
        expected = full_stream(done.directory, data_key, track_id)
        reader = TrackStream(archive, "rec-1", stream)
        assert reader.length == len(expected)
        assert reader.read(0, reader.length) == expected


def test_range_reads_at_random_offsets_equal_the_decrypted_stream(
    shared: tuple[Library, Recorded],
) -> None:
    library, done = shared
    expected = full_stream(done.directory, library.keyring.unwrap("rec-1"), "alice:0")
    reader = TrackStream(library.archive(), "rec-1", "track-0")
    segments = read_manifest(done.directory)[0].streams["track-0"]
    assert len(segments) >= 4
    boundary = segment_plaintext_length(segments[0].size)
    generator = random.Random(7)
    ranges = [
        (generator.randrange(len(expected)), generator.randrange(1, 70_000)) for _ in range(60)
    ]
    ranges += [
        (boundary - 10, 20),  # across the first segment boundary
        (boundary - 16384 * 2 - 5, 16384 * 4),  # several chunks, across the boundary
        (boundary, 1),  # the first byte of a segment
        (len(expected) - 1, 1),  # the last byte
        (len(expected) - 1, 10_000),  # clipped at the end
        (0, 1),
    ]
    for offset, size in ranges:
        assert reader.read(offset, size) == expected[offset : offset + size], (offset, size)
    assert reader.read(len(expected), 10) == b"" and reader.read(10**9, 10) == b""
    with pytest.raises(ValueError):
        reader.read(-1, 10)


def test_a_range_read_opens_only_the_segments_it_covers(
    shared: tuple[Library, Recorded], tmp_path: Path
) -> None:
    library, done = shared
    expected = full_stream(done.directory, library.keyring.unwrap("rec-1"), "alice:0")
    copy = make_copy(library, done, tmp_path)
    reader = TrackStream(copy, "rec-1", "track-0")
    segments = read_manifest(done.directory)[0].streams["track-0"]
    lengths = [segment_plaintext_length(s.size) for s in segments]
    start = sum(lengths[:2]) + 1000
    for segment in segments:
        if segment.number != 2:
            (copy.recordings_dir / "rec-1" / "track-0" / f"{segment.number:06d}.seg").unlink()
    assert reader.read(start, 50_000) == expected[start : start + 50_000]


def make_copy(library: Library, done: Recorded, tmp_path: Path) -> Archive:
    """An archive over a private copy of the shared recording (same keyring and node key)."""
    target = tmp_path / "recordings"
    shutil.copytree(done.directory, target / "rec-1")
    return Archive(target, library.keyring, library.key.public_key())


def test_a_tampered_chunk_inside_a_read_raises_an_integrity_error(
    shared: tuple[Library, Recorded], tmp_path: Path
) -> None:
    library, done = shared
    expected = full_stream(done.directory, library.keyring.unwrap("rec-1"), "alice:0")
    archive = make_copy(library, done, tmp_path)
    path = archive.recordings_dir / "rec-1" / "track-0" / "000001.seg"
    data = bytearray(path.read_bytes())
    data[80 + 3 * 16400 + 100] ^= 0x01  # inside chunk 3
    path.write_bytes(data)
    reader = TrackStream(archive, "rec-1", "track-0")
    start = segment_plaintext_length(read_manifest(done.directory)[0].streams["track-0"][0].size)
    with pytest.raises(SegmentIntegrityError, match=r"track-0/000001\.seg: chunk 3 fails") as e:
        reader.read(start + 3 * 16384 + 10, 100)
    assert e.value.reason == "chunk"
    with pytest.raises(SegmentIntegrityError, match="chunk 3"):
        reader.read(start + 16384, 3 * 16384)  # a range that runs into it
    # Chunks authenticate on their own: the rest of the segment still reads.
    assert reader.read(start, 100) == expected[start : start + 100]

    path.write_bytes(data[:-100])  # and a truncated file is named before any decryption
    with pytest.raises(SegmentIntegrityError, match="bytes on disk") as e:
        reader.read(start, 100)
    assert e.value.reason == "truncated"


def test_a_segment_moved_to_another_position_fails_its_commitment(library: Library) -> None:
    done = library.record("rec-m", seconds=20.0)  # two audio segments of the same size
    stream_dir = done.directory / "track-1"
    first, second = stream_dir / "000000.seg", stream_dir / "000001.seg"
    assert first.stat().st_size == second.stat().st_size
    shutil.copy(first, second)
    reader = TrackStream(library.archive(), "rec-m", "track-1")
    with pytest.raises(SegmentIntegrityError, match=r"000001\.seg: segment header does not match"):
        reader.read(segment_plaintext_length(first.stat().st_size), 10)


def test_reading_from_a_time_yields_the_packets_from_then(
    shared: tuple[Library, Recorded],
) -> None:
    library, done = shared
    packets = list(library.archive().read_from_time("rec-1", "alice:1", 17_000))
    assert [(p.arrival_ms, p.data) for p in packets] == [
        (ms, data) for ms, data in done.sent["alice:1"] if ms >= 17_000
    ]


def test_a_damaged_manifest_is_not_read(shared: tuple[Library, Recorded], tmp_path: Path) -> None:
    library, done = shared
    archive = make_copy(library, done, tmp_path)
    path = archive.recordings_dir / "rec-1" / MANIFEST_NAME
    document = json.loads(path.read_bytes())
    document["streams"]["track-0"][0]["size"] += 16400
    path.write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="damaged"):
        TrackStream(archive, "rec-1", "track-0")


@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 3 * 16384, 100_000])
def test_plaintext_length_follows_from_the_ciphertext_size(size: int) -> None:
    ciphertext = encrypt_segment(bytes(size), bytes(32), segment_context("r", "t", 0))
    assert segment_plaintext_length(len(ciphertext)) == size


def test_an_impossible_ciphertext_size_is_refused() -> None:
    with pytest.raises(IntegrityError):
        segment_plaintext_length(80 + 16400 + 3)
    with pytest.raises(IntegrityError):
        segment_plaintext_length(10)
