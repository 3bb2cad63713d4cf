"""The recording's writer thread: the sink's queued records into encrypted segments on disk.

`SegmentWriter` takes what `recorder.sink.RecordingSink` queues, in order, on one background
thread: records are encrypted into their stream's open segment as they are written (the segment
cipher encrypts as it writes, so plaintext never reaches a file); a close seals the final chunk,
fsyncs the file and its directory and lists the segment in the manifest, which is rewritten and
signed. The queue is bounded: a buffer offered past `max_queued_bytes` is dropped and counted
(`dropped_records`), never waited for, since the forwarder must not block. If a write fails (a
full disk), the writer keeps the sealed segments, deletes the unfinished ones and marks the
manifest `failed`, saying where the stored media ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.durable import fsync_directory
from recorder.chunked import ChunkedEncryptor
from recorder.diskspace import failure_code
from recorder.manifest import (
    CaseMarker,
    ConsentRecord,
    RecordedParticipant,
    RecordingManifest,
    SegmentEntry,
    TrackEntry,
    segment_file_name,
    stream_context,
    utc_now,
    write_manifest,
)
from recorder.segments import open_segment_writer

log = logging.getLogger("consilium.recorder")


@dataclass
class Records:
    """Records of one stream, in order, to encrypt into its open segment."""

    stream: str
    """The stream's name."""
    payload: bytes
    """The records (arrival ms, length, bytes), concatenated."""
    records: int
    """How many."""
    first_ms: int
    """Time of the first."""
    last_ms: int
    """Time of the last."""


@dataclass
class CloseSegments:
    """Close these streams' open segments (and mark a case, if one starts here)."""

    streams: list[str]
    """The streams whose segment closes."""
    case: CaseMarker | None = None
    """The case marker that closed them, if any."""


@dataclass
class AddTrack:
    """A recorded track appears: its stream is listed in the manifest."""

    entry: TrackEntry
    """The track's manifest entry."""


@dataclass
class AddStream:
    """A stream without a track (the images stream) appears."""

    name: str
    """The stream's name."""


@dataclass
class AddMeta:
    """A participant or a consent answer for the manifest."""

    entry: RecordedParticipant | ConsentRecord
    """What the manifest lists."""


@dataclass
class StopWriting:
    """Close everything and finish the manifest; the writer thread ends."""

    before_keyframe: dict[str, int] = field(default_factory=dict)
    """Per video stream: packets dropped while awaiting a keyframe (for the manifest)."""
    failure: str = ""
    """Stopped because it could not go on (`disk_full`): the manifest says `failed`."""


WriterItem = Records | CloseSegments | AddTrack | AddStream | AddMeta | StopWriting
"""What the sink queues for the writer."""


class HashingFile:
    """A segment file being written: counts and hashes the ciphertext on its way to disk."""

    __slots__ = ("file", "hash", "size")

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        """Hash, count and write `data`."""
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)


@dataclass
class OpenSegment:
    """A stream's segment being written by the writer thread."""

    number: int
    """Its number in the stream (its file name)."""
    path: Path
    """Its file."""
    out: HashingFile
    """The file, hashed and counted as the ciphertext goes in."""
    encryptor: ChunkedEncryptor
    """The segment cipher writing into `out`."""
    records: int = 0
    """Records written so far."""
    first_ms: int = 0
    """Time of its first record."""
    last_ms: int = 0
    """Time of its last record."""


