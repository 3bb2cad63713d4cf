"""Per-room data keys: created once, the same after a restart, gone for good when shredded."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from recorder.keyring import RecordingShredded
from recorder.roomkeys import RoomKeys, open_keyring


def test_a_room_key_is_created_once_and_survives_a_restart(tmp_path: Path) -> None:
    first = RoomKeys(open_keyring(tmp_path)).key_for("tumour-board")
    assert len(first) == 32
    again = RoomKeys(open_keyring(tmp_path)).key_for("tumour-board")
    assert again == first
    assert RoomKeys(open_keyring(tmp_path)).key_for("other-room") != first
    kek = tmp_path / "keys" / "kek.json"
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    assert first not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_a_shredded_room_key_can_never_be_read_again(tmp_path: Path) -> None:
    keys = RoomKeys(open_keyring(tmp_path))
    keys.key_for("mdt-1")
    keys.shred("mdt-1")
    with pytest.raises(RecordingShredded, match="shredded"):
        RoomKeys(open_keyring(tmp_path)).key_for("mdt-1")


def test_the_kek_can_live_off_the_data_volume(tmp_path: Path) -> None:
    kek = tmp_path / "secrets" / "consilium-kek.json"
    key = RoomKeys(open_keyring(tmp_path / "data", kek)).key_for("mdt-1")
    assert kek.exists() and not (tmp_path / "data" / "keys" / "kek.json").exists()
    assert RoomKeys(open_keyring(tmp_path / "data", kek)).key_for("mdt-1") == key
