"""Recording keys: wrapping under a KEK, rotation without touching media, shredding, key files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from core.errors import ConfigError, IntegrityError
from recorder.keyring import (
    DATA_KEY_SIZE,
    KeyEncryptionKey,
    KeyFileKEK,
    Keyring,
    KeyringError,
    RecordingShredded,
    WrappedKey,
)
from recorder.segments import decrypt_segment, encrypt_segment, segment_context
from signaling.errors import http_status_of

MEDIA = b"VP8 frames of case 1 " * 5000


@pytest.fixture
def kek(tmp_path: Path) -> KeyFileKEK:
    return KeyFileKEK.generate(tmp_path / "secrets" / "kek-a.json", key_id="kek-a")


@pytest.fixture
def keyring(tmp_path: Path, kek: KeyFileKEK) -> Keyring:
    return Keyring(tmp_path / "keys", kek)


def _record(keyring: Keyring, recording_id: str, media_dir: Path) -> tuple[Path, bytes]:
    """A recording's first segment on disk, as the recorder writes it; returns its path and hash."""
    data_key = keyring.create(recording_id)
    path = media_dir / f"{recording_id}-video-0.seg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encrypt_segment(MEDIA, data_key, segment_context(recording_id, "video", 0)))
    return path, hashlib.sha256(path.read_bytes()).digest()


def _play(keyring: Keyring, recording_id: str, path: Path) -> bytes:
    data_key = keyring.unwrap(recording_id)
    return decrypt_segment(path.read_bytes(), data_key, segment_context(recording_id, "video", 0))


def test_created_key_unwraps_to_the_same_key(keyring: Keyring) -> None:
    data_key = keyring.create("rec-1")
    assert len(data_key) == DATA_KEY_SIZE
    assert keyring.unwrap("rec-1") == data_key
    assert keyring.create("rec-2") != data_key


def test_entry_is_small_json_without_the_plain_key(keyring: Keyring) -> None:
    data_key = keyring.create("rec-1")
    path = keyring.directory / "rec-1.key.json"
    raw = path.read_bytes()
    document = json.loads(raw)
    assert {"recording_id", "kek_id", "wrapped_key", "created"} <= document.keys()
    assert (document["recording_id"], document["kek_id"]) == ("rec-1", "kek-a")
    assert data_key not in raw and data_key.hex().encode() not in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyring.directory.stat().st_mode) == 0o700


def test_a_recording_gets_one_data_key(keyring: Keyring) -> None:
    keyring.create("rec-1")
    with pytest.raises(KeyringError, match="already has a data key"):
        keyring.create("rec-1")


def test_unknown_recording_has_no_key(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="no data key for recording rec-9"):
        keyring.unwrap("rec-9")


@pytest.mark.parametrize("recording_id", ["", "../etc/passwd", ".hidden", "a/b", "x" * 200])
def test_unusable_recording_ids_are_refused(keyring: Keyring, recording_id: str) -> None:
    with pytest.raises(ValueError, match="recording id"):
        keyring.create(recording_id)


def test_list_shows_recordings_and_their_kek(keyring: Keyring) -> None:
    keyring.create("rec-b")
    keyring.create("rec-a")
    listed = keyring.list()
    assert [(entry.recording_id, entry.kek_id) for entry in listed] == [
        ("rec-a", "kek-a"),
        ("rec-b", "kek-a"),
    ]
    assert keyring.kek_ids_in_use() == {"kek-a"}


def test_rotate_then_play_a_segment_written_before_rotation(
    tmp_path: Path, keyring: Keyring, kek: KeyFileKEK
) -> None:
    segment, digest = _record(keyring, "rec-1", tmp_path / "media")
    _record(keyring, "rec-2", tmp_path / "media")
    new_kek = KeyFileKEK.generate(tmp_path / "secrets" / "kek-b.json", key_id="kek-b")
    ticks: list[tuple[int, int]] = []

    result = keyring.rotate(new_kek, progress=lambda done, total: ticks.append((done, total)))

    assert (result.rewrapped, result.already_current) == (2, 0)
    assert ticks == [(1, 2), (2, 2)]
    assert keyring.kek_ids_in_use() == {"kek-b"}
    # The media was not touched; with only the new KEK loaded (the old one retired), it plays.
    assert hashlib.sha256(segment.read_bytes()).digest() == digest
    after = Keyring(keyring.directory, KeyFileKEK.load(tmp_path / "secrets" / "kek-b.json"))
    assert _play(after, "rec-1", segment) == MEDIA
    created = {entry.recording_id: entry.created for entry in after.list()}
    assert created == {entry.recording_id: entry.created for entry in keyring.list()}