class SegmentWriter:
    """The writer thread of one recording: applies the sink's queued items, in order, to the
    segment files and the manifest (encrypt, seal, fsync, rewrite and sign)."""

    def __init__(
        self,
        directory: Path,
        manifest: RecordingManifest,
        data_key: bytes,
        signing_key: Ed25519PrivateKey,
        *,
        max_queued_bytes: int,
        report: Callable[..., None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        """A writer (not started) for the recording in `directory`, updating `manifest`.
        `report` audits (action, outcome, **fields); `on_failure` is told, from the writer
        thread, when a write fails."""
        self.directory = directory
        """The recording's directory."""
        self.recording_id = manifest.recording_id
        """The recording written."""
        self.manifest = manifest
        """The manifest, as last written (the writer thread's once started)."""
        self.max_queued_bytes = max_queued_bytes
        """Buffers waiting beyond this are dropped (counted), not waited for."""
        self.dropped_records = 0
        """Records dropped because the writer fell behind (for the manifest)."""
        self.failure: BaseException | None = None
        """Why the writer stopped, if it failed (a full disk)."""
        self.last_manifest_sha256 = ""
        """SHA-256 of the manifest file as last written."""
        self._data_key = data_key
        self._signing_key = signing_key
        self._report = report
        self._on_failure = on_failure
        self._queue: deque[WriterItem] = deque()
        self._queued_bytes = 0
        self._wake = threading.Condition(threading.Lock())
        self._open: dict[str, OpenSegment] = {}
        self._closed_bytes = 0
        """Bytes of the segments closed so far (the writer thread adds to it)."""
        self._thread = threading.Thread(
            target=self._write_loop, name=f"recorder-{self.recording_id}", daemon=True
        )

    # --- the sink's side -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the thread was started."""
        return self._thread.ident is not None

    @property
    def bytes_written(self) -> int:
        """Segment bytes (ciphertext) written so far, read from another thread for the node's
        metrics: the closed segments' and the open ones' so far."""
        return self._closed_bytes + sum(s.out.size for s in tuple(self._open.values()))

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread to end; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def offer(self, item: Records) -> None:
        """Queue records, or drop and count them if the writer is too far behind."""
        if self._queued_bytes + len(item.payload) > self.max_queued_bytes:
            self.dropped_records += item.records
            return
        with self._wake:
            self._queued_bytes += len(item.payload)
            self._queue.append(item)
            self._wake.notify()

    def put(self, item: WriterItem) -> None:
        """Queue a control item (never dropped)."""
        with self._wake:
            self._queue.append(item)
            self._wake.notify()

    def write_manifest(self) -> str:
        """Sign and write the manifest now; its SHA-256 (kept as `last_manifest_sha256`)."""
        self.manifest.dropped_records = self.dropped_records
        self.manifest.updated = utc_now()
        self.last_manifest_sha256 = write_manifest(self.directory, self.manifest, self._signing_key)
        return self.last_manifest_sha256

    # --- the writer thread -----------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                item = self._queue.popleft()
                if isinstance(item, Records):
                    self._queued_bytes -= len(item.payload)
            if self.failure is not None:
                if isinstance(item, StopWriting):
                    self._finish_failed(item)
                    return
                continue
            try:
                if self._handle(item):
                    return
            except Exception as error:  # a full disk, a removed directory
                self.failure = error
                log.exception("recording %s: writer failed", self.recording_id)
                self._on_failure(error)  # the sink stops taking packets and tells the room
                if isinstance(item, StopWriting):
                    self._finish_failed(item)
                    return

    def _finish_failed(self, item: StopWriting) -> None:
        """After the writer failed: keep the completed segments, delete the unfinished ones
        (never listed, so nothing refers to them, and on a full disk that gives back the room
        the manifest needs), and mark the manifest `failed`."""
        for segment in self._open.values():
            for step in (segment.out.file.close, segment.path.unlink):
                try:
                    step()  # closing flushes, which may fail again: the file goes anyway
                except OSError:
                    pass
        self._open.clear()
        for entry in self.manifest.tracks:
            entry.before_keyframe = item.before_keyframe.get(entry.stream, 0)
        self._mark_failed(item.failure or failure_code(self.failure))

    def _mark_failed(self, code: str) -> None:
        """Sign the manifest as `failed` with `code` and where the stored media ends (the last
        completed segment), and audit it; a manifest that cannot be written is left to
        recovery (`interrupted` at the next start) and the audit entry says so."""
        streams = self.manifest.streams.values()
        for segments in streams:
            if segments:
                segments[-1].final = True
        self.manifest.status = "failed"
        self.manifest.failure = code
        self.manifest.stopped_at_ms = max(
            (segment.last_ms for segments in streams for segment in segments), default=0
        )
        self.manifest.ended = utc_now()
        written: str | None = None
        try:
            written = self.write_manifest()
        except OSError:
            log.exception("recording %s: failed manifest not written", self.recording_id)
        self._report(
            "recording_failed", "error", reason=code, stopped_at_ms=self.manifest.stopped_at_ms,
            manifest_sha256=written, manifest_written=written is not None,
        )  # fmt: skip

    def _handle(self, item: WriterItem) -> bool:
        if isinstance(item, Records):
            segment = self._open.get(item.stream) or self._open_segment(item.stream)
            if not segment.records:
                segment.first_ms = item.first_ms
            segment.encryptor.write(item.payload)
            segment.records += item.records
            segment.last_ms = item.last_ms
        elif isinstance(item, AddTrack):
            self.manifest.tracks.append(item.entry)
            self.manifest.streams[item.entry.stream] = []
            (self.directory / item.entry.stream).mkdir(mode=0o700)
            self.write_manifest()
        elif isinstance(item, AddStream):
            self.manifest.streams.setdefault(item.name, [])
        elif isinstance(item, AddMeta):
            if isinstance(item.entry, RecordedParticipant):
                known = {p.participant_id for p in self.manifest.participants}
                if item.entry.participant_id not in known:
                    self.manifest.participants.append(item.entry)
            else:
                self.manifest.consent.append(item.entry)
            self.write_manifest()
        elif isinstance(item, CloseSegments):
            for name in item.streams:
                self._close_segment(name)
            if item.case is not None:
                self.manifest.cases.append(item.case)
            self.write_manifest()
            if item.case is not None:
                # The label may name a patient: the audit log gets only its position and time.
                self._report(
                    "recording_case_marked",
                    case=len(self.manifest.cases),
                    at_ms=item.case.at_ms,
                    manifest_sha256=self.last_manifest_sha256,
                )
        else:
            for entry in self.manifest.tracks:
                entry.before_keyframe = item.before_keyframe.get(entry.stream, 0)
            for name in list(self._open):
                self._close_segment(name)
            for segments in self.manifest.streams.values():
                if segments:
                    segments[-1].final = True
            if item.failure:
                self._mark_failed(item.failure)
                return True
            self.manifest.status = "complete"
            self.manifest.ended = utc_now()
            self.write_manifest()
            self._report("recording_stopped", manifest_sha256=self.last_manifest_sha256)
            return True
        return False

    def _open_segment(self, stream: str) -> OpenSegment:
        number = len(self.manifest.streams[stream])
        directory = self.directory / stream
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / segment_file_name(number)
        out = HashingFile(open(path, "xb"))  # closed in _close_segment
        track_id = self.manifest.track_of_stream(stream)
        context = stream_context(self.recording_id, track_id, number, stream)
        segment = OpenSegment(number, path, out, open_segment_writer(out, self._data_key, context))
        self._open[stream] = segment
        return segment

    def _close_segment(self, stream: str) -> None:
        segment = self._open.pop(stream, None)
        if segment is None:
            return
        segment.encryptor.close()
        self._closed_bytes += segment.out.size
        file = segment.out.file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        fsync_directory(segment.path.parent)
        self.manifest.streams[stream].append(
            SegmentEntry(
                number=segment.number,
                sha256=segment.out.hash.hexdigest(),
                size=segment.out.size,
                first_ms=segment.first_ms,
                last_ms=segment.last_ms,
                records=segment.records,
            )
        )
