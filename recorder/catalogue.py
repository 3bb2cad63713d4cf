"""The archive's catalogue: what a listing shows of each recording, and the cache it reads from.

`ManifestCache` is the one piece of state the archive's parts share: each recording's parsed
manifest (signature checked), cached by the file's (mtime, size, inode) — the sink replaces the
file on every write, so a changed manifest always has a new key — and each stream's segment
layout per manifest version, behind one lock, so the parts are safe to share between threads.
A manifest that fails to verify is catalogued as `damaged`, never hidden.

`summarise`, `expiry` and `matches` are pure: a manifest (and what the holds, the keyring and
the retention settings say of it) in, a `RecordingSummary` or a verdict out, `now` passed in.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import as_utc, parse_stamp, stamp_s
from core.errors import IntegrityError
from recorder.manifest import MANIFEST_NAME, RecordingManifest, check_recording_id, read_manifest

HOLDS_DIR = "holds"
"""The legal holds' directory, inside the recordings directory (no manifest: never a recording)."""
SHREDDED_DIR = "shredded"
"""The shredded recordings' tombstones, inside the recordings directory."""

ArchiveStatus = Literal["recording", "complete", "interrupted", "failed", "damaged", "shredded"]
"""A manifest's status, or `damaged` (its manifest does not verify: nothing it says is trusted),
or `shredded` (its data key is destroyed; the media is being removed)."""


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
class CatalogueEntry:
    """One parsed manifest, as cached."""

    manifest: RecordingManifest | None
    """The manifest (what it claims, when not `verified`); None if it does not parse."""
    verified: bool
    """Whether its signature holds and it names its own directory."""
    problem: str = ""
    """Why it is not verified."""


StreamLayout = tuple[list[int], list[int]]
"""Each segment's plaintext start and length in one stream."""


def parse_time(text: str | None) -> datetime | None:
    """A manifest's or a summary's UTC stamp as a datetime; None if absent or unreadable."""
    if not text:
        return None
    try:
        return parse_stamp(text)
    except ValueError:
        return None


def valid_recording_id(recording_id: str) -> bool:
    """Whether `recording_id` can name a recording directory (not the holds' or tombstones')."""
    try:
        check_recording_id(recording_id)
    except ValueError:
        return False
    return recording_id not in (HOLDS_DIR, SHREDDED_DIR)


class ManifestCache:
    """Parsed, signature-checked manifests per file version, and stream layouts per manifest
    version: the archive's shared state, behind one lock (safe to share between threads)."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        """An empty cache checking manifests against the node's `public_key`."""
        self.public_key = public_key
        """The node's manifest-signing key."""
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[tuple[int, int, int], CatalogueEntry]] = {}
        self._layouts: dict[tuple[str, str], tuple[RecordingManifest, StreamLayout]] = {}

    def scan(self, recordings_dir: Path) -> Iterator[tuple[Path, CatalogueEntry]]:
        """Every recording directory with a manifest, by name, with its entry; what is gone
        from the directory is dropped from the cache once the scan ends."""
        try:
            directories = sorted(p for p in recordings_dir.iterdir() if p.is_dir())
        except FileNotFoundError:
            return
        seen = set()
        for directory in directories:
            if not valid_recording_id(directory.name):
                continue
            entry = self.load(directory)
            if entry is not None:
                seen.add(directory)
                yield directory, entry
        with self._lock:
            for gone in set(self._entries) - seen:
                del self._entries[gone]
            live = {directory.name for directory in seen}
            for layout in [k for k in self._layouts if k[0] not in live]:
                del self._layouts[layout]

    def load(self, directory: Path) -> CatalogueEntry | None:
        """The directory's manifest, parsed and checked once per version of the file."""
        try:
            info = os.stat(directory / MANIFEST_NAME)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # Stat before reading: the content read is at least as new as the key it is cached under.
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        with self._lock:
            cached = self._entries.get(directory)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            manifest, signature, _ = read_manifest(directory)
        except IntegrityError as error:
            entry = CatalogueEntry(None, False, str(error))
        else:
            try:
                manifest.check_signature(signature, self.public_key)
                if manifest.recording_id != directory.name:
                    raise IntegrityError(
                        f"manifest is of recording {manifest.recording_id}, found in "
                        f"directory {directory.name}"
                    )
                entry = CatalogueEntry(manifest, True)
            except IntegrityError as error:
                entry = CatalogueEntry(manifest, False, str(error))
        with self._lock:
            self._entries[directory] = (key, entry)
        return entry

    def forget(self, directory: Path) -> None:
        """Drop a recording (shredded) from the cache: its manifest and its layouts."""
        with self._lock:
            self._entries.pop(directory, None)
            for layout in [k for k in self._layouts if k[0] == directory.name]:
                del self._layouts[layout]

    def layout(self, manifest: RecordingManifest, stream: str) -> StreamLayout | None:
        """The layout stored for this very manifest object's `stream`, if any."""
        with self._lock:
            cached = self._layouts.get((manifest.recording_id, stream))
        if cached is not None and cached[0] is manifest:
            return cached[1]
        return None

    def keep_layout(self, manifest: RecordingManifest, stream: str, layout: StreamLayout) -> None:
        """Store `stream`'s layout for this manifest version (replacing an older version's)."""
        with self._lock:
            self._layouts[(manifest.recording_id, stream)] = (manifest, layout)


