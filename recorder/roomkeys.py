"""Per-room data keys for what a meeting leaves on disk: shared images and the annotation log.

One data key per room, created on first use and kept wrapped in the node's keyring (the same
`Keyring` and key-encryption key as recordings, entry `room-<room id>`), so everything a room
stored is encrypted under a key that never touches disk in the clear, and shredding the room's
key makes all of it unreadable at once (retention).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from core.durable import fsync_directory
from recorder.keyring import KeyFileKEK, Keyring, KeyringError, RotationResult

KEK_FILE_NAME = "kek.json"
"""The default key-encryption key file, under `<data_dir>/keys/` (move it off the data volume
in production: the `kek_file` setting)."""


def kek_path(data_dir: Path, kek_file: Path | None = None) -> Path:
    """Where the node's current KEK file is."""
    return kek_file or data_dir / "keys" / KEK_FILE_NAME


def _sibling_keks(path: Path) -> list[Path]:
    """The KEK files kept beside the current one: `<name>.next.json` (a rotation under way)
    and `<name>.retired-<key id>.json` (rotated out; needed by keyring backups older than the
    rotation, and deleted by hand once `consilium keys list` shows it unused)."""
    return sorted(path.parent.glob(f"{path.stem}.*.json"))


def open_keyring(data_dir: Path, kek_file: Path | None = None) -> Keyring:
    """The node's keyring under `<data_dir>/keyring`, wrapped by the KEK in `kek_file` (default
    `<data_dir>/keys/kek.json`, generated there, mode 0600, on first start). Earlier and pending
    KEKs beside it are loaded to unwrap what is not yet re-wrapped."""
    path = kek_path(data_dir, kek_file)
    kek = KeyFileKEK.load(path) if path.exists() else KeyFileKEK.generate(path)
    previous = tuple(KeyFileKEK.load(p) for p in _sibling_keks(path))
    return Keyring(data_dir / "keyring", kek, previous)


def rotate_kek(
    keyring: Keyring, path: Path, progress: Callable[[int, int], None] | None = None
) -> RotationResult:
    """Re-wrap every data key under a new KEK file, which then becomes `path`.

    Steps, each safe to interrupt (run again to finish): the new key is created as
    `<name>.next.json` (or the one a cut-off run left is taken); every entry is re-wrapped
    under it (`Keyring.rotate`, media untouched); the old file becomes
    `<name>.retired-<old id>.json` and the new one takes its place.
    """
    pending = path.with_name(f"{path.stem}.next.json")
    new = KeyFileKEK.load(pending) if pending.exists() else KeyFileKEK.generate(pending)
    old_id = keyring.kek.key_id
    result = keyring.rotate(new, progress)
    if old_id != new.key_id:
        os.replace(path, path.with_name(f"{path.stem}.retired-{old_id}.json"))
    os.replace(pending, path)
    fsync_directory(path.parent)
    return result


class RoomKeys:
    """Each room's data key, from the keyring (created on first use, cached in memory)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def entry_id(room_id: str) -> str:
        """The keyring entry of a room's data key."""
        return f"room-{room_id}"

    def key_for(self, room_id: str) -> bytes:
        """The room's 32-byte data key (`RecordingShredded` once the room's data was shredded)."""
        with self._lock:
            key = self._keys.get(room_id)
            if key is not None:
                return key
            entry = self.entry_id(room_id)
            try:
                key = self.keyring.unwrap(entry)
            except KeyringError:
                try:
                    key = self.keyring.create(entry)
                except KeyringError:  # created meanwhile by another process
                    key = self.keyring.unwrap(entry)
            self._keys[room_id] = key
            return key

    def shred(self, room_id: str) -> None:
        """Destroy the room's data key: what the room stored can never be read again."""
        with self._lock:
            self._keys.pop(room_id, None)
            self.keyring.shred(self.entry_id(room_id))
