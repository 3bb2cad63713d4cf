"""The node's archive as its API uses it: recordings, their exports and verification, in threads.

The routes over it are `signaling.http.routes.archive`; the blocking work (manifests, decryption,
remuxing) runs here, in worker threads, at most two heavy jobs at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import BadMessage, IntegrityError, NotFound
from imaging.watermark import Mark, watermark
from recorder.archive import Archive
from recorder.bundle import build_bundle
from recorder.catalogue import SHREDDED_DIR, RecordingSummary, valid_recording_id
from recorder.export import export_annotations, export_recording
from recorder.keyring import Keyring
from recorder.manifest import MANIFEST_NAME, RecordingManifest
from recorder.retention import RetentionSettings
from recorder.verify import verify_recording
from signaling.audit import AuditLog, iter_entries, parse_time
from signaling.recording_control import recorder_audit

T = TypeVar("T")


def retention_settings(classes: dict[str, float]) -> RetentionSettings:
    """The archive's retention from the node's settings (days per class; `mdt` the default)."""
    days = {name: max(0, round(value)) for name, value in classes.items()}
    return RetentionSettings(days=days, default_days=days.get("mdt", 3650))


class ArchiveService:
    """The node's archive and what its routes share (built with the node, `consilium.node`)."""

    def __init__(
        self,
        recordings_dir: Path,
        keyring: Keyring,
        signing_key: Ed25519PrivateKey,
        audit: AuditLog,
        retention: RetentionSettings,
        kek_file: Path,
        audit_dir: Path,
        scratch_dir: Path,
        watermark_key: bytes,
    ) -> None:
        self.audit = audit
        self.signing_key = signing_key
        self.kek_file = kek_file
        self.audit_dir = audit_dir
        self.scratch_dir = scratch_dir
        """Where exports are assembled before they are streamed (memory by default)."""
        self.watermark_key = watermark_key
        """Marks every image served from the archive with its viewer, as in the live room."""
        self.archive = Archive(
            recordings_dir,
            keyring,
            signing_key.public_key(),
            retention,
            audit=recorder_audit(audit),
        )
        self.jobs = asyncio.Semaphore(2)
        """Heavy jobs (verify, export, bundle, rotation) running at once; the rest wait."""

    def directory(self, recording_id: str) -> Path:
        """A recording's directory (after `Archive.summary` proved it exists)."""
        return self.archive.recordings_dir / recording_id

    def holds(self, recording_id: str) -> bool:
        """Whether the recording is on this node's disk: its directory, or its tombstone."""
        recordings = self.archive.recordings_dir
        if not valid_recording_id(recording_id):
            return False
        return (recordings / recording_id).is_dir() or (
            recordings / SHREDDED_DIR / f"{recording_id}.json"
        ).is_file()

    def held_ids(self) -> list[str]:
        """The ids of every recording on this node's disk (directories and tombstones)."""
        recordings = self.archive.recordings_dir
        try:
            names = [p.name for p in recordings.iterdir() if p.is_dir()]
            names += [p.stem for p in (recordings / SHREDDED_DIR).glob("*.json")]
        except FileNotFoundError:
            return []
        return sorted({name for name in names if valid_recording_id(name)})

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking archive work in a worker thread, at most two heavy jobs at once."""
        async with self.jobs:
            return await asyncio.to_thread(work, *args, **kwargs)

    # -- exports -------------------------------------------------------------------------------

    def export(
        self, recording_id: str, scratch: Path, case: int | None, start: int | None,
        end: int | None, track_ids: list[str] | None = None,
    ) -> tuple[Path, Path, str]:  # fmt: skip
        """Remux into `scratch` (only `track_ids`, if given); the media file, the sidecar and
        the container name."""
        self.archive.summary(recording_id)
        out = scratch / f"{recording_id}{'-case' + str(case) if case else ''}.webm"
        try:
            result = export_recording(
                self.directory(recording_id), self.archive.data_key(recording_id), out,
                public_key=self.archive.public_key, case=case, start_ms=start, end_ms=end,
                track_ids=track_ids,
            )  # fmt: skip
        except ValueError as exc:  # a case, range or track the recording does not have
            raise BadMessage(str(exc)) from None
        if result.container != "webm":
            renamed = out.with_suffix(".mkv")
            out.rename(renamed)
            out = renamed
        return out, result.annotations_path, result.container

    def annotations(
        self, recording_id: str, scratch: Path, case: int | None, start: int | None,
        end: int | None,
    ) -> Path:  # fmt: skip
        """The sidecar JSON alone (no media remuxed) in `scratch`."""
        self.archive.summary(recording_id)
        name = f"{recording_id}{'-case' + str(case) if case else ''}.webm.annotations.json"
        try:
            export_annotations(
                self.directory(recording_id), self.archive.data_key(recording_id),
                scratch / name, public_key=self.archive.public_key, case=case, start_ms=start,
                end_ms=end,
            )  # fmt: skip
        except ValueError as exc:
            raise BadMessage(str(exc)) from None
        return scratch / name

    def image(self, recording_id: str, image_id: str, frame: int, viewer: str) -> tuple[bytes, str]:
        """One stored image frame, watermarked for `viewer`; `NotFound` if it was not stored."""
        summary = self.archive.summary(recording_id)
        for meta, data in self.archive.images(recording_id):
            if meta.get("image_id") == image_id and meta.get("frame") == frame:
                mark = Mark(viewer=viewer, room=summary.room_id,
                            time=datetime.now(UTC).replace(microsecond=0))  # fmt: skip
                return watermark(data, mark, self.watermark_key), str(meta.get("media_type"))
        raise NotFound(f"recording {recording_id} holds no frame {frame} of image {image_id}")

    def bundle(self, recording_id: str, scratch: Path, case: int | None) -> Path:
        """Build the signed evidence bundle of a recording (or one case) in `scratch`."""
        summary = self.archive.summary(recording_id)
        manifest = self.archive.manifest(recording_id)
        out = scratch / f"{recording_id}{'-case' + str(case) if case else ''}.zip"
        try:
            build_bundle(
                self.directory(recording_id), self.archive.data_key(recording_id), out,
                signing_key=self.signing_key, audit_entries=self.meeting_audit(summary,
                manifest.started, manifest.ended or manifest.updated), case=case,
            )  # fmt: skip
        except ValueError as exc:
            raise BadMessage(str(exc)) from None
        return out

    def meeting_audit(
        self, summary: RecordingSummary, started: str | None, ended: str | None
    ) -> list[dict[str, Any]]:
        """The audit entries of the meeting: the room's while it was recorded, and every
        entry naming the recording (consent, start, cases, stop, later access)."""
        since = parse_time(started) if started else None
        until = parse_time(ended) if ended else None
        entries = []
        for entry in iter_entries(self.audit_dir):
            in_meeting = entry.room == summary.room_id and (
                (since is None or entry.time >= since) and (until is None or entry.time <= until)
            )
            if in_meeting or entry.fields.get("recording") == summary.recording_id:
                entries.append(entry.to_json())
        return entries

    # -- verification --------------------------------------------------------------------------

    def verify(self, recording_id: str) -> dict[str, Any]:
        """Verify a recording fully, and that its manifest's hash is in the audit log."""
        summary = self.archive.summary(recording_id)
        directory = self.directory(recording_id)
        data_key = self.archive.data_key(recording_id)
        report = verify_recording(directory, data_key, self.archive.public_key)
        raw = (directory / MANIFEST_NAME).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        problems = list(report.problems)
        audited = self._manifest_audited(recording_id, summary.room_id, digest, raw, problems)
        return {
            "recording_id": recording_id,
            "ok": not problems,
            "status": report.status,
            "interrupted": report.interrupted,
            "failure": report.failure,
            "stopped_at_ms": report.stopped_at_ms,
            "continues": None
            if report.continues is None
            else {
                **dataclasses.asdict(report.continues),
                "gap_max_s": report.gap_max_s,
            },
            "segments_checked": report.segments_checked,
            "records": report.records,
            "manifest_sha256": digest,
            "manifest_in_audit_log": audited,
            "problems": problems,
        }

    def _manifest_audited(
        self, recording_id: str, room_id: str, digest: str, raw: bytes, problems: list[str]
    ) -> bool:
        """Whether the recorder's last manifest entry in the audit log names `digest` and was
        written when the recording ended (or was recovered), not later; adds the problem."""
        last = None
        for entry in iter_entries(self.audit_dir, room=room_id):
            if entry.fields.get("recording") == recording_id and entry.fields.get(
                "manifest_sha256"
            ):
                last = entry
        if last is not None and last.action == "recording_restored":
            problems.append(
                f"restored from the object store at {last.ts} (its manifest's SHA-256 entered "
                "this node's audit log then): the entry the recorder wrote when it stopped is in "
                "the audit log of the node that recorded it, and in that log's witness"
            )
            return False
        if last is None or last.fields["manifest_sha256"] != digest:
            problems.append(
                "the manifest's SHA-256 is not in the audit log: it is not the manifest the "
                "recorder last wrote"
            )
            return False
        try:
            manifest, _ = RecordingManifest.from_json(raw)
            # A recovered manifest is written at recovery, after the recording's end; one still
            # recording (a problem of its own) has no end yet.
            end = parse_time(manifest.ended if manifest.status in ("complete", "failed")
                             else manifest.updated)  # fmt: skip
        except (IntegrityError, ValueError):
            end = None
        if end is None or last.time > end + MANIFEST_AUDIT_ALLOWANCE:
            problems.append(
                f"the manifest's SHA-256 entered the audit log at {last.ts}, after the recording "
                "ended: it is not the manifest the recorder wrote when it stopped"
            )
            return False
        return True


MANIFEST_AUDIT_ALLOWANCE = timedelta(seconds=60)
"""How long after the manifest's end time the recorder's entry vouching for it may be written
(the entry follows the write at once; this covers a loaded node)."""
