"""The archive: finding recordings, legal hold, retention and shredding, and Range reads.

Everything here is plain calls on the file system, with no event loop: the REST API and the CLI
call it from threads. The recordings directory is the sink's (`recorder/manifest.py`); beside the
recording directories, two small directories of our own:

    <recordings dir>/holds/<recording id>.json      a legal hold (reason, by whom, since when)
    <recordings dir>/shredded/<recording id>.json   a tombstone: what was shredded, when, why

A hold lives apart from the manifest because the manifest is the sink's, signed by the node, and
a hold is placed and released long after the recording ended. Both files are written atomically
(temp file, fsync, rename, directory fsync), and every hold, release and shred takes one lock
file (`holds/.lock`) so a hold placed while retention runs is never lost to a shred.

- Catalogue: `Archive.list` / `Archive.search` read every manifest (signature checked) into
  `RecordingSummary`s; a manifest that fails to verify is listed as `damaged`, never hidden.
  Parsed manifests are cached by the file's (mtime, size, inode): the sink replaces the file
  on every write, so a changed manifest always has a new key.
- Retention: `RetentionSettings` gives the days kept per recording class; `expired` lists the
  finished, verified, unheld recordings past them, `run_retention` shreds those.
- Shredding destroys the recording's wrapped data key first (`Keyring.shred`): that alone makes
  every copy of the media unreadable, backups included. The media is then overwritten and
  removed best effort, and a tombstone kept, so a later read says "shredded", not "not found".
- Playback: `TrackStream` addresses a stream's stored record stream (the concatenation of its
  segments' plaintexts) by byte offset for HTTP Range, opening only the chunks a range covers.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import as_utc, parse_stamp, stamp_s
from core.durable import fsync_directory, write_atomically
from core.errors import ConfigError, Conflict, IntegrityError, NotFound
from recorder.chunked import (
    C2SP_HEADER_SIZE,
    COBBLESTONE_256,
    SUITES,
    CipherSuite,
    SegmentIntegrityError,
)
from recorder.keyring import Keyring, RecordingShredded
from recorder.manifest import (
    IMAGES_STREAM,
    MANIFEST_NAME,
    RecordingManifest,
    SegmentEntry,
    check_recording_id,
    read_manifest,
    segment_file_name,
    stream_context,
)
from recorder.segments import SegmentHeader, open_segment_random_access
from recorder.sink import AuditCallback
from recorder.verify import RecordedPacket, iter_packets

log = logging.getLogger("consilium.recorder")

HOLDS_DIR = "holds"
"""The legal holds' directory, inside the recordings directory (no manifest: never a recording)."""
SHREDDED_DIR = "shredded"
"""The shredded recordings' tombstones, inside the recordings directory."""

ArchiveStatus = Literal["recording", "complete", "interrupted", "failed", "damaged", "shredded"]
"""A manifest's status, or `damaged` (its manifest does not verify: nothing it says is trusted),
or `shredded` (its data key is destroyed; the media is being removed)."""


class RecordingOnHold(Conflict):
    """The recording is under legal hold: it cannot be shredded until the hold is released."""

    code = "on_hold"


class RecordingInProgress(Conflict):
    """The recording is still being recorded (or awaits crash recovery): it cannot be shredded."""

    code = "recording_in_progress"


class NotOnHold(Conflict):
    """A release of a recording that is not under legal hold."""

    code = "not_on_hold"


@dataclass(frozen=True)
class RetentionSettings:
    """How long each recording class is kept after the recording ended."""

    days: Mapping[str, int] = field(default_factory=lambda: {"mdt": 3650, "teaching": 365})
    """Days kept, per recording class (the manifest's `recording_class`)."""
    default_days: int | None = 3650
    """Days kept for a class not in `days`; None keeps it until it is shredded by hand."""

    def __post_init__(self) -> None:
        for name, value in {**self.days, "(default)": self.default_days or 0}.items():
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"retention of class {name!r} must be whole days >= 0")

    def days_for(self, recording_class: str) -> int | None:
        """Days a recording of this class is kept; None: kept indefinitely."""
        return self.days.get(recording_class, self.default_days)


@dataclass(frozen=True)
class LegalHold:
    """A legal hold on one recording: while it stands, the recording is never shredded."""

    recording_id: str
    """The recording held."""
    reason: str
    """Why (a matter reference, a complaint number), as the person placing it gave it."""
    by: str
    """Who placed it (the identity's subject)."""
    since: str
    """When it was first placed, UTC ISO 8601 (kept when the reason is updated)."""


