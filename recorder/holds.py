"""Legal holds: while one stands on a recording, the recording is never shredded.

    <recordings dir>/holds/<recording id>.json      a legal hold (reason, by whom, since when)

A hold lives apart from the manifest because the manifest is the sink's, signed by the node, and
a hold is placed and released long after the recording ended. The file is written atomically
(temp file, fsync, rename, directory fsync), and every hold, release and shred takes one lock
file (`holds/.lock`, `LegalHolds.locked`) so a hold placed while retention runs is never lost to
a shred.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from core.canonical import stamp_s
from core.durable import fsync_directory, write_atomically
from core.errors import Conflict, NotFound
from recorder.catalogue import HOLDS_DIR, valid_recording_id
from recorder.tombstones import Tombstones

log = logging.getLogger("consilium.recorder")


class NotOnHold(Conflict):
    """A release of a recording that is not under legal hold."""

    code = "not_on_hold"


class ArchiveReport(Protocol):
    """How the archive's parts tell the audit log what they did (`Archive` wires it)."""

    def __call__(
        self,
        action: str,
        recording_id: str,
        outcome: str = "info",
        *,
        required: bool = False,
        **fields: Any,
    ) -> None:
        """Report one action. `required`: an action about to take effect, which must not
        without its entry: the callback's failure is raised, not only logged."""


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


class LegalHolds:
    """The standing legal holds: placing, updating and lifting them, and the archive's lock."""

    def __init__(
        self,
        recordings_dir: Path,
        tombstones: Tombstones,
        clock: Callable[[], datetime],
        report: ArchiveReport,
    ) -> None:
        """The holds under `recordings_dir/holds` (the directory must exist)."""
        self.directory = recordings_dir / HOLDS_DIR
        """Where the hold files (and the lock file) are."""
        self._tombstones = tombstones
        self._clock = clock
        self._report = report

    def hold(self, recording_id: str, reason: str, by: str) -> LegalHold:
        """Place (or update the reason of) a legal hold; `NotFound`, `RecordingShredded`."""
        if not reason.strip():
            raise ValueError("a legal hold needs a reason")
        with self.locked():
            self._tombstones.existing_directory(recording_id)
            self._tombstones.refuse_if_shredded(recording_id)
            previous = self.read(recording_id)
            since = previous.since if previous else stamp_s(self._clock())
            hold = LegalHold(recording_id, reason, by, since)
            # Audited first: a hold is never in force without its entry.
            self._report("recording_held", recording_id, required=True, by=by, reason=reason,
                         since=since)  # fmt: skip
            write_atomically(
                self._path(recording_id), json.dumps(asdict(hold), indent=1).encode() + b"\n"
            )
        return hold

    def release(self, recording_id: str, by: str) -> LegalHold:
        """Lift the legal hold; returns it. `NotOnHold` if there is none."""
        with self.locked():
            hold = self.read(recording_id)
            if hold is None:
                raise NotOnHold(f"recording {recording_id} is not under legal hold")
            # Audited first: a hold is never lifted without its entry.
            self._report("recording_released", recording_id, required=True, by=by,
                         reason=hold.reason)  # fmt: skip
            self._path(recording_id).unlink()
            fsync_directory(self.directory)
        return hold

    def all(self) -> list[LegalHold]:
        """Every standing legal hold, by recording id."""
        return [
            hold for recording_id in sorted(self.held_ids()) if (hold := self.read(recording_id))
        ]

    def held_ids(self) -> set[str]:
        """The ids of the recordings under legal hold."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return set()
        return {n.removesuffix(".json") for n in names if n.endswith(".json") and n[0] != "."}

    def read(self, recording_id: str) -> LegalHold | None:
        """The legal hold standing on a recording, if any."""
        try:
            raw = self._path(recording_id).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return LegalHold(**json.loads(raw))
        except (ValueError, TypeError) as error:
            # A hold file we cannot read still holds: refusing to shred is the safe side.
            log.error("legal hold of %s is unreadable: %s", recording_id, error)
            return LegalHold(recording_id, f"(unreadable hold file: {error})", "", "")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One hold, release or shred at a time, across threads and processes."""
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _path(self, recording_id: str) -> Path:
        if not valid_recording_id(recording_id):
            raise NotFound(f"no recording {recording_id!r}")
        return self.directory / f"{recording_id}.json"
