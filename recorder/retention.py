"""Retention and shredding: how long each recording class is kept, and destroying a recording.

- `RetentionSettings` gives the days kept per recording class; `expired_among` picks the
  finished, verified, unheld recordings past them (pure: summaries and `now` in), and
  `Archive.run_retention` shreds those.
- Shredding (`Shredder.shred`) destroys the recording's wrapped data key first
  (`Keyring.shred`): that alone makes every copy of the media unreadable, backups included. The
  media is then overwritten and removed best effort, and a tombstone kept
  (`recorder.tombstones`), so a later read says "shredded", not "not found". A shred takes the
  holds' lock (`LegalHolds.locked`), so a hold placed while retention runs is never lost to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from core.canonical import stamp_s
from core.durable import fsync_directory
from core.errors import ConfigError, Conflict, NotFound
from recorder.catalogue import ManifestCache, RecordingSummary, parse_time, valid_recording_id
from recorder.holds import ArchiveReport, LegalHolds
from recorder.keyring import Keyring
from recorder.manifest import MANIFEST_NAME
from recorder.tombstones import Tombstones


class RecordingOnHold(Conflict):
    """The recording is under legal hold: it cannot be shredded until the hold is released."""

    code = "on_hold"


class RecordingInProgress(Conflict):
    """The recording is still being recorded (or awaits crash recovery): it cannot be shredded."""

    code = "recording_in_progress"


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


def expired_among(summaries: Iterable[RecordingSummary], now: datetime) -> list[RecordingSummary]:
    """The recordings past their class's retention at `now`: finished, verified, not held."""
    return [
        summary
        for summary in summaries
        if summary.status in ("complete", "interrupted", "failed")
        and not summary.held
        and (expires := parse_time(summary.expires_at)) is not None
        and expires <= now
    ]


def retention_reason(summary: RecordingSummary, days: int | None) -> str:
    """Why retention shreds a recording, for its tombstone and audit entry."""
    if summary.status == "shredded":
        return "retention: finishing an interrupted shred"
    return f"retention: class {summary.recording_class}, {days} days"


class Shredder:
    """Destroys recordings for good: the data key first, then a tombstone, then the media."""

    def __init__(
        self,
        recordings_dir: Path,
        keyring: Keyring,
        cache: ManifestCache,
        holds: LegalHolds,
        tombstones: Tombstones,
        clock: Callable[[], datetime],
        report: ArchiveReport,
    ) -> None:
        """A shredder of the recordings in `recordings_dir`, sharing the archive's parts."""
        self.recordings_dir = recordings_dir
        """The recordings directory."""
        self.keyring = keyring
        """The wrapped data keys, destroyed first."""
        self._cache = cache
        self._holds = holds
        self._tombstones = tombstones
        self._clock = clock
        self._report = report

    def shred(self, recording_id: str, reason: str, by: str = "") -> ShredResult:
        """Destroy a recording for good: its data key first, then its media, best effort.

        Refuses a held recording (`RecordingOnHold`) and one still recording
        (`RecordingInProgress`); `NotFound` for an unknown id; `RecordingShredded` once nothing
        is left. Resumable: after a crash mid-way, calling it again finishes the job.
        """
        if not valid_recording_id(recording_id):
            raise NotFound(f"no recording {recording_id!r}")
        directory = self.recordings_dir / recording_id
        with self._holds.locked():
            if not (directory / MANIFEST_NAME).exists():
                # Nothing left, or a shred interrupted after the manifest went: finish it.
                if not directory.is_dir() or not self.keyring.is_shredded(recording_id):
                    self._tombstones.refuse_if_shredded(recording_id, force=True)
            if self._holds.read(recording_id) is not None:
                raise RecordingOnHold(
                    f"recording {recording_id} is under legal hold: release it first"
                )
            entry = self._cache.load(directory)
            manifest = entry.manifest if entry is not None else None
            already = self.keyring.is_shredded(recording_id)
            if manifest is not None and manifest.status == "recording" and not already:
                raise RecordingInProgress(
                    f"recording {recording_id} is still recording (or awaits crash recovery)"
                )
            # The key first: once it is gone, every copy of the media is unreadable.
            self.keyring.shred(recording_id)
            marker = self._tombstones.read(recording_id)
            if marker is None:
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
                self._tombstones.write(marker)
        # Outside the lock: overwriting an hour of media takes a while, and the key is gone.
        removed, overwritten, leftovers = _destroy_directory(directory)
        self._cache.forget(directory)
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
