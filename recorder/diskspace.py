"""Free space in the data folder, watched while a room is recorded.

A recording grows by megabytes a minute, on the same volume as the audit log, the annotation
logs and the shared images. So that a full disk is never a surprise: below the reserve
(`disk_reserve_mb`) the chair is warned (`storage_low`); below a quarter of it (the floor) the
recording stops by itself, cleanly and marked `failed`, while there is still room to seal its last
segments, its manifest and its audit entry. A disk filled faster than the watcher looks (another
program, a huge upload) makes the recorder's own writes fail; for that case the watcher keeps a
small file of emergency space (`EMERGENCY_NAME`) that it deletes at once, so the failure can
still be written down.

`DiskSpace` decides (sans-IO: give it the free bytes); `DiskWatcher` looks at the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("consilium.recorder.diskspace")

MIB = 1024 * 1024
POLL_INTERVAL_S = 0.5
"""How often the free space is read while something is recorded (a statvfs: microseconds)."""
EMERGENCY_NAME = "emergency-space"
"""The file of emergency space, in the data folder."""
EMERGENCY_BYTES = 1 * MIB
"""Enough for a failed recording's manifest, its audit entries and the held-back annotations."""

DiskLevel = Literal["ok", "low", "full"]
"""`ok`; `low`: below the reserve (warn); `full`: below the floor (stop recording)."""


def failure_code(error: BaseException | None) -> Literal["disk_full", "write_failed"]:
    """The reason code a storage error is reported with."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    return "write_failed"


@dataclass(frozen=True)
class DiskSpace:
    """The thresholds: a reserve to warn at, a floor (a quarter of it) to stop at."""

    reserve_bytes: int
    """Below this much free space the chair is warned."""

    @property
    def floor_bytes(self) -> int:
        """Below this much free space recordings stop (marked `failed`)."""
        return self.reserve_bytes // 4

    def level(self, free_bytes: int) -> DiskLevel:
        """Where `free_bytes` stands."""
        if free_bytes < self.floor_bytes:
            return "full"
        return "low" if free_bytes < self.reserve_bytes else "ok"


def free_bytes(path: Path) -> int:
    """Free space available to this process on the volume holding `path`."""
    return shutil.disk_usage(path).free


class DiskWatcher:
    """Reads the free space of `folder` every `POLL_INTERVAL_S` while started, and calls
    `on_level(level, free_bytes)` when the level changes (and again at every poll while `full`,
    so a recording started meanwhile is stopped too). Keeps the emergency space file while the
    disk is `ok`, deletes it as soon as the disk is `full` or `release` is called."""

    def __init__(
        self,
        folder: Path,
        space: DiskSpace,
        on_level: Callable[[DiskLevel, int], Awaitable[None]],
    ) -> None:
        self.folder = folder
        self.space = space
        self.on_level = on_level
        self.level: DiskLevel = "ok"
        self._task: asyncio.Task[None] | None = None

    @property
    def emergency_path(self) -> Path:
        """The emergency space file."""
        return self.folder / EMERGENCY_NAME

    def start(self) -> None:
        """Watch from now on (idempotent); the emergency space is set aside if there is room."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            if task is asyncio.current_task():
                return
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def release(self) -> bool:
        """Delete the emergency space (a write failed on a full disk); whether there was one."""
        try:
            self.emergency_path.unlink()
        except FileNotFoundError:
            return False
        except OSError:
            log.exception("emergency space could not be released")
            return False
        log.warning("emergency disk space released", extra={"folder": str(self.folder)})
        return True

    def _set_aside(self) -> None:
        if self.emergency_path.exists():
            return
        try:
            fd = os.open(self.emergency_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        try:
            # Written, not sparse and not fallocated (tmpfs, some filesystems fake it).
            os.write(fd, bytes(EMERGENCY_BYTES))
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.emergency_path.unlink(missing_ok=True)
            return
        os.close(fd)

    async def _watch(self) -> None:
        while True:
            try:
                free = await asyncio.to_thread(free_bytes, self.folder)
            except OSError:
                log.exception("free space of the data folder unreadable")
                await asyncio.sleep(POLL_INTERVAL_S)
                continue
            level = self.space.level(free)
            if level == "full":
                self.release()
            elif level == "ok":
                await asyncio.to_thread(self._set_aside)
            if level != self.level or level == "full":
                if level != self.level:
                    log.warning("data folder free space: %s", level,
                                extra={"free_mb": free // MIB})  # fmt: skip
                self.level = level
                try:
                    await self.on_level(level, free)
                except Exception:
                    log.exception("disk level handler failed")
            await asyncio.sleep(POLL_INTERVAL_S)
