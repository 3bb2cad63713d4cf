"""The recordings' second home (recorder/objectstore.py), against a real S3 endpoint: OpenStack
Swift's s3api (tests/fixtures/s3_server.py), no mock. The recordings are real: `RecordingSink`
on a fake clock (`tests.fixtures.recordings.record`), data keys from a real keyring, manifests
signed with a node key (`tests.test_archive.make_library`)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from core.errors import ConfigError, IntegrityError, NotFound
from recorder.keyring import WrappedKey
from recorder.manifest import MANIFEST_NAME, read_manifest, segment_file_name
from recorder.objectstore import (
    MIN_PART_SIZE,
    ObjectKeys,
    ObjectStoreError,
    ObjectStoreSettings,
    RecordingObjectStore,
    UploadRefused,
)
from recorder.sink import RecordingSettings
from recorder.verify import iter_packets, verify_recording
from tests.fixtures.recordings import AUDIO, VIDEO, Recorded
from tests.fixtures.redis_server import _free_port
from tests.fixtures.s3_server import S3Server
from tests.test_archive import Library, make_library

SMALL = RecordingSettings(segment_seconds=1.0)
"""Segments of a second: a few seconds of recording make several per stream."""
LARGE = RecordingSettings(segment_seconds=1000.0, segment_bytes=64 * 1024 * 1024)
"""One segment per stream, however long: 400 s of video make one of about 22 MB."""


def settings_for(server: S3Server, bucket: str, **changes: Any) -> ObjectStoreSettings:
    """The store's settings for `bucket` on `server`, with its keys unless `changes` say."""
    values: dict[str, Any] = {
        "endpoint_url": server.endpoint_url, "bucket": bucket, "region": server.region,
        "access_key_id": server.access_key, "secret_access_key": server.secret_key,
        "max_attempts": 1,
    }  # fmt: skip
    return ObjectStoreSettings(**(values | changes))


@pytest.fixture
async def store(s3_server: S3Server, bucket: str) -> AsyncIterator[RecordingObjectStore]:
    """The object store of this test's bucket."""
    async with RecordingObjectStore(settings_for(s3_server, bucket)) as opened:
        yield opened


@pytest.fixture
def library(tmp_path: Path) -> Library:
    """The node that records: recordings, keyring, KEK and node key."""
    return make_library(tmp_path / "node-a")


@pytest.fixture
def recorded(library: Library) -> Recorded:
    """Three seconds in one-second segments: three segments in each of three streams."""
    return library.record("rec-1", seconds=3.0, settings=SMALL)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Library, Recorded]:
    """A recording whose video segment is about 22 MB (left unmodified by the tests)."""
    library = make_library(tmp_path_factory.mktemp("large"))
    return library, library.record("rec-large", seconds=400.0, settings=LARGE)


def key_entry(library: Library, recording_id: str) -> bytes:
    """The recording's keyring entry as the node uploads it."""
    return library.keyring.entry(recording_id).to_json()


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file of a recording directory, by its path inside it."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def recording_bytes(directory: Path) -> int:
    """What a complete upload of the recording sends: its segments and manifest."""
    return sum(len(data) for data in files_of(directory).values())


async def stored_keys(s3: Any, bucket: str) -> dict[str, int]:
    """Every object in the bucket, with its size."""
    listed = await s3.list_objects_v2(Bucket=bucket)
    return {item["Key"]: item["Size"] for item in listed.get("Contents", [])}


async def pending_uploads(s3: Any, bucket: str) -> list[str]:
    """The keys of the bucket's unfinished multipart uploads."""
    listed = await s3.list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


async def a_part_is_stored(s3: Any, bucket: str) -> bool:
    """Whether an unfinished multipart upload of the bucket has a part stored (so its uploader
    has its upload id: aborting it is up to that uploader)."""
    listed = await s3.list_multipart_uploads(Bucket=bucket)
    for upload in listed.get("Uploads", []):
        parts = await s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        if parts.get("Parts"):
            return True
    return False


def segment_path(directory: Path, stream: str, number: int) -> Path:
    """A segment file of a local recording."""
    return directory / stream / segment_file_name(number)


def names_in(directory: Path) -> list[str]:
    """The names in a directory, sorted."""
    return sorted(path.name for path in directory.iterdir())


def flip_last_byte(path: Path) -> bytes:
    """Change the file's last byte in place (its size stays); returns the original content."""
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    return original


# --- pure: settings and keys -----------------------------------------------------------------


