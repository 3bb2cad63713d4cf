"""A room's annotation log on disk: append-only, each record sealed on its own; its flush policy.

`AnnotationLog` keeps each room's stamped events on disk, each record sealed with AES-256-GCM under
the room's data key: no annotation or chat text touches disk in the clear. A write that fails (a
full disk) never reaches the participants: the event is still stamped and delivered, its record
waits in memory (`Backlog`, bounded) and is written when space returns (`annotations.room` tells
the room that what it draws and says is not being stored, then that it is again).

When more than `MAX_UNWRITTEN_BYTES` wait, the oldest are dropped; the first write once the disk
has room is then a sealed gap record (`LogGap`: which seqs were lost, how many, since when), so the
log stays readable and says what it misses. A gap without its record is still refused (`LogError`):
only the room's key can write one.

The policy (when to fsync, when to try again, what to drop) is plain objects given `now`
(`FlushPolicy`, `Backlog`); `AnnotationLog` does the file I/O and reads its clocks.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from annotations.messages import Event
from core.canonical import stamp_ms

log = logging.getLogger("consilium.sfu.annotations")

LENGTH_BYTES = 4
NONCE_BYTES = 12
FSYNC_INTERVAL_S = 0.1
"""Each record is flushed to the OS at once (a crashed process loses nothing), but fsynced at most
every 100 ms (and on close): an fsync per op would cap a room at a few hundred ops/s on ordinary
disks, and a power cut then loses at most the last ~100 ms of drawing."""
RETRY_INTERVAL_S = 1.0
"""While the disk is full, held-back records are tried again at most this often."""
MAX_UNWRITTEN_BYTES = 16 * 1024 * 1024
"""Sealed records held in memory while the disk is full; beyond this the oldest are dropped
(counted in `lost`, and written down as a `LogGap`). 16 MiB is tens of thousands of chat messages
or shapes."""


class LogError(Exception):
    """An annotation log that cannot be read back (not a torn last record): names the seq."""


class LogGap(msgspec.Struct, frozen=True, tag_field="type", tag="gap"):
    """A record of the log standing for records a full disk lost: seqs `first` to `last`, all of
    them, dropped from memory (oldest first) from `time` on. Sealed and placed like an event
    record at seq `first`; the next record is `last + 1`."""

    first: int
    last: int
    time: str
    """When the first of them was dropped (ISO-8601 UTC)."""

    @property
    def lost(self) -> int:
        """How many records the gap stands for."""
        return self.last - self.first + 1


_event_decoder = msgspec.json.Decoder(Event)
_gap_decoder = msgspec.json.Decoder(LogGap)
_encoder = msgspec.json.Encoder()


def utc_now() -> str:
    """Server time, ISO-8601 UTC with milliseconds (an event's and a gap's `time`)."""
    return stamp_ms(datetime.now(UTC))


def _decode_record(plain: bytes) -> Event | LogGap:
    """An event (its `type` tag may be absent), else a gap record (tagged `gap`)."""
    try:
        return _event_decoder.decode(plain)
    except msgspec.DecodeError:
        return _gap_decoder.decode(plain)


def log_path(data_dir: Path, room_id: str) -> Path:
    """Where a room's annotation log lives."""
    if not room_id or "/" in room_id or "\\" in room_id or room_id in (".", ".."):
        raise ValueError(f"room id {room_id!r} cannot name a folder")
    return data_dir / "rooms" / room_id / "annotations.log"


def record_seq(record: bytes) -> int:
    """The seq a framed record carries (in its nonce, after the 4 random bytes)."""
    return int.from_bytes(record[LENGTH_BYTES + 4 : LENGTH_BYTES + NONCE_BYTES], "big")


@dataclass(slots=True)
class FlushPolicy:
    """When the log fsyncs and when it tries held-back records again, given `now` (monotonic)."""

    last_fsync: float = 0.0
    """When it last fsynced."""
    last_try: float = 0.0
    """When it last tried (or failed) to write held-back records."""

    def fsync_due(self, now: float) -> bool:
        """Whether a record written at `now` is fsynced at once (at most every 100 ms)."""
        return now - self.last_fsync >= FSYNC_INTERVAL_S

    def retry_due(self, now: float, force: bool = False) -> bool:
        """Whether held-back records are tried again at `now` (at most every second)."""
        return force or now - self.last_try >= RETRY_INTERVAL_S