@dataclass(frozen=True)
class RecordingSummary:
    """What a listing shows of one recording, read from its manifest and its hold."""

    recording_id: str
    """The recording's id (its directory name)."""
    room_id: str
    """The room it was recorded in ("" when the manifest does not parse)."""
    started: str | None
    """UTC start, ISO 8601."""
    ended: str | None
    """UTC end, ISO 8601; None while recording."""
    duration_ms: int
    """Length of its timeline: the last record's time, ms since the start."""
    status: ArchiveStatus
    """See `ArchiveStatus`."""
    recording_class: str
    """Its retention class."""
    participants: tuple[str, ...]
    """The subjects (identities) of everyone present, in the order they appeared."""
    departments: tuple[str, ...]
    """Every department of those present, sorted."""
    cases: tuple[str, ...]
    """The case markers' labels, in order."""
    held: bool
    """Whether it is under legal hold."""
    expires_at: str | None
    """When retention shreds it (UTC ISO 8601); None while recording, for a class kept
    indefinitely, or when the manifest does not verify."""
    problem: str = ""
    """For a `damaged` recording: why its manifest does not verify. Its other fields are then
    what the manifest claims, unverified."""
    organisations: tuple[str, ...] = ()
    """Every institution of those present, sorted (with `departments`, whose recording it is:
    the archive API shows an archivist only those of their organisation and departments)."""
    participant_names: tuple[str, ...] = ()
    """The display names of everyone present, in the order they appeared (a search by
    participant finds them by name as well as by subject)."""


@dataclass(frozen=True)
class ShredResult:
    """What `Archive.shred` did, for the caller's audit entry."""

    recording_id: str
    """The recording shredded."""
    room_id: str
    """Its room, if its manifest could be read."""
    recording_class: str
    """Its retention class, if its manifest could be read."""
    reason: str
    """Why (e.g. "retention: mdt, 3650 days"), as given."""
    shredded_at: str
    """When, UTC ISO 8601."""
    files_removed: int
    """Media and manifest files overwritten and unlinked."""
    bytes_overwritten: int
    """Bytes of those files overwritten before unlinking."""
    leftovers: tuple[str, ...] = ()
    """Paths (relative to the recording) that could not be removed; unreadable all the same,
    since the data key is gone."""