def test_a_part_under_5_mib_or_a_prefix_without_slash_is_refused() -> None:
    base: dict[str, Any] = {
        "endpoint_url": "http://127.0.0.1:1", "bucket": "b", "region": "us-east-1",
        "access_key_id": "a", "secret_access_key": "very-secret",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="part size"):
        ObjectStoreSettings(**base, part_size=MIN_PART_SIZE - 1)
    with pytest.raises(ConfigError, match="prefix"):
        ObjectStoreSettings(**base, prefix="consilium")
    settings = ObjectStoreSettings(**base, part_size=MIN_PART_SIZE)
    assert "very-secret" not in repr(settings), "the secret key stays out of repr (and logs)"


def test_object_keys_follow_the_recording_layout() -> None:
    keys = ObjectKeys("consilium/")
    assert keys.key_entry("rec-1") == "consilium/keys/rec-1.json"
    assert keys.manifest("rec-1") == "consilium/recordings/rec-1/manifest.json"
    assert keys.segment("rec-1", "track-0", 7) == "consilium/recordings/rec-1/track-0/000007.seg"
    assert keys.recording_of_manifest("consilium/recordings/rec-1/manifest.json") == "rec-1"
    for other in (
        "consilium/recordings/rec-1/track-0/000000.seg",
        "consilium/recordings/rec-1/x/manifest.json",
        "consilium/keys/rec-1.json",
        "elsewhere/recordings/rec-1/manifest.json",
    ):
        assert keys.recording_of_manifest(other) is None, other


@pytest.mark.parametrize("recording_id", ["../x", "a/b", "", ".hidden", "holds", "x" * 200])
async def test_an_id_that_could_leave_the_prefix_is_refused_before_any_request(
    recording_id: str, tmp_path: Path
) -> None:
    # Nothing listens there: any request would fail with ObjectStoreError, not ValueError.
    nowhere = ObjectStoreSettings(
        endpoint_url=f"http://127.0.0.1:{_free_port()}", bucket="b", region="us-east-1",
        access_key_id="a", secret_access_key="s", max_attempts=1,
    )  # fmt: skip
    async with RecordingObjectStore(nowhere) as store:
        with pytest.raises(ValueError, match="not a usable recording id"):
            await store.fetch(recording_id, tmp_path)
        with pytest.raises(ValueError, match="not a usable recording id"):
            await store.manifest(recording_id)
        with pytest.raises(ValueError, match="not a usable recording id"):
            await store.key_entry(recording_id)
        with pytest.raises(ValueError, match="not a usable recording id"):
            await store.delete(recording_id)
        with pytest.raises(ValueError, match="not a usable recording id"):
            await store.upload(tmp_path / "..", b"{}")
    assert names_in(tmp_path) == []


# --- upload, list, fetch ---------------------------------------------------------------------


async def test_a_recording_round_trips_to_a_replacement_node(
    store: RecordingObjectStore, library: Library, recorded: Recorded, tmp_path: Path
) -> None:
    sent = await store.upload(recorded.directory, key_entry(library, "rec-1"))

    assert sent == recording_bytes(recorded.directory) + len(key_entry(library, "rec-1"))
    assert await store.recordings() == ["rec-1"]
    # The replacement node: an empty recordings directory, the same KEK, the node's public key.
    replacement = tmp_path / "node-b" / "recordings"
    replacement.mkdir(parents=True)
    fetched = await store.fetch("rec-1", replacement, public_key=library.key.public_key())
    assert fetched == replacement / "rec-1"
    assert files_of(fetched) == files_of(recorded.directory)
    assert names_in(replacement) == ["rec-1"], "no staging directory left"
    entry = WrappedKey.from_json(await store.key_entry("rec-1"))
    kek = library.keyring.kek
    assert (entry.recording_id, entry.kek_id) == ("rec-1", kek.key_id)
    data_key = kek.unwrap(entry.wrapped_key, entry.recording_id)
    report = verify_recording(fetched, data_key, library.key.public_key()).check()
    assert report.segments_checked == 9
    for track in (VIDEO, AUDIO):
        packets = [(p.arrival_ms, p.data) for p in iter_packets(fetched, data_key, track.track_id)]
        assert packets == recorded.sent[track.track_id]


async def test_fetching_a_recording_already_there_returns_it_as_is(
    store: RecordingObjectStore, library: Library, recorded: Recorded
) -> None:
    await store.upload(recorded.directory, key_entry(library, "rec-1"))
    before = files_of(recorded.directory)

    fetched = await store.fetch("rec-1", library.recordings)

    assert fetched == recorded.directory
    assert files_of(fetched) == before


