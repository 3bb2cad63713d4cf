"""The archive: finding recordings, legal hold, retention and shredding, and reading them back.

Everything here is plain calls on the file system, with no event loop: the REST API and the CLI
call it from threads. The recordings directory is the sink's (`recorder/manifest.py`); beside the
recording directories, two small directories of our own: `holds/` (`recorder.holds`) and
`shredded/` (`recorder.tombstones`).

`Archive` is the one door the API and the CLI use; each job is its own part, and the parts share
one small piece of state, the `ManifestCache`:

- Catalogue (`recorder.catalogue`): `Archive.list` / `Archive.search` read every manifest
  (signature checked, cached per file version) into `RecordingSummary`s; a manifest that fails
  to verify is listed as `damaged`, never hidden.
- Legal hold (`recorder.holds`): a standing hold keeps a recording from any shred.
- Retention (`recorder.retention`): `RetentionSettings` gives the days kept per recording
  class; `expired` lists the finished, verified, unheld recordings past them, `run_retention`
  shreds those. Shredding destroys the wrapped data key first, then the media, and keeps a
  tombstone (`recorder.tombstones`), so a later read says "shredded", not "not found".
- Playback: `recorder.streams.TrackStream` serves a stream for HTTP Range reads;
  `read_from_time` and `images` read records back, each segment authenticated as it streams.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import as_utc
from core.errors import IntegrityError, NotFound
from recorder.catalogue import (
    SHREDDED_DIR,
    ArchiveStatus,
    CatalogueEntry,
    ManifestCache,
    RecordingSummary,
    matches,
    summarise,
)
from recorder.holds import LegalHold, LegalHolds
from recorder.keyring import Keyring
from recorder.manifest import IMAGES_STREAM, AuditCallback, RecordingManifest
from recorder.retention import (
    RecordingInProgress,
    RecordingOnHold,
    RetentionSettings,
    Shredder,
    ShredResult,
    expired_among,
    retention_reason,
)
from recorder.tombstones import Tombstones
from recorder.verify import RecordedPacket, iter_packets

log = logging.getLogger("consilium.recorder")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Archive:
    """The recordings directory as the archivist sees it: the one door to its catalogue, legal
    holds, retention and reads, each delegated to its part; safe to share between threads.

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
        """The recordings directory (the sink's)."""
        self.keyring = keyring
        """The recordings' wrapped data keys."""
        self.public_key = public_key
        """The node's manifest-signing key."""
        self.retention = retention or RetentionSettings()
        """Days kept per recording class."""
        self.cache = ManifestCache(public_key)
        """Parsed manifests and stream layouts, shared by the parts."""
        self._clock = clock
        self._audit = audit
        self._tombstones = Tombstones(recordings_dir, keyring)
        self._holds = LegalHolds(recordings_dir, self._tombstones, clock, self._report)
        for directory in (self._holds.directory, recordings_dir / SHREDDED_DIR):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._shredder = Shredder(
            recordings_dir, keyring, self.cache, self._holds, self._tombstones, clock,
            self._report,
        )  # fmt: skip

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
        held = self._holds.held_ids()
        found = []
        for directory, entry in self.cache.scan(self.recordings_dir):
            summary = self._summarise(directory.name, entry, held)
            if matches(summary, now, room, since, until, participant, department, case, status):
                found.append(summary)
        found.sort(key=lambda s: (s.started or "", s.recording_id), reverse=True)
        return found

    def summary(self, recording_id: str) -> RecordingSummary:
        """One recording's summary; `NotFound` or `RecordingShredded`."""
        directory = self._tombstones.existing_directory(recording_id)
        entry = self.cache.load(directory)
        if entry is None:
            raise NotFound(f"no recording {recording_id}")
        return self._summarise(recording_id, entry, self._holds.held_ids())

    def manifest(self, recording_id: str) -> RecordingManifest:
        """A recording's verified manifest (shared with the cache: do not modify it).

        `NotFound`, `RecordingShredded`, or `IntegrityError` if it does not verify.
        """
        directory = self._tombstones.existing_directory(recording_id)
        if self.keyring.is_shredded(recording_id):
            self._tombstones.refuse_if_shredded(recording_id, force=True)
        entry = self.cache.load(directory)
        if entry is None:
            raise NotFound(f"no recording {recording_id}")
        if not entry.verified or entry.manifest is None:
            raise IntegrityError(f"recording {recording_id} is damaged: {entry.problem}")
        return entry.manifest

    def data_key(self, recording_id: str) -> bytes:
        """The recording's data key, unwrapped; `RecordingShredded` once it is destroyed."""
        self._tombstones.existing_directory(recording_id)
        return self.keyring.unwrap(recording_id)

    def _summarise(
        self, recording_id: str, entry: CatalogueEntry, held: set[str]
    ) -> RecordingSummary:
        days = self.retention.days_for(entry.manifest.recording_class) if entry.manifest else None
        return summarise(
            recording_id, entry, held=recording_id in held,
            shredded=self.keyring.is_shredded(recording_id), days=days,
        )  # fmt: skip

    # --- legal hold ------------------------------------------------------------------------

    def hold(self, recording_id: str, reason: str, by: str) -> LegalHold:
        """Place (or update the reason of) a legal hold; `NotFound`, `RecordingShredded`."""
        return self._holds.hold(recording_id, reason, by)

    def release(self, recording_id: str, by: str) -> LegalHold:
        """Lift the legal hold; returns it. `NotOnHold` if there is none."""
        return self._holds.release(recording_id, by)

    def hold_of(self, recording_id: str) -> LegalHold | None:
        """The legal hold standing on a recording, if any."""
        return self._holds.read(recording_id)

    def holds(self) -> builtins.list[LegalHold]:
        """Every standing legal hold, by recording id."""
        return self._holds.all()

    # --- retention and shredding -----------------------------------------------------------

    def expired(self, now: datetime | None = None) -> builtins.list[RecordingSummary]:
        """Recordings past their class's retention: finished, verified, not held."""
        return expired_among(self.list(), as_utc(now or self._clock()))

    def run_retention(self, now: datetime | None = None) -> builtins.list[str]:
        """Shred every expired recording (and finish shreds a crash interrupted); returns the
        ids shredded. One recording's failure is logged and audited, and the rest go on."""
        shredded = []
        pending = [s for s in self.list() if s.status == "shredded"]
        for summary in [*pending, *self.expired(now)]:
            reason = retention_reason(summary, self.retention.days_for(summary.recording_class))
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
        return self._shredder.shred(recording_id, reason, by)

    def shredded(self) -> builtins.list[dict[str, Any]]:
        """The tombstones of shredded recordings (id, room, class, times, reason), by id."""
        return self._tombstones.all()

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
