"""Durable files (core.durable): whole-or-nothing writes, create-once, appends. Fast, no loop."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.durable import (
    append_durably,
    create_once,
    fsync_directory,
    temp_path,
    write_all,
    write_atomically,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomically_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old content, longer than the new one")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert not temp_path(target).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomically_gives_exactly_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomically(tmp_path / "public.json", b"{}", mode=0o644)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "public.json") == 0o644
    write_atomically(tmp_path / "secret.json", b"{}")
    assert mode_of(tmp_path / "secret.json") == 0o600


def test_write_atomically_without_replace_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "rec-1.key.json"
    write_atomically(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_atomically(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert not temp_path(target).exists()


def test_a_temp_file_left_by_a_crash_is_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    temp_path(target).write_bytes(b"half a manifest from before the crash")
    write_atomically(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not temp_path(target).exists()


def test_create_once_first_one_wins(tmp_path: Path) -> None:
    key = tmp_path / "audit-ed25519.pem"
    assert create_once(key, b"mine", 0o600) is True
    assert create_once(key, b"theirs", 0o600) is False
    assert key.read_bytes() == b"mine"
    assert mode_of(key) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [key.name]


def test_append_durably_only_grows(tmp_path: Path) -> None:
    log = tmp_path / "revocations.jsonl"
    append_durably(log, b"one\n")
    append_durably(log, b"two\n")
    assert log.read_bytes() == b"one\ntwo\n"
    assert mode_of(log) == 0o600


def test_write_all_writes_everything(tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_fsync_directory_refuses_a_file(tmp_path: Path) -> None:
    fsync_directory(tmp_path)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_directory(tmp_path / "file")