def expiry(manifest: RecordingManifest, days: int | None) -> str | None:
    """When retention shreds a recording kept `days` after it ended (None: indefinitely, or
    still recording, or no time to count from)."""
    if manifest.status == "recording":
        return None
    end = parse_time(manifest.ended or manifest.updated or manifest.started)
    if days is None or end is None:
        return None
    return stamp_s(end + timedelta(days=days))


def summarise(
    recording_id: str, entry: CatalogueEntry, *, held: bool, shredded: bool, days: int | None
) -> RecordingSummary:
    """A recording's summary from its catalogue entry; `held`: under legal hold, `shredded`:
    its data key is destroyed, `days`: its class's retention."""
    manifest = entry.manifest
    if shredded:
        # Key gone, media not yet removed: nothing of it is shown any more.
        # Whose it was still scopes who sees the tombstone.
        people = manifest.participants if manifest else []
        return RecordingSummary(
            recording_id, manifest.room_id if manifest else "", None, None, 0, "shredded",
            manifest.recording_class if manifest else "", (),
            tuple(sorted({d for p in people for d in p.depts})), (), held, None,
            organisations=tuple(sorted({p.org for p in people if p.org})),
        )  # fmt: skip
    if manifest is None:
        return RecordingSummary(
            recording_id, "", None, None, 0, "damaged", "", (), (), (), held, None,
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
        held=held,
        expires_at=expiry(manifest, days) if entry.verified else None,
        problem=entry.problem,
    )


def is_present(summary: RecordingSummary, who: str) -> bool:
    """Whether someone present has the subject `who`, or a display name containing it."""
    if who in summary.participants:
        return True
    wanted = who.casefold().strip()
    return bool(wanted) and any(wanted in name.casefold() for name in summary.participant_names)


def matches(
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
    """Whether a recording meets every criterion given (see `Archive.search`); one still
    recording counts as on until `now`."""
    if room is not None and summary.room_id != room:
        return False
    if status is not None and summary.status != status:
        return False
    if participant is not None and not is_present(summary, participant):
        return False
    if department is not None and department.casefold() not in {
        d.casefold() for d in summary.departments
    }:
        return False
    if case is not None and not any(case.casefold() in c.casefold() for c in summary.cases):
        return False
    if since is not None or until is not None:
        started = parse_time(summary.started)
        if started is None:
            return False
        ended = parse_time(summary.ended) or now
        if until is not None and started >= as_utc(until):
            return False
        if since is not None and ended < as_utc(since):
            return False
    return True