def test_interrupted_rotation_resumes(tmp_path: Path, keyring: Keyring, kek: KeyFileKEK) -> None:
    for number in range(3):
        keyring.create(f"rec-{number}")
    new_kek = KeyFileKEK.generate(tmp_path / "secrets" / "kek-b.json", key_id="kek-b")

    class CrashesOnSecondWrap(KeyFileKEK):
        calls = 0

        def wrap(self, data_key: bytes, recording_id: str) -> bytes:
            type(self).calls += 1
            if type(self).calls == 2:
                raise OSError("power cut")
            return super().wrap(data_key, recording_id)

    crashing = CrashesOnSecondWrap.load(tmp_path / "secrets" / "kek-b.json")
    with pytest.raises(OSError, match="power cut"):
        keyring.rotate(crashing)
    assert keyring.kek_ids_in_use() == {"kek-a", "kek-b"}

    # Without the old KEK, the keys not yet rotated cannot be read, and say why.
    only_new = Keyring(keyring.directory, new_kek)
    assert len(only_new.unwrap("rec-0")) == DATA_KEY_SIZE
    with pytest.raises(KeyringError, match="KEK 'kek-a', which is not loaded"):
        only_new.unwrap("rec-1")

    resumed = Keyring(keyring.directory, kek).rotate(new_kek)
    assert (resumed.rewrapped, resumed.already_current) == (2, 1)
    assert all(len(only_new.unwrap(f"rec-{number}")) == DATA_KEY_SIZE for number in range(3))
    assert [path.name for path in keyring.directory.glob(".*")] == [".lock"]  # no temp files


def test_shred_then_play_fails_with_shredded(tmp_path: Path, keyring: Keyring) -> None:
    segment, _ = _record(keyring, "rec-1", tmp_path / "media")
    backup = segment.read_bytes()  # a copy of the media elsewhere: it must be useless too
    entry = keyring.directory / "rec-1.key.json"
    wrapped = WrappedKey.from_json(entry.read_bytes()).wrapped_key

    keyring.shred("rec-1")

    assert not entry.exists()
    with pytest.raises(RecordingShredded, match="shredded") as caught:
        _play(keyring, "rec-1", segment)
    assert (caught.value.code, http_status_of(caught.value)) == ("shredded", 410)
    assert keyring.is_shredded("rec-1")
    assert keyring.list() == []
    # The tombstone keeps no key material, and the id is never given a new key.
    for leftover in keyring.directory.iterdir():
        assert wrapped not in leftover.read_bytes()
    with pytest.raises(RecordingShredded, match="shredded"):
        keyring.create("rec-1")
    assert backup == segment.read_bytes()
    keyring.shred("rec-1")  # idempotent


def test_interrupted_shred_still_reads_as_shredded(keyring: Keyring) -> None:
    keyring.create("rec-1")
    # A crash after the tombstone, before the key was destroyed; a stale temp file from an
    # interrupted rotation is lying there too.
    tombstone = keyring.directory / "rec-1.shredded.json"
    tombstone.write_text(json.dumps({"recording_id": "rec-1", "shredded": "2030-01-01"}))
    stale = keyring.directory / ".rec-1.key.json.tmp"
    stale.write_bytes((keyring.directory / "rec-1.key.json").read_bytes())
    with pytest.raises(RecordingShredded, match="shredded on 2030-01-01"):
        keyring.unwrap("rec-1")
    assert keyring.list() == []

    keyring.shred("rec-1")
    left = sorted(path.name for path in keyring.directory.iterdir())
    assert left == [".lock", "rec-1.shredded.json"]


def test_rotation_does_not_bring_back_a_key_shredded_meanwhile(
    tmp_path: Path, keyring: Keyring
) -> None:
    keyring.create("rec-1")
    keyring.create("rec-2")

    class ShredsWhileRotating(KeyFileKEK):
        def wrap(self, data_key: bytes, recording_id: str) -> bytes:
            if recording_id == "rec-2":
                keyring.shred("rec-2")  # another process's retention run, between list and write
            return super().wrap(data_key, recording_id)

    result = keyring.rotate(ShredsWhileRotating(os.urandom(32), "kek-b"))

    assert result.rewrapped == 1
    assert not (keyring.directory / "rec-2.key.json").exists()
    with pytest.raises(RecordingShredded):
        keyring.unwrap("rec-2")


def test_shred_of_an_unknown_recording_is_refused(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="no data key"):
        keyring.shred("rec-404")


def test_wrong_kek_with_the_same_id_fails_clearly(tmp_path: Path, keyring: Keyring) -> None:
    keyring.create("rec-1")
    impostor = KeyFileKEK(os.urandom(32), "kek-a")
    with pytest.raises(IntegrityError, match="does not unwrap with KEK 'kek-a'"):
        Keyring(keyring.directory, impostor).unwrap("rec-1")