async def test_a_segment_bigger_than_a_part_goes_up_in_parts_and_comes_back_identical(
    s3_server: S3Server, bucket: str, s3: Any, large: tuple[Library, Recorded], tmp_path: Path
) -> None:
    library, done = large
    manifest, _, _ = read_manifest(done.directory)
    (video,) = manifest.streams["track-0"]
    assert video.size > 2 * MIN_PART_SIZE
    settings = settings_for(s3_server, bucket, part_size=MIN_PART_SIZE)

    async with RecordingObjectStore(settings) as store:
        await store.upload(done.directory, key_entry(library, "rec-large"))
        fetched = await store.fetch("rec-large", tmp_path)

    key = store.keys.segment("rec-large", "track-0", 0)
    head = await s3.head_object(Bucket=bucket, Key=key)
    parts = -(-video.size // MIN_PART_SIZE)
    assert head["ETag"].endswith(f'-{parts}"'), "S3's ETag of a multipart upload of this many"
    assert head["ContentLength"] == video.size
    assert head["Metadata"]["sha256"] == video.sha256
    assert await pending_uploads(s3, bucket) == []
    assert files_of(fetched) == files_of(done.directory)
    data_key = library.keyring.unwrap("rec-large")
    verify_recording(fetched, data_key, library.key.public_key()).check()


async def test_listing_names_only_complete_recordings_across_pages(
    s3_server: S3Server, s3: Any, bucket: str, library: Library
) -> None:
    # Pages of three keys: the listing goes through many of them.
    async with RecordingObjectStore(settings_for(s3_server, bucket, list_page_size=3)) as store:
        for recording_id in ("rec-a", "rec-b", "rec-c"):
            done = library.record(recording_id, seconds=2.0, settings=SMALL)
            await store.upload(done.directory, key_entry(library, recording_id))
        # Segments of a recording whose manifest never came (not complete), and keys that
        # name no recording.
        for key in (
            "consilium/recordings/rec-d/track-0/000000.seg",
            "consilium/recordings/rec-d/track-0/000001.seg",
            "consilium/recordings/manifest.json",
            "consilium/recordings/.x/manifest.json",
            "consilium/recordings/rec-e/track-0/manifest.json",
            "elsewhere/recordings/rec-f/manifest.json",
        ):
            await s3.put_object(Bucket=bucket, Key=key, Body=b"x")

        assert await store.recordings() == ["rec-a", "rec-b", "rec-c"]


# --- resuming --------------------------------------------------------------------------------


async def test_a_second_upload_sends_only_what_the_store_lacks(
    store: RecordingObjectStore, s3: Any, bucket: str, library: Library, recorded: Recorded
) -> None:
    entry = key_entry(library, "rec-1")
    first = await store.upload(recorded.directory, entry)
    assert first > 0

    assert await store.upload(recorded.directory, entry) == 0

    lost = store.keys.segment("rec-1", "track-1", 1)
    await s3.delete_object(Bucket=bucket, Key=lost)
    size = segment_path(recorded.directory, "track-1", 1).stat().st_size
    assert await store.upload(recorded.directory, entry) == size
    await s3.delete_object(Bucket=bucket, Key=store.keys.manifest("rec-1"))
    assert await store.recordings() == []
    manifest_size = (recorded.directory / MANIFEST_NAME).stat().st_size
    assert await store.upload(recorded.directory, entry) == manifest_size
    assert await store.recordings() == ["rec-1"]
    assert await store.upload(recorded.directory, entry) == 0


async def test_an_interrupted_upload_is_not_listed_and_a_second_run_finishes_it(
    s3_server: S3Server, bucket: str, s3: Any, large: tuple[Library, Recorded], tmp_path: Path
) -> None:
    library, done = large
    entry = key_entry(library, "rec-large")
    total = recording_bytes(done.directory) + len(entry)
    settings = settings_for(s3_server, bucket, part_size=MIN_PART_SIZE)
    async with RecordingObjectStore(settings) as store:
        upload = asyncio.create_task(store.upload(done.directory, entry))
        # The node stops mid-upload: cancelled once the video segment's first part is stored.
        while not upload.done():
            if await a_part_is_stored(s3, bucket):
                break
            await asyncio.sleep(0.002)
        assert not upload.done(), "the upload finished before it could be interrupted"
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload

        assert await store.recordings() == []
        assert await pending_uploads(s3, bucket) == [], "the multipart upload was aborted"
        assert store.keys.manifest("rec-large") not in await stored_keys(s3, bucket)

        resumed = await store.upload(done.directory, entry)

        assert 0 < resumed < total, "what was stored before the interruption is not sent again"
        assert await store.recordings() == ["rec-large"]
        fetched = await store.fetch("rec-large", tmp_path)
    data_key = library.keyring.unwrap("rec-large")
    verify_recording(fetched, data_key, library.key.public_key()).check()


# --- integrity -------------------------------------------------------------------------------


async def test_an_upload_failing_midway_leaves_no_manifest_in_the_store(
    store: RecordingObjectStore, s3: Any, bucket: str, library: Library, recorded: Recorded
) -> None:
    # The last segment sent is not what the manifest says: every other one is sent first.
    manifest, _, _ = read_manifest(recorded.directory)
    stream, entries = list(manifest.streams.items())[-1]
    last = segment_path(recorded.directory, stream, entries[-1].number)
    original = flip_last_byte(last)

    with pytest.raises(UploadRefused, match="SHA-256 does not match"):
        await store.upload(recorded.directory, key_entry(library, "rec-1"))

    stored = await stored_keys(s3, bucket)
    assert len(stored) == 8, "every segment but the last was sent"
    assert store.keys.segment("rec-1", stream, entries[-1].number) not in stored
    assert store.keys.manifest("rec-1") not in stored
    assert store.keys.key_entry("rec-1") not in stored
    assert await store.recordings() == []
    with pytest.raises(NotFound):
        await store.manifest("rec-1")

    last.write_bytes(original)
    assert await store.upload(recorded.directory, key_entry(library, "rec-1")) > 0
    assert await store.recordings() == ["rec-1"]


async def test_a_multipart_upload_of_a_segment_not_matching_its_manifest_is_aborted(
    s3_server: S3Server, bucket: str, s3: Any, large: tuple[Library, Recorded], tmp_path: Path
) -> None:
    library, done = large
    copy = tmp_path / "rec-large"
    shutil.copytree(done.directory, copy)
    flip_last_byte(segment_path(copy, "track-0", 0))  # seen only once every part is sent
    settings = settings_for(s3_server, bucket, part_size=MIN_PART_SIZE)

    async with RecordingObjectStore(settings) as store:
        with pytest.raises(UploadRefused, match="SHA-256 does not match"):
            await store.upload(copy, key_entry(library, "rec-large"))
        assert await store.recordings() == []

    assert await pending_uploads(s3, bucket) == []
    stored = await stored_keys(s3, bucket)
    assert store.keys.segment("rec-large", "track-0", 0) not in stored
    assert store.keys.manifest("rec-large") not in stored


async def test_a_local_recording_that_is_not_what_its_manifest_says_is_refused(
    store: RecordingObjectStore, s3: Any, bucket: str, library: Library, recorded: Recorded
) -> None:
    entry = key_entry(library, "rec-1")
    grown = segment_path(recorded.directory, "track-0", 1)
    original = grown.read_bytes()
    grown.write_bytes(original + b"\x00")
    with pytest.raises(UploadRefused, match=r"000001\.seg: \d+ bytes, the manifest says"):
        await store.upload(recorded.directory, entry)
    grown.unlink()
    with pytest.raises(UploadRefused, match="missing"):
        await store.upload(recorded.directory, entry)
    grown.write_bytes(original)
    other = library.record("rec-2", seconds=1.0, settings=SMALL)
    with pytest.raises(UploadRefused, match="key entry given is of recording 'rec-2'"):
        await store.upload(recorded.directory, key_entry(library, "rec-2"))
    running = library.record("rec-3", seconds=1.0, settings=SMALL, stop=False)
    try:
        with pytest.raises(UploadRefused, match="still recording"):
            await store.upload(running.directory, key_entry(library, "rec-3"))
    finally:
        running.sink.stop()
    (other.directory / MANIFEST_NAME).unlink()
    with pytest.raises(UploadRefused, match=r"no manifest\.json"):
        await store.upload(other.directory, key_entry(library, "rec-2"))

    assert await stored_keys(s3, bucket) == {}, "nothing was sent"


@pytest.mark.parametrize("damage", ["other bytes", "truncated", "missing"])
async def test_an_object_altered_in_the_store_fails_the_fetch_and_leaves_nothing(
    damage: str,
    store: RecordingObjectStore,
    s3: Any,
    bucket: str,
    library: Library,
    recorded: Recorded,
    tmp_path: Path,
) -> None:
    await store.upload(recorded.directory, key_entry(library, "rec-1"))
    key = store.keys.segment("rec-1", "track-0", 2)
    size = segment_path(recorded.directory, "track-0", 2).stat().st_size
    if damage == "missing":
        await s3.delete_object(Bucket=bucket, Key=key)
    else:
        body = os.urandom(size if damage == "other bytes" else size - 1)
        await s3.put_object(Bucket=bucket, Key=key, Body=body)
    replacement = tmp_path / "replacement"
    replacement.mkdir()

    with pytest.raises(IntegrityError, match=r"track-0/000002\.seg"):
        await store.fetch("rec-1", replacement)

    assert names_in(replacement) == []


async def test_a_manifest_signed_by_another_key_is_refused_before_downloading(
    store: RecordingObjectStore, library: Library, recorded: Recorded, tmp_path: Path
) -> None:
    await store.upload(recorded.directory, key_entry(library, "rec-1"))
    stranger = make_library(tmp_path / "stranger")

    with pytest.raises(IntegrityError, match="signature"):
        await store.fetch("rec-1", stranger.recordings, public_key=stranger.key.public_key())

    assert names_in(stranger.recordings) == []


# --- delete ----------------------------------------------------------------------------------


async def test_delete_removes_the_key_entry_and_the_media_and_may_be_repeated(
    store: RecordingObjectStore, s3: Any, bucket: str, library: Library, recorded: Recorded
) -> None:
    await store.upload(recorded.directory, key_entry(library, "rec-1"))
    # Parts of an upload that never finished hold media too.
    leftover = store.keys.segment("rec-1", "track-0", 9)
    await s3.create_multipart_upload(Bucket=bucket, Key=leftover)
    assert await pending_uploads(s3, bucket) == [leftover]

    await store.delete("rec-1")

    with pytest.raises(NotFound):
        await store.key_entry("rec-1")
    with pytest.raises(NotFound):
        await store.manifest("rec-1")
    assert await stored_keys(s3, bucket) == {}
    assert await pending_uploads(s3, bucket) == []
    assert await store.recordings() == []
    await store.delete("rec-1")
    await store.delete("never-uploaded")


async def test_an_interrupted_delete_has_made_the_media_unreadable_and_is_finished_later(
    store: RecordingObjectStore, s3: Any, bucket: str, library: Library, recorded: Recorded
) -> None:
    await store.upload(recorded.directory, key_entry(library, "rec-1"))
    # What a delete stopped after its first step leaves: no key, the media and the manifest.
    await s3.delete_object(Bucket=bucket, Key=store.keys.key_entry("rec-1"))

    with pytest.raises(NotFound, match="no data key"):
        await store.key_entry("rec-1")
    await store.delete("rec-1")

    assert await stored_keys(s3, bucket) == {}


# --- the store failing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [{"secret_access_key": "not-the-secret-key"}, {"access_key_id": "consilium:intruder"}],
    ids=["wrong secret key", "unknown access key"],
)
async def test_wrong_credentials_give_an_object_store_error_that_says_so(
    keys: dict[str, str],
    s3_server: S3Server,
    bucket: str,
    s3: Any,
    library: Library,
    recorded: Recorded,
) -> None:
    async with RecordingObjectStore(settings_for(s3_server, bucket, **keys)) as store:
        with pytest.raises(ObjectStoreError) as listing:
            await store.recordings()
        with pytest.raises(ObjectStoreError) as uploading:
            await store.upload(recorded.directory, key_entry(library, "rec-1"))
        with pytest.raises(ObjectStoreError) as deleting:
            await store.delete("rec-1")

    for refused in (listing, uploading, deleting):
        assert not isinstance(refused.value, ClientError | BotoCoreError)
        message = str(refused.value)
        assert f"{bucket}/consilium/" in message
        assert "HTTP 403" in message
        assert "check the access key id and secret key" in message
    for refused in (listing, deleting):  # a HEAD's refusal has no body to name its code
        assert {"SignatureDoesNotMatch", "AccessDenied"} & set(str(refused.value).split())
    assert f"list {bucket}/consilium/recordings/ failed" in str(listing.value)
    assert f"DELETE {bucket}/consilium/keys/rec-1.json failed" in str(deleting.value)
    assert await stored_keys(s3, bucket) == {}


async def test_a_missing_bucket_and_an_unreachable_store_give_object_store_errors(
    s3_server: S3Server, library: Library, recorded: Recorded
) -> None:
    entry = key_entry(library, "rec-1")
    async with RecordingObjectStore(settings_for(s3_server, "no-such-bucket")) as store:
        with pytest.raises(ObjectStoreError, match=r"PUT no-such-bucket/.*NoSuchBucket"):
            await store.upload(recorded.directory, entry)
    nowhere = settings_for(s3_server, "b", endpoint_url=f"http://127.0.0.1:{_free_port()}")
    async with RecordingObjectStore(nowhere) as store:
        with pytest.raises(ObjectStoreError, match="list b/consilium/recordings/ failed"):
            await store.recordings()
