"""Closing the recordings a crash left open, at the next start.

The sink rewrites the manifest only after a segment is complete and fsynced, so a recording
still marked `recording` on disk lists exactly its complete segments. Recovery marks each
stream's last listed segment final, removes the segment files the manifest does not list (the
unfinished segments at the time of the crash: without their final chunk and hash they cannot
be verified, so they are not kept, and the audit callback says so) and the stream directories
of tracks announced too late to be listed, and re-signs the manifest as `interrupted`. The
manifest's signature is checked first: a manifest that does not verify is left as found (and
reported), never re-signed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.durable import fsync_directory
from core.errors import IntegrityError
from recorder.manifest import (
    MANIFEST_NAME,
    SEGMENT_SUFFIX,
    AuditCallback,
    read_manifest,
    segment_file_name,
    utc_now,
    write_manifest,
)

log = logging.getLogger("consilium.recorder")


def recover_interrupted(
    recordings_dir: Path,
    signing_key: Ed25519PrivateKey,
    audit: AuditCallback | None = None,
) -> list[str]:
    """Close every recording under `recordings_dir` left `recording` by a crash as
    `interrupted`; returns their ids. Run it before any sink starts (at node start)."""
    recovered: list[str] = []
    if not recordings_dir.is_dir():
        return recovered
    for directory in sorted(p for p in recordings_dir.iterdir() if p.is_dir()):
        if not (directory / MANIFEST_NAME).exists():
            continue
        try:
            manifest, signature, _ = read_manifest(directory)
            manifest.check_signature(signature, signing_key.public_key())
        except IntegrityError as error:
            log.error("recording %s not recovered: %s", directory.name, error)
            if audit is not None:
                audit("recording_recovered", "error", recording=directory.name, reason=str(error))
            continue
        if manifest.status != "recording":
            continue
        removed = []
        for stream, segments in manifest.streams.items():
            listed = {segment_file_name(s.number) for s in segments}
            stream_dir = directory / stream
            if stream_dir.is_dir():
                for path in sorted(stream_dir.iterdir()):
                    if path.name.endswith(SEGMENT_SUFFIX) and path.name not in listed:
                        path.unlink()
                        removed.append(f"{stream}/{path.name}")
                fsync_directory(stream_dir)
            if segments:
                segments[-1].final = True
        for stream_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
            # A track announced just before the crash, not yet in the manifest.
            if stream_dir.name not in manifest.streams:
                for path in sorted(stream_dir.iterdir()):
                    if path.name.endswith(SEGMENT_SUFFIX):
                        path.unlink()
                        removed.append(f"{stream_dir.name}/{path.name}")
                if not any(stream_dir.iterdir()):
                    stream_dir.rmdir()
        (directory / f".{MANIFEST_NAME}.tmp").unlink(missing_ok=True)
        manifest.status = "interrupted"
        manifest.ended = manifest.updated or manifest.started
        note = f"interrupted; recovered at {utc_now()}"
        if removed:
            note += f"; unfinished segments removed (unverifiable): {', '.join(removed)}"
        manifest.notes.append(note)
        manifest.updated = utc_now()
        digest = write_manifest(directory, manifest, signing_key)
        recovered.append(manifest.recording_id)
        if audit is not None:
            audit(
                "recording_recovered",
                "info",
                room=manifest.room_id,
                recording=manifest.recording_id,
                status="interrupted",
                removed_unverifiable_segments=removed,
                manifest_sha256=digest,
            )
    return recovered