def test_entry_copied_to_another_recording_does_not_open(keyring: Keyring) -> None:
    keyring.create("rec-1")
    keyring.create("rec-2")
    source = json.loads((keyring.directory / "rec-1.key.json").read_text())
    source["recording_id"] = "rec-2"
    (keyring.directory / "rec-2.key.json").write_text(json.dumps(source))
    with pytest.raises(IntegrityError, match="does not unwrap"):
        keyring.unwrap("rec-2")
    (keyring.directory / "rec-2.key.json").write_bytes(
        (keyring.directory / "rec-1.key.json").read_bytes()
    )
    with pytest.raises(IntegrityError, match="belongs to recording rec-1"):
        keyring.unwrap("rec-2")


def test_key_file_is_private_and_loads(tmp_path: Path, kek: KeyFileKEK) -> None:
    path = tmp_path / "secrets" / "kek-a.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = KeyFileKEK.load(path)
    assert loaded.key_id == "kek-a"
    assert loaded.unwrap(kek.wrap(b"k" * 32, "rec-1"), "rec-1") == b"k" * 32
    with pytest.raises(InvalidTag):
        loaded.unwrap(kek.wrap(b"k" * 32, "rec-1"), "rec-2")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_group_or_world_readable_key_file_is_refused(
    tmp_path: Path, kek: KeyFileKEK, mode: int
) -> None:
    path = tmp_path / "secrets" / "kek-a.json"
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}.*chmod 600"):
        KeyFileKEK.load(path)


def test_key_file_is_never_overwritten(tmp_path: Path, kek: KeyFileKEK) -> None:
    with pytest.raises(FileExistsError):
        KeyFileKEK.generate(tmp_path / "secrets" / "kek-a.json")
    assert KeyFileKEK.load(tmp_path / "secrets" / "kek-a.json").key_id == "kek-a"


def test_malformed_or_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{}")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="malformed"):
        KeyFileKEK.load(path)
    with pytest.raises(ConfigError, match="cannot open"):
        KeyFileKEK.load(tmp_path / "absent.json")


def test_a_kms_plugs_in_through_the_interface(tmp_path: Path) -> None:
    class FakeKMS(KeyEncryptionKey):
        """Stands in for an external KMS: the key never leaves it."""

        def __init__(self) -> None:
            self._inner = KeyFileKEK(os.urandom(32), "kms:projects/h/keys/recordings/1")

        @property
        def key_id(self) -> str:
            return self._inner.key_id

        def wrap(self, data_key: bytes, recording_id: str) -> bytes:
            return self._inner.wrap(data_key, recording_id)

        def unwrap(self, wrapped: bytes, recording_id: str) -> bytes:
            return self._inner.unwrap(wrapped, recording_id)

    keyring = Keyring(tmp_path / "keys", FakeKMS())
    data_key = keyring.create("rec-1")
    assert keyring.unwrap("rec-1") == data_key
    assert keyring.list()[0].kek_id == "kms:projects/h/keys/recordings/1"


def test_an_entry_kept_elsewhere_is_restored_once_and_only_under_a_loaded_kek(
    tmp_path: Path, keyring: Keyring, kek: KeyFileKEK
) -> None:
    data_key = keyring.create("rec-1")
    entry = keyring.entry("rec-1")
    # A replacement node: an empty keyring under the same KEK takes the entry back.
    replacement = Keyring(tmp_path / "replacement", kek)
    assert replacement.restore(entry) is True
    assert replacement.unwrap("rec-1") == data_key
    assert replacement.restore(entry) is False  # the same entry: nothing to do
    other = WrappedKey("rec-1", entry.kek_id, kek.wrap(os.urandom(32), "rec-1"), entry.created)
    with pytest.raises(KeyringError, match="another data key"):
        replacement.restore(other)
    # Under a KEK this node does not have: refused, nothing written.
    stranger = Keyring(tmp_path / "stranger", KeyFileKEK.generate(tmp_path / "other-kek.json"))
    with pytest.raises(KeyringError, match="not loaded"):
        stranger.restore(entry)
    assert stranger.list() == []
    # Altered on the way (another recording's entry under this id): refused.
    moved = WrappedKey("rec-2", entry.kek_id, entry.wrapped_key, entry.created)
    with pytest.raises(IntegrityError):
        replacement.restore(moved)
    # Shredded here: a copy from elsewhere does not bring it back.
    replacement.shred("rec-1")
    with pytest.raises(RecordingShredded):
        replacement.restore(entry)
