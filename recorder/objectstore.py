"""A second home for closed recordings: an S3-compatible object store.

A node's recordings live on its own disk; when the node is gone for good, a replacement reads
them from here. What the store holds, under one prefix of one bucket:

    <prefix>keys/<recording id>.json                          the keyring entry (wrapped data key)
    <prefix>recordings/<recording id>/<stream>/<NNNNNN>.seg   every segment, byte for byte
    <prefix>recordings/<recording id>/manifest.json           the signed manifest, sent last

The layout under `recordings/<id>/` is the one on disk (`recorder/manifest.py`), so a fetched
recording is verified and read by the same code as a local one. The data key stays wrapped
(AES-GCM under the KEK, which never goes to the store): the store alone cannot read a recording.

Order is the protocol. An upload sends the segments, then the key entry, then the manifest: a
manifest in the store means the recording is complete there (`recordings` lists only those).
A delete removes the key entry first, so the media is unreadable at once (shredding), then the
media, then the manifest. Both are idempotent: every object carries its SHA-256 in its metadata
(`x-amz-meta-sha256`), an object already stored with the same size and hash is not sent again,
and running an interrupted upload or delete again finishes it.

Nothing is trusted on the way. An upload refuses a segment whose size or SHA-256 is not what the
manifest says (`UploadRefused`), and sends each object with its Content-MD5, which the store
checks. A fetch checks every segment's size and SHA-256 against the manifest while it streams it
to a staging directory, and renames that into place only when all is well: a recording
directory is complete or absent, never half there.

Every request goes through one aiobotocore client (path-style addressing; no aws-chunked
uploads, which the Swift S3 layer refuses). A failure of the store surfaces as `ObjectStoreError`
naming the request and the object; a missing object as `core.errors.NotFound`. File work (reads,
hashes, writes, fsyncs) runs in threads, off the node's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.durable import fsync_directory, write_all, write_atomically
from core.errors import ConfigError, IntegrityError, NotFound
from recorder.catalogue import valid_recording_id
from recorder.keyring import WrappedKey
from recorder.manifest import (
    MANIFEST_NAME,
    RecordingManifest,
    SegmentEntry,
    read_manifest,
    segment_file_name,
)

log = logging.getLogger("consilium.recorder")

MIB = 1024 * 1024
"""A mebibyte."""
MIN_PART_SIZE = 5 * MIB
"""S3's smallest part of a multipart upload (all but the last)."""
MAX_PARTS = 10_000
"""S3's largest number of parts of one multipart upload."""
SHA256_METADATA = "sha256"
"""The object metadata (`x-amz-meta-sha256`) holding the hex SHA-256 of an object's bytes."""

