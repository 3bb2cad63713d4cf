"""What is left of a shredded recording: its tombstone, and the refusal a read of it gets.

    <recordings dir>/shredded/<recording id>.json   what was shredded, when, why, by whom

A tombstone is kept so that a later read says "shredded", not "not found". It is written
atomically (temp file, fsync, rename, directory fsync) by `recorder.retention`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from core.durable import write_atomically
from core.errors import NotFound
from recorder.catalogue import SHREDDED_DIR, valid_recording_id
from recorder.keyring import Keyring, RecordingShredded
from recorder.manifest import MANIFEST_NAME


class Tombstones:
    """The shredded recordings' tombstones, and which recording ids still name a recording."""

    def __init__(self, recordings_dir: Path, keyring: Keyring) -> None:
        """The tombstones under `recordings_dir/shredded` (the directory must exist)."""
        self.recordings_dir = recordings_dir
        """The recordings directory."""
        self.directory = recordings_dir / SHREDDED_DIR
        """Where the tombstones are."""
        self._keyring = keyring

    def path(self, recording_id: str) -> Path:
        """Where the recording's tombstone is (or would be)."""
        return self.directory / f"{recording_id}.json"

    def read(self, recording_id: str) -> dict[str, Any] | None:
        """The recording's tombstone, if it has one (it must parse)."""
        path = self.path(recording_id)
        if not path.exists():
            return None
        marker: dict[str, Any] = json.loads(path.read_bytes())
        return marker

    def write(self, marker: dict[str, Any]) -> None:
        """Keep `marker` as its recording's tombstone, atomically."""
        path = self.path(str(marker["recording_id"]))
        write_atomically(path, json.dumps(marker, indent=1).encode() + b"\n")

    def all(self) -> list[dict[str, Any]]:
        """The tombstones of shredded recordings (id, room, class, times, reason), by id."""
        tombstones = []
        for path in sorted(self.directory.glob("[!.]*.json")):
            try:
                tombstones.append(json.loads(path.read_bytes()))
            except ValueError:
                tombstones.append({"recording_id": path.stem, "problem": "unreadable tombstone"})
        return tombstones

    def existing_directory(self, recording_id: str) -> Path:
        """The recording's directory; `RecordingShredded` or `NotFound` if it has none."""
        if not valid_recording_id(recording_id):
            raise NotFound(f"no recording {recording_id!r}")
        directory = self.recordings_dir / recording_id
        if not (directory / MANIFEST_NAME).exists():
            self.refuse_if_shredded(recording_id)
            if not directory.is_dir():
                raise NotFound(f"no recording {recording_id}")
        return directory

    def refuse_if_shredded(self, recording_id: str, *, force: bool = False) -> None:
        """Raise `RecordingShredded` if it was (or `NotFound`, with `force`, if it never was)."""
        tombstone = self.path(recording_id)
        if tombstone.exists() or self._keyring.is_shredded(recording_id):
            when = "an unknown date"
            with contextlib.suppress(OSError, ValueError, AttributeError):
                when = json.loads(tombstone.read_bytes()).get("shredded", when)
            raise RecordingShredded(
                f"recording {recording_id} was shredded on {when}: its data key is destroyed",
                recording_id=recording_id,
            )
        if force:
            raise NotFound(f"no recording {recording_id}")