@dataclass(frozen=True)
class _Catalogued:
    """One parsed manifest, as cached."""

    manifest: RecordingManifest | None
    """The manifest (what it claims, when not `verified`); None if it does not parse."""
    verified: bool
    """Whether its signature holds and it names its own directory."""
    problem: str = ""
    """Why it is not verified."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_stamp(text)
    except ValueError:
        return None


def _valid_id(recording_id: str) -> bool:
    try:
        check_recording_id(recording_id)
    except ValueError:
        return False
    return recording_id not in (HOLDS_DIR, SHREDDED_DIR)


def _header_size(suite: CipherSuite) -> int:
    return _header_size_of(suite.name)


@functools.cache
def _header_size_of(suite_name: str) -> int:
    return len(SegmentHeader(suite=SUITES[suite_name]).encode())


def segment_plaintext_length(ciphertext_size: int, suite: CipherSuite = COBBLESTONE_256) -> int:
    """The plaintext bytes of a segment file of `ciphertext_size` bytes, without decrypting it.

    Container header, salt and commitment, then chunks of 16 KiB + tag, the last one shorter
    (at least a tag). `IntegrityError` for a size no segment of `suite` can have.
    """
    header = _header_size(suite) + C2SP_HEADER_SIZE
    full, rest = divmod(ciphertext_size - header, suite.sealed_chunk_size)
    if ciphertext_size < header or rest < suite.tag_size:
        raise IntegrityError(f"no {suite.name} segment is {ciphertext_size} bytes long")
    return full * (suite.sealed_chunk_size - suite.tag_size) + rest - suite.tag_size


class Archive:
    """The recordings directory as the archivist sees it; safe to share between threads.

    `clock` gives the current UTC time (retention and the times written in holds and
    tombstones); `audit` is told of every hold, release and shred (`AuditLog.append` fits).
    """

    def __init__(
        self,
        recordings_dir: Path,
        keyring: Keyring,
        public_key: Ed25519PublicKey,
        retention: RetentionSettings | None = None,
        clock: Callable[[], datetime] = _utc_now,
        *,
        audit: AuditCallback | None = None,
    ) -> None:
        """Open the archive (creating `holds/` and `shredded/`, mode 0700, if missing)."""
        self.recordings_dir = recordings_dir
        self.keyring = keyring
        self.public_key = public_key
        self.retention = retention or RetentionSettings()
        self._clock = clock
        self._audit = audit
        self._holds_dir = recordings_dir / HOLDS_DIR
        self._shredded_dir = recordings_dir / SHREDDED_DIR
        for directory in (self._holds_dir, self._shredded_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cache: dict[Path, tuple[tuple[int, int, int], _Catalogued]] = {}
        self._layouts: dict[tuple[str, str], tuple[RecordingManifest, list[int], list[int]]] = {}
        self._cache_lock = threading.Lock()

    # --- the catalogue ---------------------------------------------------------------------

    def list(self) -> builtins.list[RecordingSummary]:
        """Every recording on disk, newest first (damaged and half-shredded ones included)."""
        return self.search()

    def search(
        self,
        *,
        room: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        participant: str | None = None,
        department: str | None = None,
        case: str | None = None,
        status: ArchiveStatus | None = None,
    ) -> builtins.list[RecordingSummary]:
        """The recordings matching every criterion given, newest first.

        `room`: exact room id. `since`/`until`: the recording was on at some time in
        [since, until) (naive times are UTC). `participant`: someone present had this subject,
        or a display name containing it (case-insensitive: "chen" finds "Dr Chen Wei").
        `department`: someone present belonged to it (case-insensitive). `case`: a case label
        contains this (case-insensitive). `status`: exactly this `ArchiveStatus`.
        A damaged recording is matched on what its manifest claims.
        """
        now = self._clock()
        held = self._held_ids()
        found = []
        for directory, entry in self._catalogue():
            summary = self._summarise(directory.name, entry, held)
            if _matches(summary, now, room, since, until, participant, department, case, status):
                found.append(summary)
        found.sort(key=lambda s: (s.started or "", s.recording_id), reverse=True)
        return found

    def summary(self, recording_id: str) -> RecordingSummary:
        """One recording's summary; `NotFound` or `RecordingShredded`."""
        directory = self._existing_directory(recording_id)
        entry = self._load(directory)
        if entry is None:
            raise NotFound(f"no recording {recording_id}")
        return self._summarise(recording_id, entry, self._held_ids())

    def manifest(self, recording_id: str) -> RecordingManifest:
        """A recording's verified manifest (shared with the cache: do not modify it).

        `NotFound`, `RecordingShredded`, or `IntegrityError` if it does not verify.
        """
        directory = self._existing_directory(recording_id)
        if self.keyring.is_shredded(recording_id):
            self._refuse_if_shredded(recording_id, force=True)
        entry = self._load(directory)
        if entry is None:
            raise NotFound(f"no recording {recording_id}")
        if not entry.verified or entry.manifest is None:
            raise IntegrityError(f"recording {recording_id} is damaged: {entry.problem}")
        return entry.manifest

    def data_key(self, recording_id: str) -> bytes:
        """The recording's data key, unwrapped; `RecordingShredded` once it is destroyed."""
        self._existing_directory(recording_id)
        return self.keyring.unwrap(recording_id)

    def stream_layout(
        self, manifest: RecordingManifest, stream: str
    ) -> tuple[builtins.list[int], builtins.list[int]]:
        """Each segment's plaintext start and length in `stream`, from ciphertext sizes alone;
        computed once per manifest version, so a seek does not pay for the stream's length."""
        key = (manifest.recording_id, stream)
        with self._cache_lock:
            cached = self._layouts.get(key)
        if cached is not None and cached[0] is manifest:
            return cached[1], cached[2]
        starts, lengths, total = [], [], 0
        for entry in manifest.streams[stream]:
            try:
                length = segment_plaintext_length(entry.size)
            except IntegrityError as error:
                where = f"{manifest.recording_id}/{stream}/{segment_file_name(entry.number)}"
                raise IntegrityError(f"{where}: {error}") from None
            starts.append(total)
            lengths.append(length)
            total += length
        with self._cache_lock:
            self._layouts[key] = (manifest, starts, lengths)
        return starts, lengths

    def _catalogue(self) -> Iterator[tuple[Path, _Catalogued]]:
        try:
            directories = sorted(p for p in self.recordings_dir.iterdir() if p.is_dir())
        except FileNotFoundError:
            return
        seen = set()
        for directory in directories:
            if not _valid_id(directory.name):
                continue
            entry = self._load(directory)
            if entry is not None:
                seen.add(directory)
                yield directory, entry
        with self._cache_lock:
            for gone in set(self._cache) - seen:
                del self._cache[gone]
            live = {directory.name for directory in seen}
            for layout in [k for k in self._layouts if k[0] not in live]:
                del self._layouts[layout]

    def _load(self, directory: Path) -> _Catalogued | None:
        """The directory's manifest, parsed and checked once per version of the file."""
        try:
            info = os.stat(directory / MANIFEST_NAME)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # Stat before reading: the content read is at least as new as the key it is cached under.
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        with self._cache_lock:
            cached = self._cache.get(directory)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            manifest, signature, _ = read_manifest(directory)
        except IntegrityError as error:
            entry = _Catalogued(None, False, str(error))
        else:
            try:
                manifest.check_signature(signature, self.public_key)
                if manifest.recording_id != directory.name:
                    raise IntegrityError(
                        f"manifest is of recording {manifest.recording_id}, found in "
                        f"directory {directory.name}"
                    )
                entry = _Catalogued(manifest, True)
            except IntegrityError as error:
                entry = _Catalogued(manifest, False, str(error))
        with self._cache_lock:
            self._cache[directory] = (key, entry)
        return entry

    def _summarise(self, recording_id: str, entry: _Catalogued, held: set[str]) -> RecordingSummary:
        manifest = entry.manifest
        is_held = recording_id in held
        if self.keyring.is_shredded(recording_id):
            # Key gone, media not yet removed: nothing of it is shown any more.
            # Whose it was still scopes who sees the tombstone.
            people = manifest.participants if manifest else []
            return RecordingSummary(
                recording_id, manifest.room_id if manifest else "", None, None, 0, "shredded",
                manifest.recording_class if manifest else "", (),
                tuple(sorted({d for p in people for d in p.depts})), (), is_held, None,
                organisations=tuple(sorted({p.org for p in people if p.org})),
            )  # fmt: skip
        if manifest is None:
            return RecordingSummary(
                recording_id, "", None, None, 0, "damaged", "", (), (), (), is_held, None,
                entry.problem,
            )  # fmt: skip
        duration = max(
            (segments[-1].last_ms for segments in manifest.streams.values() if segments),
            default=0,
        )
        return RecordingSummary(
            recording_id=recording_id,
            room_id=manifest.room_id,
            started=manifest.started,
            ended=manifest.ended,
            duration_ms=duration,
            status=manifest.status if entry.verified else "damaged",
            recording_class=manifest.recording_class,
            participants=tuple(dict.fromkeys(p.sub for p in manifest.participants)),
            departments=tuple(sorted({d for p in manifest.participants for d in p.depts})),
            organisations=tuple(sorted({p.org for p in manifest.participants if p.org})),
            participant_names=tuple(dict.fromkeys(p.name for p in manifest.participants)),
            cases=tuple(c.label for c in manifest.cases),
            held=is_held,
            expires_at=self._expiry(manifest) if entry.verified else None,
            problem=entry.problem,
        )

    def _expiry(self, manifest: RecordingManifest) -> str | None:
        if manifest.status == "recording":
            return None
        days = self.retention.days_for(manifest.recording_class)
        end = _parse_time(manifest.ended or manifest.updated or manifest.started)
        if days is None or end is None:
            return None
        return stamp_s(end + timedelta(days=days))

    # --- legal hold ------------------------------------------------------------------------

    def hold(self, recording_id: str, reason: str, by: str) -> LegalHold:
        """Place (or update the reason of) a legal hold; `NotFound`, `RecordingShredded`."""
        if not reason.strip():
            raise ValueError("a legal hold needs a reason")
        with self._locked():
            self._existing_directory(recording_id)
            self._refuse_if_shredded(recording_id)
            previous = self._read_hold(recording_id)
            since = previous.since if previous else stamp_s(self._clock())
            hold = LegalHold(recording_id, reason, by, since)
            # Audited first: a hold is never in force without its entry.
            self._report("recording_held", recording_id, required=True, by=by, reason=reason,
                         since=since)  # fmt: skip
            write_atomically(
                self._hold_path(recording_id), json.dumps(asdict(hold), indent=1).encode() + b"\n"
            )
        return hold

    def release(self, recording_id: str, by: str) -> LegalHold:
        """Lift the legal hold; returns it. `NotOnHold` if there is none."""
        with self._locked():
            hold = self._read_hold(recording_id)
            if hold is None:
                raise NotOnHold(f"recording {recording_id} is not under legal hold")
            # Audited first: a hold is never lifted without its entry.
            self._report("recording_released", recording_id, required=True, by=by,
                         reason=hold.reason)  # fmt: skip
            self._hold_path(recording_id).unlink()
            fsync_directory(self._holds_dir)
        return hold

    def hold_of(self, recording_id: str) -> LegalHold | None:
        """The legal hold standing on a recording, if any."""
        return self._read_hold(recording_id)

    def holds(self) -> builtins.list[LegalHold]:
        """Every standing legal hold, by recording id."""
        return [
            hold
            for recording_id in sorted(self._held_ids())
            if (hold := self._read_hold(recording_id))
        ]

    def _hold_path(self, recording_id: str) -> Path:
        if not _valid_id(recording_id):
            raise NotFound(f"no recording {recording_id!r}")
        return self._holds_dir / f"{recording_id}.json"

    def _held_ids(self) -> set[str]:
        try:
            names = os.listdir(self._holds_dir)
        except FileNotFoundError:
            return set()
        return {n.removesuffix(".json") for n in names if n.endswith(".json") and n[0] != "."}

    def _read_hold(self, recording_id: str) -> LegalHold | None:
        try:
            raw = self._hold_path(recording_id).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return LegalHold(**json.loads(raw))
        except (ValueError, TypeError) as error:
            # A hold file we cannot read still holds: refusing to shred is the safe side.
            log.error("legal hold of %s is unreadable: %s", recording_id, error)
            return LegalHold(recording_id, f"(unreadable hold file: {error})", "", "")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One hold, release or shred at a time, across threads and processes.
        fd = os.open(self._holds_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- retention and shredding -----------------------------------------------------------

    def expired(self, now: datetime | None = None) -> builtins.list[RecordingSummary]:
        """Recordings past their class's retention: finished, verified, not held."""
        moment = as_utc(now or self._clock())
        return [
            summary
            for summary in self.list()
            if summary.status in ("complete", "interrupted", "failed")
            and not summary.held
            and (expires := _parse_time(summary.expires_at)) is not None
            and expires <= moment
        ]

    def run_retention(self, now: datetime | None = None) -> builtins.list[str]:
        """Shred every expired recording (and finish shreds a crash interrupted); returns the
        ids shredded. One recording's failure is logged and audited, and the rest go on."""
        shredded = []
        pending = [s for s in self.list() if s.status == "shredded"]
        for summary in [*pending, *self.expired(now)]:
            days = self.retention.days_for(summary.recording_class)
            reason = (
                "retention: finishing an interrupted shred"
                if summary.status == "shredded"
                else f"retention: class {summary.recording_class}, {days} days"
            )
            try:
                self.shred(summary.recording_id, reason)
            except (RecordingOnHold, RecordingInProgress):
                continue  # held or reopened since the listing
            except Exception as error:
                log.exception("retention could not shred %s", summary.recording_id)
                self._report(
                    "recording_shredded", summary.recording_id, "error", reason=str(error)[:200]
                )
                continue
            shredded.append(summary.recording_id)
        return shredded

    def shred(self, recording_id: str, reason: str, by: str = "") -> ShredResult:
        """Destroy a recording for good: its data key first, then its media, best effort.

        Refuses a held recording (`RecordingOnHold`) and one still recording
        (`RecordingInProgress`); `NotFound` for an unknown id; `RecordingShredded` once nothing
        is left. Resumable: after a crash mid-way, calling it again finishes the job.
        """
        if not _valid_id(recording_id):
            raise NotFound(f"no recording {recording_id!r}")
        directory = self.recordings_dir / recording_id
        with self._locked():
            if not (directory / MANIFEST_NAME).exists():
                # Nothing left, or a shred interrupted after the manifest went: finish it.
                if not directory.is_dir() or not self.keyring.is_shredded(recording_id):
                    self._refuse_if_shredded(recording_id, force=True)
            if self._read_hold(recording_id) is not None:
                raise RecordingOnHold(
                    f"recording {recording_id} is under legal hold: release it first"
                )
            entry = self._load(directory)
            manifest = entry.manifest if entry is not None else None
            already = self.keyring.is_shredded(recording_id)
            if manifest is not None and manifest.status == "recording" and not already:
                raise RecordingInProgress(
                    f"recording {recording_id} is still recording (or awaits crash recovery)"
                )
            # The key first: once it is gone, every copy of the media is unreadable.
            self.keyring.shred(recording_id)
            tombstone = self._tombstone_path(recording_id)
            if tombstone.exists():
                marker = json.loads(tombstone.read_bytes())
            else:
                marker = {
                    "recording_id": recording_id,
                    "room_id": manifest.room_id if manifest else "",
                    "recording_class": manifest.recording_class if manifest else "",
                    "started": manifest.started if manifest else None,
                    "ended": manifest.ended if manifest else None,
                    "shredded": stamp_s(self._clock()),
                    "reason": reason,
                    "by": by,
                }
                write_atomically(tombstone, json.dumps(marker, indent=1).encode() + b"\n")
        # Outside the lock: overwriting an hour of media takes a while, and the key is gone.
        removed, overwritten, leftovers = _destroy_directory(directory)
        with self._cache_lock:
            self._cache.pop(directory, None)
            for layout in [k for k in self._layouts if k[0] == recording_id]:
                del self._layouts[layout]
        result = ShredResult(
            recording_id=recording_id,
            room_id=str(marker.get("room_id", "")),
            recording_class=str(marker.get("recording_class", "")),
            reason=reason,
            shredded_at=str(marker.get("shredded", "")),
            files_removed=removed,
            bytes_overwritten=overwritten,
            leftovers=tuple(leftovers),
        )
        self._report(
            "recording_shredded", recording_id, by=by, reason=reason,
            files_removed=removed, leftovers=list(leftovers),
        )  # fmt: skip
        return result

    def shredded(self) -> builtins.list[dict[str, Any]]:
        """The tombstones of shredded recordings (id, room, class, times, reason), by id."""
        tombstones = []
        for path in sorted(self._shredded_dir.glob("[!.]*.json")):
            try:
                tombstones.append(json.loads(path.read_bytes()))
            except ValueError:
                tombstones.append({"recording_id": path.stem, "problem": "unreadable tombstone"})
        return tombstones

    def _tombstone_path(self, recording_id: str) -> Path:
        return self._shredded_dir / f"{recording_id}.json"

    def _existing_directory(self, recording_id: str) -> Path:
        """The recording's directory; `RecordingShredded` or `NotFound` if it has none."""
        if not _valid_id(recording_id):
            raise NotFound(f"no recording {recording_id!r}")
        directory = self.recordings_dir / recording_id
        if not (directory / MANIFEST_NAME).exists():
            self._refuse_if_shredded(recording_id)
            if not directory.is_dir():
                raise NotFound(f"no recording {recording_id}")
        return directory

    def _refuse_if_shredded(self, recording_id: str, *, force: bool = False) -> None:
        """Raise `RecordingShredded` if it was (or `NotFound`, with `force`, if it never was)."""
        tombstone = self._tombstone_path(recording_id)
        if tombstone.exists() or self.keyring.is_shredded(recording_id):
            when = "an unknown date"
            with contextlib.suppress(OSError, ValueError, AttributeError):
                when = json.loads(tombstone.read_bytes()).get("shredded", when)
            raise RecordingShredded(
                f"recording {recording_id} was shredded on {when}: its data key is destroyed",
                recording_id=recording_id,
            )
        if force:
            raise NotFound(f"no recording {recording_id}")

    def _report(
        self,
        action: str,
        recording_id: str,
        outcome: str = "info",
        *,
        required: bool = False,
        **fields: Any,
    ) -> None:
        """Tell the audit callback. `required`: an action about to take effect, which must not
        without its entry: the callback's failure is raised, not only logged."""
        if self._audit is None:
            return
        try:
            self._audit(action, outcome, recording=recording_id, **fields)
        except Exception:
            log.exception("archive: audit callback failed for %s %s", action, recording_id)
            if required:
                raise

    # --- reading ---------------------------------------------------------------------------

    def read_from_time(
        self, recording_id: str, track_id: str | None, start_ms: int = 0
    ) -> Iterator[RecordedPacket]:
        """A track's records from `start_ms` on (`track_id` None: the events stream), each
        segment authenticated as it streams (`recorder.verify.iter_packets`)."""
        manifest = self.manifest(recording_id)
        if track_id is not None and manifest.track(track_id) is None:
            raise NotFound(f"recording {recording_id} has no track {track_id!r}")
        data_key = self.data_key(recording_id)
        return iter_packets(
            self.recordings_dir / recording_id, data_key, track_id, start_ms,
            public_key=self.public_key,
        )  # fmt: skip

    def images(self, recording_id: str) -> builtins.list[tuple[dict[str, Any], bytes]]:
        """The shared images stored with the recording: (metadata incl. `frame`, bytes) per
        frame, in the order they were stored (a later copy of the same frame wins)."""
        manifest = self.manifest(recording_id)
        if not manifest.streams.get(IMAGES_STREAM):
            return []
        found: dict[tuple[str, int], tuple[dict[str, Any], bytes]] = {}
        for record in iter_packets(
            self.recordings_dir / recording_id, self.data_key(recording_id), None,
            public_key=self.public_key, without_track=IMAGES_STREAM,
        ):  # fmt: skip
            header, _, data = record.data.partition(b"\n")
            try:
                meta = json.loads(header)
                key = (str(meta["image_id"]), int(meta["frame"]))
            except (ValueError, KeyError, TypeError) as error:
                raise IntegrityError(f"images record at {record.arrival_ms} ms: {error}") from None
            found[key] = (meta, data)
        return list(found.values())


def _is_present(summary: RecordingSummary, who: str) -> bool:
    """Whether someone present has the subject `who`, or a display name containing it."""
    if who in summary.participants:
        return True
    wanted = who.casefold().strip()
    return bool(wanted) and any(wanted in name.casefold() for name in summary.participant_names)


def _matches(
    summary: RecordingSummary,
    now: datetime,
    room: str | None,
    since: datetime | None,
    until: datetime | None,
    participant: str | None,
    department: str | None,
    case: str | None,
    status: ArchiveStatus | None,
) -> bool:
    if room is not None and summary.room_id != room:
        return False
    if status is not None and summary.status != status:
        return False
    if participant is not None and not _is_present(summary, participant):
        return False
    if department is not None and department.casefold() not in {
        d.casefold() for d in summary.departments
    }:
        return False
    if case is not None and not any(case.casefold() in c.casefold() for c in summary.cases):
        return False
    if since is not None or until is not None:
        started = _parse_time(summary.started)
        if started is None:
            return False
        ended = _parse_time(summary.ended) or now
        if until is not None and started >= as_utc(until):
            return False
        if since is not None and ended < as_utc(since):
            return False
    return True


_ZEROS = bytes(1024 * 1024)


def _destroy_directory(directory: Path) -> tuple[int, int, list[str]]:
    """Overwrite and unlink every file under `directory` (the manifest last), then remove it.

    Zeros, not random bytes: the files are ciphertext under a destroyed key already; the
    overwrite only keeps their blocks from lingering on file systems that reuse them in place.
    Returns (files removed, bytes overwritten, what could not be removed).
    """
    removed = overwritten = 0
    leftovers: list[str] = []
    if not directory.is_dir():
        return removed, overwritten, leftovers
    for root, dirs, files in os.walk(directory, topdown=False):
        here = Path(root)
        for name in sorted(files, key=lambda n: n == MANIFEST_NAME):
            path = here / name
            try:
                overwritten += _overwrite(path)
                path.unlink()
                removed += 1
            except OSError as error:
                leftovers.append(f"{path.relative_to(directory)}: {error.strerror}")
        for name in dirs:
            with contextlib.suppress(OSError):
                (here / name).rmdir()
        with contextlib.suppress(OSError):
            fsync_directory(here)
    try:
        directory.rmdir()
    except OSError as error:
        leftovers.append(f"./: {error.strerror}")
    with contextlib.suppress(OSError):
        fsync_directory(directory.parent)
    return removed, overwritten, leftovers


def _overwrite(path: Path) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError as error:
        if path.is_symlink():
            return 0  # a link is only unlinked, its target left alone
        raise error
    try:
        size = os.fstat(fd).st_size
        left = size
        while left:
            left -= os.write(fd, _ZEROS[: min(left, len(_ZEROS))])
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


class TrackStream:
    """One stream of a recording as a byte range for HTTP Range: the concatenation, in order,
    of its segments' plaintexts (the stored records: arrival ms, length, RTP bytes).

    `length` comes from the manifest's ciphertext sizes alone. `read` bisects the segments by
    plaintext offset and opens only the one or two segments and the chunks a range covers, so
    a seek costs the same an hour in as at the start. The segment's SHA-256 is not checked on
    a read (that would read the whole file): instead the file's size must be the manifest's,
    the container header and key commitment must match the recording, track and position, the
    final chunk must authenticate (the length), and every chunk read authenticates under
    AES-GCM. A fault raises `SegmentIntegrityError` naming the segment. `verify_recording` is
    the full check.
    """

    def __init__(self, archive: Archive, recording_id: str, stream: str) -> None:
        """Load the manifest and unwrap the data key; `NotFound`, `RecordingShredded`,
        `IntegrityError` (damaged manifest)."""
        manifest = archive.manifest(recording_id)
        if stream not in manifest.streams:
            raise NotFound(f"recording {recording_id} has no stream {stream!r}")
        self.recording_id = recording_id
        """The recording read."""
        self.stream = stream
        """The stream read: `track-<n>` or `events`."""
        self.track_id = manifest.track_of_stream(stream)
        """The track recorded in it (None: the events stream)."""
        self._keyring = archive.keyring
        self._directory = archive.recordings_dir / recording_id / stream
        self._data_key = archive.data_key(recording_id)
        self._segments = manifest.streams[stream]
        self._header_size = _header_size(COBBLESTONE_256)
        self._starts, self._lengths = archive.stream_layout(manifest, stream)
        total = self._starts[-1] + self._lengths[-1] if self._starts else 0
        self.length = total
        """Plaintext bytes of the whole stream."""

    def _where(self, entry: SegmentEntry) -> str:
        return f"{self.recording_id}/{self.stream}/{segment_file_name(entry.number)}"

    def read(self, offset: int, size: int) -> bytes:
        """The bytes [offset, offset + size) of the stream, clipped to its end (b"" past it)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, self.length)
        if offset >= end:
            return b""
        index = bisect.bisect_right(self._starts, offset) - 1
        parts = []
        position = offset
        while position < end:
            local = position - self._starts[index]
            count = min(end - position, self._lengths[index] - local)
            if count > 0:
                parts.append(self._read_segment(index, local, count))
                position += count
            index += 1
        return b"".join(parts)

    def _read_segment(self, index: int, offset: int, count: int) -> bytes:
        entry = self._segments[index]
        where = self._where(entry)
        context = stream_context(self.recording_id, self.track_id, entry.number, self.stream)
        try:
            file = open(self._directory / segment_file_name(entry.number), "rb")
        except FileNotFoundError:
            if self._keyring.is_shredded(self.recording_id):
                raise RecordingShredded(
                    f"recording {self.recording_id} was shredded while it was read",
                    recording_id=self.recording_id,
                ) from None
            raise SegmentIntegrityError(
                f"{where}: missing (listed in the manifest)", reason="truncated"
            ) from None
        with file:
            on_disk = os.fstat(file.fileno()).st_size
            if on_disk != entry.size:
                raise SegmentIntegrityError(
                    f"{where}: {on_disk} bytes on disk, the manifest lists {entry.size}",
                    reason="truncated" if on_disk < entry.size else "trailing_data",
                )
            try:
                reader = open_segment_random_access(file, self._data_key, context)
                if reader.chunk_offset(0) != self._header_size + C2SP_HEADER_SIZE:
                    raise SegmentIntegrityError(
                        f"container header is not {self._header_size} bytes", reason="format"
                    )
                if reader.size() != self._lengths[index]:
                    raise SegmentIntegrityError(
                        "its authenticated length differs from the manifest's", reason="chunk"
                    )
                return reader.read(offset, count)
            except SegmentIntegrityError as error:
                raise SegmentIntegrityError(
                    f"{where}: {error}", reason=error.reason, chunk=error.chunk
                ) from None