_DOWNLOAD_CHUNK = MIB
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CREDENTIAL_CODES = frozenset(
    {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403", "InvalidToken"}
)
# A stream is a directory of the recording: `track-<n>`, `events`, `images`. The manifest a
# fetch reads comes from the store, so its stream names are checked before they make a path.
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class ObjectStoreSettings:
    """Where the recordings' second home is and how to talk to it."""

    endpoint_url: str
    """The S3 endpoint, e.g. `https://s3.hospital.example` (path-style addressing is used)."""
    bucket: str
    """The bucket (created beforehand by the store's operator)."""
    region: str
    """The region SigV4 signs for."""
    access_key_id: str
    """The access key id."""
    secret_access_key: str = field(repr=False)
    """The secret key (kept out of `repr`, hence out of logs)."""
    prefix: str = "consilium/"
    """Every key starts with this: empty, or ending with `/`."""
    part_size: int = 8 * MIB
    """A file bigger than this goes up as a multipart upload in parts of this size (5 MiB at
    least: S3's smallest part)."""
    max_attempts: int = 3
    """Attempts per request (botocore's standard retry mode; 1: no retry)."""
    list_page_size: int = 1000
    """Keys asked for per ListObjectsV2 page (S3 answers at most 1000)."""

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ConfigError(
                f"object store part size {self.part_size} is under S3's smallest part "
                f"({MIN_PART_SIZE} bytes)"
            )
        if self.prefix.startswith("/") or (self.prefix and not self.prefix.endswith("/")):
            raise ConfigError(
                f"object store prefix {self.prefix!r} must be empty or end with '/' "
                "(and not start with one)"
            )
        if not self.bucket:
            raise ConfigError("object store bucket is empty")
        if self.max_attempts < 1:
            raise ConfigError("object store max_attempts must be at least 1")
        if not 1 <= self.list_page_size <= 1000:
            raise ConfigError("object store list_page_size must be 1 to 1000")


class ObjectStoreError(Exception):
    """The object store refused a request or could not be reached."""

    def __init__(self, operation: str, where: str, reason: str) -> None:
        """`operation` (`PUT`, `list`...) of `where` (`bucket/key`) failed for `reason`."""
        super().__init__(f"object store: {operation} {where} failed: {reason}")
        self.operation = operation
        """The request that failed."""
        self.where = where
        """The bucket and key (or prefix) it addressed."""
        self.reason = reason
        """What the store said, or why it could not be reached."""


class UploadRefused(IntegrityError):
    """A local recording that must not go to the store: no manifest, still recording, a key
    entry of another recording, or a segment that is not what its manifest says."""


def checked_recording_id(recording_id: str) -> str:
    """`recording_id`, if it can name a recording (so no key built from it leaves the prefix);
    `ValueError` (the caller's bug) if not."""
    if not valid_recording_id(recording_id):
        raise ValueError(f"not a usable recording id: {recording_id!r}")
    return recording_id


@dataclass(frozen=True)
class ObjectKeys:
    """The object keys of recordings under one prefix (see the module's layout)."""

    prefix: str
    """What every key starts with."""

    @property
    def recordings(self) -> str:
        """The prefix of every recording's objects."""
        return f"{self.prefix}recordings/"

    def recording(self, recording_id: str) -> str:
        """The prefix of one recording's objects."""
        return f"{self.recordings}{checked_recording_id(recording_id)}/"

    def manifest(self, recording_id: str) -> str:
        """The key of a recording's manifest."""
        return self.recording(recording_id) + MANIFEST_NAME

    def segment(self, recording_id: str, stream: str, number: int) -> str:
        """The key of one segment of a recording."""
        return f"{self.recording(recording_id)}{stream}/{segment_file_name(number)}"

    def key_entry(self, recording_id: str) -> str:
        """The key of a recording's keyring entry."""
        return f"{self.prefix}keys/{checked_recording_id(recording_id)}.json"

    def recording_of_manifest(self, key: str) -> str | None:
        """The recording whose manifest `key` is, or None if it is no manifest's key."""
        rest = key.removeprefix(self.recordings)
        recording_id, slash, name = rest.partition("/")
        if rest == key or not slash or name != MANIFEST_NAME:
            return None
        return recording_id if valid_recording_id(recording_id) else None


def manifest_segments(manifest: RecordingManifest) -> list[tuple[str, SegmentEntry]]:
    """Every segment the manifest lists, as (stream, entry), in order; `IntegrityError` if a
    stream's name could not be a directory of the recording."""
    segments = []
    for stream, entries in manifest.streams.items():
        if not _STREAM_NAME.fullmatch(stream):
            raise IntegrityError(f"manifest lists a stream named {stream!r}")
        segments += [(stream, entry) for entry in entries]
    return segments


@dataclass(frozen=True)
class _Upload:
    """A local recording checked for upload: what goes to the store, in order."""

    recording_id: str
    segments: list[tuple[str, SegmentEntry]]
    manifest_raw: bytes

    @classmethod
    def check(cls, directory: Path, key_entry: bytes) -> _Upload:
        """Refuse what must not be sent; the file sizes are checked here, each hash as the
        file is read to be sent."""
        recording_id = checked_recording_id(directory.name)
        if not (directory / MANIFEST_NAME).is_file():
            raise UploadRefused(f"{directory}: no {MANIFEST_NAME}, not a recording")
        manifest, _, raw = read_manifest(directory)
        if manifest.recording_id != recording_id:
            raise UploadRefused(
                f"{directory}: its manifest is of recording {manifest.recording_id!r}"
            )
        if manifest.status == "recording":
            raise UploadRefused(f"recording {recording_id} is still recording (or not recovered)")
        entry = WrappedKey.from_json(key_entry)
        if entry.recording_id != recording_id:
            raise UploadRefused(
                f"the key entry given is of recording {entry.recording_id!r}, not {recording_id!r}"
            )
        segments = manifest_segments(manifest)
        for stream, segment in segments:
            path = directory / stream / segment_file_name(segment.number)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise UploadRefused(f"{path}: missing (listed in the manifest)") from None
            if size != segment.size:
                raise UploadRefused(f"{path}: {size} bytes, the manifest says {segment.size}")
        return cls(recording_id, segments, raw)


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _read_part(
    path: Path, offset: int, length: int, hashing: Callable[[bytes], object]
) -> tuple[bytes, str]:
    """`length` bytes of `path` from `offset` (given to `hashing`, the whole file's running
    hash) and their MD5."""
    with open(path, "rb") as file:
        file.seek(offset)
        data = file.read(length)
    if len(data) != length:
        raise UploadRefused(f"{path}: shorter than the manifest says (changed while sent?)")
    hashing(data)
    return data, _content_md5(data)


def _read_whole(path: Path, size: int, sha256: str) -> tuple[bytes, str]:
    """All of `path` (at most one part), checked against its size and SHA-256, and its MD5."""
    data = path.read_bytes()
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise UploadRefused(f"{path}: its SHA-256 does not match the manifest")
    return data, _content_md5(data)


class _SegmentFile:
    """A segment being fetched: written as it streams in, hashed, counted, checked at the end."""

    def __init__(self, path: Path, entry: SegmentEntry, where: str) -> None:
        self.path = path
        self.entry = entry
        self.where = where
        self.size = 0
        self._hash = hashlib.sha256()
        path.parent.mkdir(mode=0o700, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def write(self, data: bytes) -> None:
        """Append `data`; `IntegrityError` as soon as it runs past the listed size."""
        self.size += len(data)
        if self.size > self.entry.size:
            raise IntegrityError(
                f"{self.where}: the stored object is longer than the manifest's "
                f"{self.entry.size} bytes"
            )
        self._hash.update(data)
        write_all(self._fd, data)

    def finish(self) -> None:
        """Check size and SHA-256 against the manifest, fsync, close."""
        try:
            if self.size != self.entry.size:
                raise IntegrityError(
                    f"{self.where}: the stored object is {self.size} bytes, the manifest says "
                    f"{self.entry.size}"
                )
            if self._hash.hexdigest() != self.entry.sha256:
                raise IntegrityError(
                    f"{self.where}: the stored object's SHA-256 does not match the manifest"
                )
            os.fsync(self._fd)
        finally:
            self.close()

    def close(self) -> None:
        """Close the file (once)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _seal(staging: Path, manifest_raw: bytes, streams: list[str], target: Path) -> bool:
    """Write the manifest into the staging directory, make it all durable and rename it to
    `target`; False if `target` appeared meanwhile (another fetch won)."""
    for stream in streams:
        directory = staging / stream
        directory.mkdir(mode=0o700, exist_ok=True)
        fsync_directory(directory)
    write_atomically(staging / MANIFEST_NAME, manifest_raw)
    try:
        os.rename(staging, target)
    except OSError:
        if target.exists():
            return False
        raise
    fsync_directory(target.parent)
    return True


class RecordingObjectStore:
    """Recordings and their wrapped keys in an S3-compatible bucket (see the module's layout).

    An async context manager owning one aiobotocore client: `async with
    RecordingObjectStore(settings) as store: await store.upload(...)`.
    """

    def __init__(self, settings: ObjectStoreSettings) -> None:
        """A store of `settings` (no connection until entered)."""
        self.settings = settings
        """Where the store is."""
        self.keys = ObjectKeys(settings.prefix)
        """The object keys of recordings."""
        self._session = get_session()
        self._exits = AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> RecordingObjectStore:
        """Open the client."""
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": self.settings.max_attempts},
            # No aws-chunked uploads (trailing checksums), which the Swift S3 layer refuses;
            # each body is sent with its Content-MD5 instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        creator = self._session.create_client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.region,
            aws_access_key_id=self.settings.access_key_id,
            aws_secret_access_key=self.settings.secret_access_key,
            config=config,
        )
        self._client = await self._exits.enter_async_context(creator)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the client."""
        self._client = None
        await self._exits.aclose()

    @property
    def _s3(self) -> Any:
        if self._client is None:
            raise RuntimeError("RecordingObjectStore used outside `async with`")
        return self._client

    def _where(self, key: str) -> str:
        return f"{self.settings.bucket}/{key}"

    @contextlib.contextmanager
    def _request(self, operation: str, key: str) -> Iterator[None]:
        """Turn whatever botocore or the connection raises into `ObjectStoreError`."""
        try:
            yield
        except ClientError as error:
            raise ObjectStoreError(operation, self._where(key), _client_reason(error)) from error
        except (BotoCoreError, aiohttp.ClientError, TimeoutError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise ObjectStoreError(operation, self._where(key), reason) from error

    # --- upload ----------------------------------------------------------------------------

    async def upload(self, recording_dir: Path, key_entry: bytes) -> int:
        """Copy a closed recording and its keyring entry (`Keyring.entry(id).to_json()`) to the
        store; returns the bytes sent (0 if everything was there already).

        Segments first, then the key entry, then the manifest. An object already stored with
        the same size and SHA-256 is skipped, so running it again after an interruption sends
        only what is missing. `UploadRefused` for a directory without a manifest, a recording
        still recording, a key entry of another recording or a segment file missing or of
        another size (all before any request), or a segment whose SHA-256 is not the
        manifest's (found as it is read to be sent: it never becomes an object, a multipart
        upload of it is aborted); `ObjectStoreError` if the store fails.
        """
        plan = await asyncio.to_thread(_Upload.check, recording_dir, key_entry)
        recording_id = plan.recording_id
        sent = 0
        for stream, entry in plan.segments:
            path = recording_dir / stream / segment_file_name(entry.number)
            key = self.keys.segment(recording_id, stream, entry.number)
            sent += await self._send_file(key, path, entry.size, entry.sha256)
        sent += await self._send_bytes(self.keys.key_entry(recording_id), key_entry)
        sent += await self._send_bytes(self.keys.manifest(recording_id), plan.manifest_raw)
        return sent

    async def _stored(self, key: str) -> tuple[int, str] | None:
        """The size and recorded SHA-256 of the object at `key`, None if there is none."""
        with self._request("HEAD", key):
            try:
                head = await self._s3.head_object(Bucket=self.settings.bucket, Key=key)
            except ClientError as error:
                if _code(error) in _MISSING_CODES:
                    return None
                raise
        return int(head["ContentLength"]), str(head.get("Metadata", {}).get(SHA256_METADATA, ""))

    async def _send_bytes(self, key: str, data: bytes) -> int:
        sha256 = hashlib.sha256(data).hexdigest()
        if await self._stored(key) == (len(data), sha256):
            return 0
        await self._put(key, data, _content_md5(data), sha256)
        return len(data)

    async def _send_file(self, key: str, path: Path, size: int, sha256: str) -> int:
        if await self._stored(key) == (size, sha256):
            return 0
        if size > self.settings.part_size:
            await self._send_in_parts(key, path, size, sha256)
        else:
            data, md5 = await asyncio.to_thread(_read_whole, path, size, sha256)
            await self._put(key, data, md5, sha256)
        return size

    async def _put(self, key: str, data: bytes, md5: str, sha256: str) -> None:
        with self._request("PUT", key):
            await self._s3.put_object(
                Bucket=self.settings.bucket, Key=key, Body=data, ContentMD5=md5,
                Metadata={SHA256_METADATA: sha256},
            )  # fmt: skip

    async def _send_in_parts(self, key: str, path: Path, size: int, sha256: str) -> None:
        """A multipart upload of `path`; the whole file's SHA-256 is checked before the upload
        is completed, and the upload is aborted on any failure (nothing half-made remains)."""
        part_size = max(self.settings.part_size, -(-size // MAX_PARTS))
        bucket = self.settings.bucket
        with self._request("create multipart upload", key):
            created = await self._s3.create_multipart_upload(
                Bucket=bucket, Key=key, Metadata={SHA256_METADATA: sha256}
            )
        upload_id = created["UploadId"]
        try:
            digest = hashlib.sha256()
            parts = []
            for number, offset in enumerate(range(0, size, part_size), start=1):
                length = min(part_size, size - offset)
                data, md5 = await asyncio.to_thread(_read_part, path, offset, length, digest.update)
                with self._request(f"upload part {number} of", key):
                    answer = await self._s3.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=data, ContentMD5=md5,
                    )  # fmt: skip
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            if digest.hexdigest() != sha256:
                raise UploadRefused(f"{path}: its SHA-256 does not match the manifest")
            with self._request("complete multipart upload", key):
                await self._s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )  # fmt: skip
        except BaseException:
            await self._abort(key, upload_id)
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            with self._request("abort multipart upload", key):
                await self._s3.abort_multipart_upload(
                    Bucket=self.settings.bucket, Key=key, UploadId=upload_id
                )
        except ObjectStoreError as error:
            # The failure that led here is the one to raise; `delete` aborts leftovers.
            log.warning("%s", error)

    # --- reading ---------------------------------------------------------------------------

    async def recordings(self) -> list[str]:
        """The ids of the recordings complete in the store (those with a manifest), sorted.

        Lists every key under `recordings/` (segments included), a page at a time."""
        found = []
        async for key, _ in self._list(self.keys.recordings):
            recording_id = self.keys.recording_of_manifest(key)
            if recording_id is not None:
                found.append(recording_id)
        return sorted(found)

    async def _list(self, prefix: str) -> AsyncIterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`, a page of ListObjectsV2 at a time."""
        token: dict[str, str] = {}
        while True:
            with self._request("list", prefix):
                page = await self._s3.list_objects_v2(
                    Bucket=self.settings.bucket, Prefix=prefix,
                    MaxKeys=self.settings.list_page_size, **token,
                )  # fmt: skip
            for item in page.get("Contents", []):
                yield str(item["Key"]), int(item["Size"])
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def manifest(self, recording_id: str) -> bytes:
        """The bytes of a recording's manifest in the store; `NotFound` if it has none."""
        key = self.keys.manifest(recording_id)
        return await self._get_small(key, f"no recording {recording_id} in the object store")

    async def key_entry(self, recording_id: str) -> bytes:
        """The bytes of a recording's keyring entry in the store (parse with
        `WrappedKey.from_json`); `NotFound` if it has none (never uploaded, or deleted)."""
        key = self.keys.key_entry(recording_id)
        raw = await self._get_small(
            key, f"no data key for recording {recording_id} in the object store"
        )
        if WrappedKey.from_json(raw).recording_id != recording_id:
            raise IntegrityError(f"{self._where(key)}: the key entry of another recording")
        return raw

    async def _get_small(self, key: str, missing: str) -> bytes:
        with self._request("GET", key):
            try:
                answer = await self._s3.get_object(Bucket=self.settings.bucket, Key=key)
            except ClientError as error:
                if _code(error) in _MISSING_CODES:
                    raise NotFound(missing) from None
                raise
            async with answer["Body"] as body:
                return bytes(await body.read())

    async def fetch(
        self,
        recording_id: str,
        recordings_dir: Path,
        *,
        public_key: Ed25519PublicKey | None = None,
    ) -> Path:
        """Download a recording into `recordings_dir/<id>` and return that directory (at once,
        untouched, if it is already there).

        Every segment streams to a staging directory beside it (a dot name, which the archive
        ignores) and is checked against the manifest's size and SHA-256; the directory is
        renamed into place only when all match, after every file and directory is fsynced.
        With `public_key`, the manifest's signature is checked before anything is downloaded.
        `NotFound` if the store has no such recording, `IntegrityError` (nothing left behind)
        if an object is missing or not what the manifest says, `ObjectStoreError` if the store
        fails. The data key is not part of it: see `key_entry`.
        """
        target = recordings_dir / checked_recording_id(recording_id)
        if target.exists():
            return target
        raw = await self.manifest(recording_id)
        manifest, signature = RecordingManifest.from_json(raw)
        if manifest.recording_id != recording_id:
            raise IntegrityError(
                f"{self._where(self.keys.manifest(recording_id))}: the manifest of recording "
                f"{manifest.recording_id!r}"
            )
        if public_key is not None:
            manifest.check_signature(signature, public_key)
        segments = manifest_segments(manifest)
        staging = Path(
            await asyncio.to_thread(
                tempfile.mkdtemp, prefix=f".{recording_id}.", suffix=".fetch", dir=recordings_dir
            )
        )
        try:
            for stream, entry in segments:
                await self._download(recording_id, stream, entry, staging)
            streams = list(manifest.streams)
            if await asyncio.to_thread(_seal, staging, raw, streams, target):
                return target
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # here, not in a thread: even if cancelled
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another fetch put it in place first
        return target

    async def _download(
        self, recording_id: str, stream: str, entry: SegmentEntry, staging: Path
    ) -> None:
        """Stream one segment object to its file in `staging`, checking it on the way."""
        key = self.keys.segment(recording_id, stream, entry.number)
        where = self._where(key)
        path = staging / stream / segment_file_name(entry.number)
        with self._request("GET", key):
            try:
                answer = await self._s3.get_object(Bucket=self.settings.bucket, Key=key)
            except ClientError as error:
                if _code(error) in _MISSING_CODES:
                    raise IntegrityError(f"{where}: listed in the manifest, missing") from None
                raise
            async with answer["Body"] as body:
                if int(answer["ContentLength"]) != entry.size:
                    raise IntegrityError(
                        f"{where}: the stored object is {answer['ContentLength']} bytes, the "
                        f"manifest says {entry.size}"
                    )
                file = await asyncio.to_thread(_SegmentFile, path, entry, where)
                try:
                    pending: list[bytes] = []
                    buffered = 0
                    async for chunk in body.iter_chunks(_DOWNLOAD_CHUNK):
                        pending.append(chunk)
                        buffered += len(chunk)
                        if buffered >= _DOWNLOAD_CHUNK:  # one thread hop per MiB
                            await asyncio.to_thread(file.write, b"".join(pending))
                            pending, buffered = [], 0
                    await asyncio.to_thread(file.write, b"".join(pending))
                    await asyncio.to_thread(file.finish)
                finally:
                    file.close()

    # --- delete ----------------------------------------------------------------------------

    async def delete(self, recording_id: str) -> None:
        """Remove a recording from the store: its key entry first (its media is unreadable
        from then on), then pending multipart uploads and every media object, then the
        manifest. What is already gone is not an error; an interrupted delete is finished by
        calling it again."""
        prefix = self.keys.recording(recording_id)
        manifest_key = self.keys.manifest(recording_id)
        await self._delete(self.keys.key_entry(recording_id))
        await self._abort_pending(prefix)
        media = [key async for key, _ in self._list(prefix) if key != manifest_key]
        for key in media:
            await self._delete(key)
        await self._delete(manifest_key)

    async def _delete(self, key: str) -> None:
        with self._request("DELETE", key):
            try:
                await self._s3.delete_object(Bucket=self.settings.bucket, Key=key)
            except ClientError as error:
                if _code(error) not in _MISSING_CODES:
                    raise

    async def _abort_pending(self, prefix: str) -> None:
        """Abort every unfinished multipart upload under `prefix` (its parts hold media)."""
        while True:
            with self._request("list multipart uploads", prefix):
                page = await self._s3.list_multipart_uploads(
                    Bucket=self.settings.bucket, Prefix=prefix
                )
            uploads = page.get("Uploads", [])
            for upload in uploads:
                with self._request("abort multipart upload", upload["Key"]):
                    try:
                        await self._s3.abort_multipart_upload(
                            Bucket=self.settings.bucket, Key=upload["Key"],
                            UploadId=upload["UploadId"],
                        )  # fmt: skip
                    except ClientError as error:
                        if _code(error) != "NoSuchUpload":  # finished or aborted meanwhile
                            raise
            if not uploads or not page.get("IsTruncated"):
                return


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _client_reason(error: ClientError) -> str:
    """The store's answer in words, with a hint for the usual configuration mistakes."""
    code = _code(error)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    message = error.response.get("Error", {}).get("Message", "")
    # A HEAD's answer has no body: its code is only the status.
    reason = f"HTTP {status}" if code in ("", str(status)) else f"{code} (HTTP {status})"
    reason += f": {message}" if message else ""
    if code in _CREDENTIAL_CODES:
        reason += " - check the access key id and secret key"
    elif code == "NoSuchBucket":
        reason += " - the bucket does not exist"
    return reason