@dataclass(slots=True)
class Backlog:
    """Sealed records a write failure held back, oldest first, bounded by `max_bytes`: beyond it
    the oldest are dropped and `gap` says which, for the gap record written before the rest."""

    max_bytes: int = MAX_UNWRITTEN_BYTES
    """Bytes of sealed records held at most."""
    records: deque[bytes] = field(default_factory=deque)
    """Framed sealed records, in seq order (written before any newer one)."""
    size: int = 0
    """Bytes in `records`."""
    gap: LogGap | None = None
    """Records dropped just before `records[0]`, not yet written down as a gap record."""
    lost: int = 0
    """Records dropped since the log was opened."""

    def hold(self, record: bytes, time: str) -> None:
        """Keep `record` (its seq follows the last one held); drop the oldest beyond the bound
        (one is always kept), extending the gap; `time` is now, for a gap that starts."""
        self.records.append(record)
        self.size += len(record)
        while self.size > self.max_bytes and len(self.records) > 1:
            dropped = self.records.popleft()
            self.size -= len(dropped)
            self.lost += 1
            seq = record_seq(dropped)
            if self.gap is None:
                self.gap = LogGap(first=seq, last=seq, time=time)
            else:
                self.gap = msgspec.structs.replace(self.gap, last=seq)

    def written(self) -> None:
        """The oldest record went to disk."""
        self.size -= len(self.records.popleft())


