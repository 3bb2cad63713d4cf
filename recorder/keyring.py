"""Per-recording data keys, wrapped by a key-encryption key (KEK) kept apart from the media.

Each recording gets a random 32-byte data key; its segments are encrypted under it
(`recorder.segments`). The data key is never stored in the clear: it is wrapped with AES-256-GCM
under a KEK, the recording id as associated data (an entry copied to another recording does not
open), and kept as one small JSON file per recording in the keyring directory. The KEK lives
elsewhere: a key file with its own permissions (`KeyFileKEK`), or an external KMS behind the same
`KeyEncryptionKey` interface.

- Rotation re-wraps every data key under a new KEK without touching media: each entry is replaced
  atomically (temp file, fsync, rename, fsync of the directory); an interrupted rotation is
  resumed by running it again, and the old KEK stays needed (and loadable) until no entry uses it.
- Shredding a recording destroys its wrapped data key (overwritten, then unlinked, then the
  directory synced) and leaves a tombstone without key material, so a later read says "shredded"
  rather than "not found", and the id cannot be reused. Media copies, backups included, are then
  unreadable - as long as no copy of the keyring entry outlives it (see docs/operations.md,
  "Recording keys").

The wrapping and the entry format are plain functions over bytes; only `Keyring` and
`KeyFileKEK`'s load/generate touch the file system. No event loop is involved.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.canonical import stamp_s
from core.durable import fsync_directory, temp_path, write_all, write_atomically
from core.errors import ConfigError, IntegrityError, NotFound

DATA_KEY_SIZE = 32
"""Bytes of a recording's data key (the Cobblestone-256 input key)."""
KEK_SIZE = 32
"""Bytes of a key file's AES-256 key."""
_WRAP_NONCE_SIZE = 12
_WRAP_LABEL = b"consilium.org/recording-data-key@v1\x00"
_RECORDING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_KEY_SUFFIX = ".key.json"
_TOMBSTONE_SUFFIX = ".shredded.json"
ENTRY_FORMAT = "consilium-wrapped-data-key"
"""The `format` field of a keyring entry."""
KEY_FILE_FORMAT = "consilium-kek"
"""The `format` field of a KEK key file."""


class KeyringError(Exception):
    """A key operation that cannot be done: unknown recording, KEK not loaded, id in use."""


class RecordingShredded(NotFound):
    """The recording's data key was destroyed: its media can never be read again."""

    code = "shredded"


class KeyEncryptionKey(abc.ABC):
    """What wraps data keys: a key file here, a KMS in a real deployment.

    `wrap` and `unwrap` bind the recording id as associated data; `unwrap` raises
    `InvalidTag` (or the KMS's own error) when the wrapped bytes do not open.
    """

    @property
    @abc.abstractmethod
    def key_id(self) -> str:
        """A stable name for this KEK, stored with every key it wraps."""

    @abc.abstractmethod
    def wrap(self, data_key: bytes, recording_id: str) -> bytes:
        """The data key, encrypted and authenticated for this recording."""

    @abc.abstractmethod
    def unwrap(self, wrapped: bytes, recording_id: str) -> bytes:
        """The data key back; raises if `wrapped` was not made by `wrap` for this recording."""


def _associated_data(recording_id: str) -> bytes:
    return _WRAP_LABEL + recording_id.encode("utf-8")


