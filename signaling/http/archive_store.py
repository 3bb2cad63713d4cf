"""This node's recordings kept in the object store too, and read back from it by a replacement.

With `archive_store_url` set, the node keeps the object store (`recorder.objectstore`) in step
with its archive, in the background (`keep_in_step`: at start, every `SYNC_EVERY_S`, and at once
when a recording closes or is shredded):

- every closed recording (complete, interrupted or failed) is uploaded: its segments, its keyring
  entry (the data key, wrapped under the KEK, which never leaves the node), its signed manifest
  last. A small marker per recording (`<data_dir>/archive-store/<id>.json`: the hashes of the
  manifest and of the keyring entry sent) says it is there; a manifest rewritten later (crash
  recovery) or a key re-wrapped by a KEK rotation is sent again;
- a recording shredded here (retention, an archivist) is deleted there, its key entry first;
- a recording in the store that this node signed and does not hold (a replacement node started
  with the lost node's keys: `key_dir` and `kek_file`) is fetched back, checked against the
  signed manifest, and its key entry restored into the keyring: it is then served, listed, held
  and shredded like any other. Recordings signed by other nodes are left where they are.

Each step is audited (`recording_stored`, `recording_store_shredded`, `recording_restored`); a
store out of reach is logged and tried again at the next round, nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.durable import write_atomically
from core.errors import IntegrityError, NotFound
from recorder.catalogue import SHREDDED_DIR, valid_recording_id
from recorder.keyring import Keyring, KeyringError, RecordingShredded, WrappedKey
from recorder.manifest import MANIFEST_NAME, read_manifest
from recorder.objectstore import ObjectStoreError, ObjectStoreSettings, RecordingObjectStore
from signaling.audit import AuditLog
from signaling.http.archive_service import ArchiveService

log = logging.getLogger("consilium.archive_store")

SYNC_EVERY_S = 60.0
"""How often the store is brought in step without a nudge."""
CLOSED = ("complete", "interrupted", "failed")
"""Recording statuses that no longer change: these are uploaded."""


@dataclass
class Round:
    """What one round did."""

    stored: list[str]
    shredded: list[str]
    restored: list[str]
    failed: list[str]


class ArchiveStore:
    """This node's side of the object store: uploads, shreds and restores (see the module)."""

    def __init__(
        self,
        settings: ObjectStoreSettings,
        archive: ArchiveService,
        keyring: Keyring,
        public_key: Ed25519PublicKey,
        audit: AuditLog,
        state_dir: Path,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.keyring = keyring
        self.public_key = public_key
        """This node's manifest key: recordings signed with it are this node's to restore."""
        self.audit = audit
        self.state_dir = state_dir
        """Where the markers of what is in the store are (`<id>.json`)."""
        self.restored: Callable[[], Awaitable[None]] | None = None
        """Called after a round that restored recordings (the forwarder's `announce`: the
        other nodes forward their requests here from then on)."""
        self._nudged = asyncio.Event()
        self._lock = asyncio.Lock()
        self._not_ours: set[str] = set()
        """Recordings in the store signed by another node (not asked again)."""

    @property
    def recordings_dir(self) -> Path:
        return self.archive.archive.recordings_dir

    def nudge(self) -> None:
        """Bring the store in step soon (a recording closed, or was shredded)."""
        self._nudged.set()

    async def keep_in_step(self) -> None:
        """`sync` now, then after each nudge or every `SYNC_EVERY_S`, until cancelled."""
        while True:
            self._nudged.clear()
            try:
                done = await self.sync()
                if done.restored and self.restored is not None:
                    await self.restored()
            except Exception:
                log.exception("object store round failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), SYNC_EVERY_S)

    # -- markers ------------------------------------------------------------------------------

    def _marker_path(self, recording_id: str) -> Path:
        return self.state_dir / f"{recording_id}.json"

    def _marker(self, recording_id: str) -> dict[str, Any] | None:
        try:
            marker: dict[str, Any] = json.loads(self._marker_path(recording_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return marker

    def _mark(self, recording_id: str, manifest_sha256: str, key_sha256: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        marker = {"manifest": manifest_sha256, "key": key_sha256}
        write_atomically(self._marker_path(recording_id), json.dumps(marker).encode())

    def _stored_ids(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.state_dir.glob("*.json") if p.stem[:1] != ".")
        except FileNotFoundError:
            return []

    # -- one round ----------------------------------------------------------------------------

    async def sync(self) -> Round:
        """Upload what closed, delete what was shredded, restore what is ours and missing."""
        async with self._lock:
            done = Round([], [], [], [])
            async with RecordingObjectStore(self.settings) as store:
                await self._shred_round(store, done)
                await self._upload_round(store, done)
                await self._restore_round(store, done)
            return done

    def _shredded_here(self, recording_id: str) -> bool:
        return (self.recordings_dir / SHREDDED_DIR / f"{recording_id}.json").is_file()

    async def _shred_round(self, store: RecordingObjectStore, done: Round) -> None:
        for recording_id in self._stored_ids():
            if not self._shredded_here(recording_id):
                continue
            try:
                await store.delete(recording_id)
            except ObjectStoreError as exc:
                log.warning(
                    "recording %s: not deleted from the object store: %s", recording_id, exc
                )
                done.failed.append(recording_id)
                continue
            self._marker_path(recording_id).unlink(missing_ok=True)
            self.audit.append("recording_store_shredded", "info", recording=recording_id)
            done.shredded.append(recording_id)

    def _upload_candidate(self, recording_id: str) -> tuple[str, bytes] | None:
        """The manifest hash and key entry of a closed recording not yet in the store as it is
        now; None if there is nothing to send (runs in a thread)."""
        try:
            summary = self.archive.archive.summary(recording_id)
        except (NotFound, IntegrityError):
            return None
        if summary.status not in CLOSED:
            return None
        manifest = (self.recordings_dir / recording_id / MANIFEST_NAME).read_bytes()
        try:
            key_entry = self.keyring.entry(recording_id).to_json()
        except (KeyringError, RecordingShredded):
            return None
        manifest_sha = hashlib.sha256(manifest).hexdigest()
        marker = self._marker(recording_id)
        if marker == {"manifest": manifest_sha, "key": hashlib.sha256(key_entry).hexdigest()}:
            return None
        return manifest_sha, key_entry

    async def _upload_round(self, store: RecordingObjectStore, done: Round) -> None:
        for recording_id in await asyncio.to_thread(self.archive.held_ids):
            if self._shredded_here(recording_id):
                continue
            candidate = await asyncio.to_thread(self._upload_candidate, recording_id)
            if candidate is None:
                continue
            manifest_sha, key_entry = candidate
            try:
                sent = await store.upload(self.recordings_dir / recording_id, key_entry)
            except (ObjectStoreError, IntegrityError) as exc:
                log.warning("recording %s: not copied to the object store: %s", recording_id, exc)
                done.failed.append(recording_id)
                continue
            self._mark(recording_id, manifest_sha, hashlib.sha256(key_entry).hexdigest())
            self.audit.append(
                "recording_stored", "info", recording=recording_id, bytes=sent,
                manifest_sha256=manifest_sha,
            )  # fmt: skip
            done.stored.append(recording_id)

    async def _restore_round(self, store: RecordingObjectStore, done: Round) -> None:
        try:
            in_store = await store.recordings()
        except ObjectStoreError as exc:
            log.warning("cannot list the object store: %s", exc)
            return
        held = set(await asyncio.to_thread(self.archive.held_ids))
        for recording_id in in_store:
            if recording_id in held or recording_id in self._not_ours:
                continue
            if not valid_recording_id(recording_id) or self._shredded_here(recording_id):
                continue
            if await self.restore(recording_id, store):
                done.restored.append(recording_id)

    async def restore(self, recording_id: str, store: RecordingObjectStore | None = None) -> bool:
        """Fetch a recording this node signed from the store, with its key entry; True once it
        is here. False if it is not in the store or was signed by another node."""
        if store is None:
            async with RecordingObjectStore(self.settings) as opened:
                return await self.restore(recording_id, opened)
        if (self.recordings_dir / recording_id).is_dir():
            return True
        try:
            entry = WrappedKey.from_json(await store.key_entry(recording_id))
            await store.fetch(recording_id, self.recordings_dir, public_key=self.public_key)
        except NotFound:
            return False
        except IntegrityError as exc:
            # Another node's recording (its manifest does not verify with this node's key), or
            # one altered in the store: left there.
            log.info("recording %s in the object store is not this node's: %s", recording_id, exc)
            self._not_ours.add(recording_id)
            return False
        except ObjectStoreError as exc:
            log.warning("recording %s: not fetched from the object store: %s", recording_id, exc)
            return False
        try:
            await asyncio.to_thread(self.keyring.restore, entry)
        except (KeyringError, IntegrityError) as exc:
            # The KEK that wrapped it is not loaded here: the media cannot be read.
            log.error("recording %s: its data key cannot be restored: %s", recording_id, exc)
            self.audit.append(
                "recording_restored", "error", recording=recording_id, reason="key_not_restored"
            )
            return True
        manifest, _, raw = read_manifest(self.recordings_dir / recording_id)
        digest = hashlib.sha256(raw).hexdigest()
        self._mark(recording_id, digest, hashlib.sha256(entry.to_json()).hexdigest())
        self.audit.append(
            "recording_restored", "info", room=manifest.room_id, recording=recording_id,
            manifest_sha256=digest,
        )  # fmt: skip
        return True