class AnnotationLog:
    """A room's append-only event log, each record AES-256-GCM-sealed on its own.

    Record: 4-byte big-endian length, then a 12-byte nonce (4 random bytes + the 8-byte seq) and
    the ciphertext of the stamped event's JSON (or of a `LogGap`), with the room id and the seq as
    associated data (a record cannot be moved to another room or position unnoticed).
    """

    def __init__(
        self,
        path: Path,
        room_id: str,
        key: bytes,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = utc_now,
        max_unwritten_bytes: int = MAX_UNWRITTEN_BYTES,
    ) -> None:
        self.path = path
        self.room_id = room_id
        self._aead = AESGCM(key)
        self._clock = clock
        self._wall_clock = wall_clock
        self._policy = FlushPolicy()
        self.dirty = False
        """Records flushed but not yet fsynced."""
        self.gaps: list[LogGap] = []
        """The gaps read back when the log was opened: records a full disk lost, written down."""
        self.last_seq = 0
        """The last seq on disk when the log was opened (an event's, or the end of a gap)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._valid_end = 0
        self._events = list(self._read())
        # Unbuffered: a write that fails leaves nothing behind in a buffer to be written later.
        self._file = open(path, "r+b" if path.exists() else "w+b", buffering=0)
        if self._valid_end < self._file.seek(0, os.SEEK_END):
            self._file.truncate(self._valid_end)  # the torn record goes: appends follow good ones
        self._file.seek(self._valid_end)
        self._end = self._valid_end
        """Where the next record goes: the end of the last one written in full."""
        self._backlog = Backlog(max_unwritten_bytes)

    @property
    def unwritten(self) -> deque[bytes]:
        """Sealed records a write failure held back, in order (written before any newer one)."""
        return self._backlog.records

    @property
    def lost(self) -> int:
        """Records dropped because more than `MAX_UNWRITTEN_BYTES` waited."""
        return self._backlog.lost

    def _aad(self, seq: int) -> bytes:
        return self.room_id.encode() + b"\0" + seq.to_bytes(8, "big")

    def _seal(self, seq: int, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(4) + seq.to_bytes(8, "big")
        sealed = nonce + self._aead.encrypt(nonce, plaintext, self._aad(seq))
        return len(sealed).to_bytes(LENGTH_BYTES, "big") + sealed

    def _read(self) -> Iterator[Event]:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos, expected = 0, 1
        while pos < len(data):
            if pos + LENGTH_BYTES > len(data):
                break
            length = int.from_bytes(data[pos : pos + LENGTH_BYTES], "big")
            end = pos + LENGTH_BYTES + length
            if end > len(data):
                break
            record = data[pos + LENGTH_BYTES : end]
            if length < NONCE_BYTES + 16:
                raise LogError(f"{self.path}: record {expected} is malformed")
            seq = int.from_bytes(record[4:NONCE_BYTES], "big")
            if seq != expected:
                raise LogError(f"{self.path}: record {expected} carries seq {seq}")
            try:
                plain = self._aead.decrypt(record[:NONCE_BYTES], record[NONCE_BYTES:],
                                           self._aad(seq))  # fmt: skip
                entry = _decode_record(plain)
            except (InvalidTag, msgspec.DecodeError):
                raise LogError(f"{self.path}: record {seq} fails authentication") from None
            if isinstance(entry, LogGap):
                if entry.first != seq or entry.last < entry.first:
                    raise LogError(f"{self.path}: record {seq} is a gap that does not fit")
                self.gaps.append(entry)
                log.warning("annotation log: records lost to a full disk",
                            extra={"path": str(self.path), "first": entry.first,
                                   "last": entry.last, "lost": entry.lost,
                                   "since": entry.time})  # fmt: skip
                pos, expected = end, entry.last + 1
            else:
                yield entry
                pos, expected = end, expected + 1
            self._valid_end = pos
            self.last_seq = expected - 1
        if pos < len(data):
            log.warning("annotation log ends with a torn record; ignored",
                        extra={"path": str(self.path), "seq": expected})  # fmt: skip

    def replay(self) -> list[Event]:
        """Every event read back when the log was opened, in order (a gap's records are not
        among them: see `gaps`)."""
        events, self._events = self._events, []
        return events

    @property
    def stored(self) -> bool:
        """Whether no record is held back (every one appended is on disk, or `lost`)."""
        return not self._backlog.records

    def append(self, seq: int, plaintext: bytes) -> None:
        """Seal and write one record; written at once, fsynced at most every 100 ms. Never
        raises on a write error: the record is held back (see `retry`) and `stored` is False."""
        record = self._seal(seq, plaintext)
        if self._backlog.records:
            self._backlog.hold(record, self._wall_clock())
            self.retry()
            return
        try:
            self._write(record)
        except OSError as error:
            self._backlog.hold(record, self._wall_clock())
            self._policy.last_try = self._clock()
            log.error("annotation log not written; held in memory",
                      extra={"path": str(self.path), "error": error.strerror})  # fmt: skip
            return
        if self._policy.fsync_due(self._clock()):
            self.sync()

    def retry(self, force: bool = False) -> None:
        """Write the held-back records, oldest first (after the gap record, if some were lost),
        stopping at the first that fails; at most every `RETRY_INTERVAL_S` unless `force`d."""
        now = self._clock()
        backlog = self._backlog
        if not backlog.records or not self._policy.retry_due(now, force):
            return
        self._policy.last_try = now
        if backlog.gap is not None:
            try:
                self._write(self._seal(backlog.gap.first, _encoder.encode(backlog.gap)))
            except OSError:
                return
            log.warning("annotation log: records lost to a full disk, gap written",
                        extra={"path": str(self.path), "first": backlog.gap.first,
                               "last": backlog.gap.last, "lost": backlog.gap.lost})  # fmt: skip
            backlog.gap = None
        while backlog.records:
            try:
                self._write(backlog.records[0])
            except OSError:
                return
            backlog.written()
        log.info("annotation log written again", extra={"path": str(self.path)})

    def _write(self, record: bytes) -> None:
        """One whole record at the end, or nothing: a partly written record is cut away so the
        log stays readable (and the next record follows the last good one)."""
        if self._file.closed:
            raise OSError("annotation log is closed")
        try:
            view = memoryview(record)
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[written:]
        except OSError:
            try:
                self._file.truncate(self._end)
                self._file.seek(self._end)
            except OSError:
                log.exception("annotation log: a torn record could not be cut away")
            raise
        self._end += len(record)
        self.dirty = True

    def sync(self) -> None:
        """fsync what was written (called by `append`, by the room's timer, and at close)."""
        if self.dirty and not self._file.closed:
            try:
                os.fsync(self._file.fileno())
            except OSError:
                log.exception("annotation log: fsync failed", extra={"path": str(self.path)})
                return
            self.dirty = False
            self._policy.last_fsync = self._clock()

    def close(self) -> None:
        """fsync and close (a last try for held-back records first)."""
        if not self._file.closed:
            self.retry(force=True)
            self.sync()
            if self._backlog.records:
                extra = {"path": str(self.path), "records": len(self._backlog.records)}
                log.error("annotation log closed with records unwritten", extra=extra)
            self._file.close()