class KeyFileKEK(KeyEncryptionKey):
    """A KEK held in a local key file (JSON: format, version, key id, base64 key), mode 0600.

    Keep the file off the data volume and out of the media backups: whoever holds both can read
    every recording.
    """

    def __init__(self, key: bytes, key_id: str) -> None:
        """A KEK from its raw key and id (`load` and `generate` are the usual ways in)."""
        if len(key) != KEK_SIZE:
            raise ConfigError(f"a key-encryption key is {KEK_SIZE} bytes, got {len(key)}")
        if not key_id:
            raise ConfigError("a key-encryption key needs a key id")
        self._aead = AESGCM(key)
        self._key_id = key_id

    @property
    def key_id(self) -> str:
        """The id written in the key file."""
        return self._key_id

    def wrap(self, data_key: bytes, recording_id: str) -> bytes:
        """nonce || AES-256-GCM(data key), the recording id as associated data."""
        nonce = os.urandom(_WRAP_NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data_key, _associated_data(recording_id))

    def unwrap(self, wrapped: bytes, recording_id: str) -> bytes:
        """The data key; `InvalidTag` if the bytes, the KEK or the recording id differ."""
        nonce, sealed = wrapped[:_WRAP_NONCE_SIZE], wrapped[_WRAP_NONCE_SIZE:]
        if len(nonce) != _WRAP_NONCE_SIZE:
            raise InvalidTag
        return self._aead.decrypt(nonce, sealed, _associated_data(recording_id))

    @classmethod
    def generate(cls, path: Path, key_id: str | None = None) -> KeyFileKEK:
        """Create a new key file at `path` (mode 0600; never overwrites) and return its KEK."""
        key_id = key_id or f"kek-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
        key = os.urandom(KEK_SIZE)
        document = {
            "format": KEY_FILE_FORMAT,
            "version": 1,
            "key_id": key_id,
            "key": base64.b64encode(key).decode("ascii"),
        }
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: an existing key file is never replaced (that would orphan every key it wraps).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            write_all(fd, json.dumps(document).encode("utf-8") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(path.parent)
        return cls(key, key_id)

    @classmethod
    def load(cls, path: Path) -> KeyFileKEK:
        """The KEK in `path`; `ConfigError` if the file is group/world accessible or malformed."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            raise ConfigError(f"cannot open key file {path}: {error.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise ConfigError(
                    f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others "
                    f"may access it; refusing to use it (chmod 600 {path})"
                )
            raw = _read_all(fd)
        finally:
            os.close(fd)
        try:
            document = json.loads(raw)
            if document.get("format") != KEY_FILE_FORMAT or document.get("version") != 1:
                raise ValueError("not a consilium-kek version 1 file")
            key = base64.b64decode(document["key"], validate=True)
            key_id = str(document["key_id"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"key file {path} is malformed: {error}") from None
        return cls(key, key_id)


@dataclass(frozen=True)
class WrappedKey:
    """One keyring entry: a recording's data key as wrapped by a KEK."""

    recording_id: str
    """The recording the key encrypts (also the wrapping's associated data)."""
    kek_id: str
    """The KEK that wrapped it."""
    wrapped_key: bytes
    """The KEK's output."""
    created: str
    """When the data key was created (ISO 8601, UTC); kept across rotations."""

    def to_json(self) -> bytes:
        """The entry file's bytes."""
        document = {
            "format": ENTRY_FORMAT,
            "version": 1,
            "recording_id": self.recording_id,
            "kek_id": self.kek_id,
            "wrapped_key": base64.b64encode(self.wrapped_key).decode("ascii"),
            "created": self.created,
        }
        return json.dumps(document, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> WrappedKey:
        """Parse an entry file; `IntegrityError` if it is not one."""
        try:
            document: dict[str, Any] = json.loads(raw)
            if document.get("format") != ENTRY_FORMAT or document.get("version") != 1:
                raise ValueError("not a wrapped data key, version 1")
            return cls(
                recording_id=str(document["recording_id"]),
                kek_id=str(document["kek_id"]),
                wrapped_key=base64.b64decode(document["wrapped_key"], validate=True),
                created=str(document["created"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise IntegrityError(f"keyring entry is malformed: {error}") from None


@dataclass(frozen=True)
class RotationResult:
    """What one `Keyring.rotate` run did."""

    rewrapped: int
    """Entries re-wrapped under the new KEK in this run."""
    already_current: int
    """Entries already under the new KEK (done by an earlier, interrupted run)."""


class Keyring:
    """The directory of wrapped data keys, one JSON file per recording.

    `kek` wraps new keys; `previous` KEKs are only used to unwrap keys not yet rotated.
    """

    def __init__(
        self,
        directory: Path,
        kek: KeyEncryptionKey,
        previous: tuple[KeyEncryptionKey, ...] = (),
    ) -> None:
        """Open (creating, mode 0700) the keyring directory."""
        self.directory = directory
        self.kek = kek
        self._keks = {old.key_id: old for old in previous}
        self._keks[kek.key_id] = kek
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One writer at a time across processes: a rotation must not write back an entry that a
        # concurrent shred has just destroyed.
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _entry_path(self, recording_id: str) -> Path:
        if not _RECORDING_ID.fullmatch(recording_id):
            raise ValueError(f"not a usable recording id: {recording_id!r}")
        return self.directory / f"{recording_id}{_KEY_SUFFIX}"

    def _tombstone_path(self, recording_id: str) -> Path:
        return self.directory / f"{recording_id}{_TOMBSTONE_SUFFIX}"

    def is_shredded(self, recording_id: str) -> bool:
        """Whether the recording's data key was destroyed."""
        self._entry_path(recording_id)
        return self._tombstone_path(recording_id).exists()

    def _refuse_if_shredded(self, recording_id: str) -> None:
        tombstone = self._tombstone_path(recording_id)
        if tombstone.exists():
            try:
                when = json.loads(tombstone.read_bytes()).get("shredded", "an unknown date")
            except ValueError:
                when = "an unknown date"
            raise RecordingShredded(
                f"recording {recording_id} was shredded on {when}: its data key is destroyed",
                recording_id=recording_id,
            )

    def create(self, recording_id: str) -> bytes:
        """A new random data key for the recording, stored wrapped; returns the data key."""
        path = self._entry_path(recording_id)
        self._refuse_if_shredded(recording_id)
        data_key = os.urandom(DATA_KEY_SIZE)
        entry = WrappedKey(
            recording_id=recording_id,
            kek_id=self.kek.key_id,
            wrapped_key=self.kek.wrap(data_key, recording_id),
            created=stamp_s(datetime.now(UTC)),
        )
        with self._locked():
            self._refuse_if_shredded(recording_id)
            try:
                write_atomically(path, entry.to_json(), replace=False)
            except FileExistsError:
                raise KeyringError(f"recording {recording_id} already has a data key") from None
        return data_key

    def restore(self, entry: WrappedKey) -> bool:
        """Put back an entry kept elsewhere (the object store's copy, `recorder.objectstore`):
        it must unwrap under a loaded KEK. False if the same entry is already here;
        `RecordingShredded` if the recording was shredded here; `KeyringError` if another
        entry holds its place."""
        path = self._entry_path(entry.recording_id)
        self._refuse_if_shredded(entry.recording_id)
        self._unwrap_entry(entry)  # ours, and intact
        with self._locked():
            self._refuse_if_shredded(entry.recording_id)
            try:
                write_atomically(path, entry.to_json(), replace=False)
            except FileExistsError:
                if WrappedKey.from_json(path.read_bytes()) == entry:
                    return False
                raise KeyringError(
                    f"recording {entry.recording_id} already has another data key"
                ) from None
        return True

    def entry(self, recording_id: str) -> WrappedKey:
        """The recording's keyring entry (still wrapped)."""
        path = self._entry_path(recording_id)
        self._refuse_if_shredded(recording_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyringError(f"no data key for recording {recording_id}") from None
        entry = WrappedKey.from_json(raw)
        if entry.recording_id != recording_id:
            raise IntegrityError(
                f"keyring entry {path.name} belongs to recording {entry.recording_id}, "
                f"not {recording_id}"
            )
        return entry

    def unwrap(self, recording_id: str) -> bytes:
        """The recording's data key; `RecordingShredded`, `KeyringError` or `IntegrityError`."""
        entry = self.entry(recording_id)
        return self._unwrap_entry(entry)

    def _unwrap_entry(self, entry: WrappedKey) -> bytes:
        kek = self._keks.get(entry.kek_id)
        if kek is None:
            raise KeyringError(
                f"the data key of recording {entry.recording_id} is wrapped under KEK "
                f"{entry.kek_id!r}, which is not loaded (loaded: {', '.join(sorted(self._keks))})"
            )
        try:
            data_key = kek.unwrap(entry.wrapped_key, entry.recording_id)
        except InvalidTag:
            raise IntegrityError(
                f"the data key of recording {entry.recording_id} does not unwrap with KEK "
                f"{entry.kek_id!r}: wrong key file for that id, or a modified keyring entry"
            ) from None
        if len(data_key) != DATA_KEY_SIZE:
            raise IntegrityError(f"the data key of recording {entry.recording_id} has bad size")
        return data_key

    def _entries(self) -> Iterator[Path]:
        # Sorted: rotation and listings go in a stable order; temp files start with a dot.
        yield from sorted(self.directory.glob(f"[!.]*{_KEY_SUFFIX}"))

    def list(self) -> list[WrappedKey]:
        """Every live (not shredded) entry, by recording id."""
        entries = []
        for path in self._entries():
            recording_id = path.name.removesuffix(_KEY_SUFFIX)
            if self.is_shredded(recording_id):
                continue  # an interrupted shred: the key is on its way out
            entries.append(WrappedKey.from_json(path.read_bytes()))
        return entries

    def kek_ids_in_use(self) -> set[str]:
        """The KEKs live entries are wrapped under: an old KEK may go once it is not here."""
        return {entry.kek_id for entry in self.list()}

    def rotate(
        self,
        new_kek: KeyEncryptionKey,
        progress: Callable[[int, int], None] | None = None,
    ) -> RotationResult:
        """Re-wrap every data key under `new_kek`, one atomic file replacement at a time.

        Media is not touched. Safe to interrupt and run again: entries already under `new_kek`
        are skipped. Until it completes, the old KEKs must stay loaded (`previous`).
        `progress(done, total)` is called after each entry, for a progress bar.
        """
        self._keks[new_kek.key_id] = new_kek
        self.kek = new_kek
        entries = self.list()
        rewrapped = already = 0
        for done, entry in enumerate(entries, start=1):
            if entry.kek_id == new_kek.key_id:
                already += 1
            else:
                data_key = self._unwrap_entry(entry)
                rotated = WrappedKey(
                    recording_id=entry.recording_id,
                    kek_id=new_kek.key_id,
                    wrapped_key=new_kek.wrap(data_key, entry.recording_id),
                    created=entry.created,
                )
                with self._locked():
                    # Shredded since the listing: leave it gone.
                    if not self.is_shredded(entry.recording_id):
                        write_atomically(self._entry_path(entry.recording_id), rotated.to_json())
                        rewrapped += 1
            if progress is not None:
                progress(done, len(entries))
        return RotationResult(rewrapped=rewrapped, already_current=already)

    def shred(self, recording_id: str) -> None:
        """Destroy the recording's data key for good; idempotent, resumable.

        The tombstone is written first, so a crash mid-way still reads as shredded and a second
        call finishes the job. Overwriting before unlinking covers file systems that reuse the
        blocks in place; on copy-on-write and flash storage old blocks may survive, which is why
        the KEK that wrapped the key is what finally protects any leftover or backup copy.
        """
        path = self._entry_path(recording_id)
        with self._locked():
            self._shred_locked(recording_id, path)

    def _shred_locked(self, recording_id: str, path: Path) -> None:
        tombstone = self._tombstone_path(recording_id)
        leftovers = [path, temp_path(path)]
        if not tombstone.exists():
            if not path.exists():
                raise KeyringError(f"no data key for recording {recording_id}")
            marker = {
                "recording_id": recording_id,
                "shredded": stamp_s(datetime.now(UTC)),
            }
            write_atomically(tombstone, json.dumps(marker).encode("utf-8") + b"\n")
        for leftover in leftovers:
            _overwrite_and_unlink(leftover)
        fsync_directory(self.directory)


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 65536):
        parts.append(chunk)
    return b"".join(parts)


def _overwrite_and_unlink(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        write_all(fd, os.urandom(max(os.fstat(fd).st_size, 1)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
