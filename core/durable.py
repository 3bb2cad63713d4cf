"""Durable files: what survives a crash or a power cut is either the old content or the new.

Three shapes, each in one place:
- `write_atomically`: a whole file replaced (or created) via a temp file, fsync, rename (or
  link) and an fsync of the directory, so readers and a crash see the old file or the new one;
- `create_once`: a file that several processes may race to create (a signing key): each writes
  its own temp file and links it into place, the first link wins and the others learn so;
- `append_durably` / `open_for_append`: a log that only grows, one write(2) per record.

A new name is durable only once its directory is fsynced (`fsync_directory`), which is why every
helper that creates or renames ends with one.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to the raw descriptor `fd` (a write(2) may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable, not only the file's contents."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """Where `write_atomically` stages `path`: `.<name>.tmp` beside it. A crash may leave it
    behind; the next write of the same file overwrites it, and a shred must overwrite it too."""
    return path.with_name(f".{path.name}.tmp")


def write_atomically(path: Path, data: bytes, *, replace: bool = True, mode: int = 0o600) -> None:
    """Write `path` whole or not at all: temp file, fsync, rename (or link), directory fsync.

    With `replace=False` an existing `path` raises `FileExistsError` (link never overwrites).
    The temp file has a fixed name (`temp_path`), so writers of the same file must be serialised
    by the caller (a lock, or a single writer); the file gets exactly `mode`, whatever the umask.
    """
    temp = temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    finally:
        if not replace:
            temp.unlink()
    fsync_directory(path.parent)


def create_once(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` holding `data` with exactly `mode`; False if it already exists.

    Safe against other processes creating it at the same moment: each writes a temp file of its
    own (named by its pid) and links it into place, so a crash never leaves a half-written file
    under the real name and the first complete one wins.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask says
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    fsync_directory(path.parent)
    return True


def open_for_append(path: Path, mode: int = 0o600) -> int:
    """A raw descriptor with O_APPEND (created with `mode` if new): one write(2) per record, no
    Python buffer to flush, and concurrent appends never interleave inside a record."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)


def append_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Append `data` to `path` and fsync it; a file this creates has its name fsynced too."""
    created = not path.exists()
    fd = open_for_append(path, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_directory(path.parent)
