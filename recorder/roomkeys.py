"""Per-room data keys for what a meeting leaves on disk: shared images and the annotation log.

One data key per room, created on first use and kept wrapped in the node's keyring (the same
`Keyring` and key-encryption key as recordings, entry `room-<room id>`), so everything a room
stored is encrypted under a key that never touches disk in the clear, and shredding the room's
key makes all of it unreadable at once (retention).
"""

from __future__ import annotations

import threading
from pathlib import Path

from .keyring import KeyFileKEK, Keyring, KeyringError

KEK_FILE_NAME = "kek.json"
"""The default key-encryption key file, under `<data_dir>/keys/` (move it off the data volume
in production: the `kek_file` setting)."""


def open_keyring(data_dir: Path, kek_file: Path | None = None) -> Keyring:
    """The node's keyring under `<data_dir>/keyring`, wrapped by the KEK in `kek_file` (default
    `<data_dir>/keys/kek.json`, generated there, mode 0600, on first start)."""
    path = kek_file or data_dir / "keys" / KEK_FILE_NAME
    kek = KeyFileKEK.load(path) if path.exists() else KeyFileKEK.generate(path)
    return Keyring(data_dir / "keyring", kek)


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
