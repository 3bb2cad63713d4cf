"""Revocations kept by a node: the local copy every check reads, and the journal on disk.

`RevocationIndex` is pure (the time is passed in). The journal, `revocations.jsonl` in the data
dir, is what makes a node never forget a revocation, whatever happens to the shared state: one
JSON object per line, appended and fsynced per revocation, compacted at start.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.durable import append_durably, write_atomically
from core.errors import IntegrityError
from signaling.state.records import Revocation

log = logging.getLogger(__name__)

REVOCATIONS_FILE = "revocations.jsonl"
"""Name of the node's revocation journal inside the data dir (both stores keep one)."""


class RevocationIndex:
    """The live revocations by `kind:value`: the local copy every `is_revoked` reads.

    Revocations are never deleted, only expire, so merging any two copies is a union; for the
    same key the later revocation (by `at`) wins, whatever order copies arrive in. A withdrawal
    is a later record marked `lifted`, which wins the same way and revokes nothing.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, Revocation] = {}

    def add(self, r: Revocation) -> bool:
        """Merge one revocation in; whether it was new to this copy (or newer than its own)."""
        current = self._by_key.get(r.key)
        if current is None or r.at > current.at:
            self._by_key[r.key] = r
            return True
        if r.at == current.at:
            self._by_key[r.key] = r
        return False

    def lookup(self, *, jti: str, sub: str, now: float) -> Revocation | None:
        """The revocation that applies to a token with this `jti` and `sub`, if any."""
        # Hot path (every join, every revocation sweep): two dict lookups, no I/O.
        # tests/test_state.py::test_is_revoked_does_not_ask_redis keeps it local.
        if jti:
            r = self._live("jti:" + jti, now)
            if r is not None and not r.lifted:
                return r
        if sub:
            r = self._live("sub:" + sub, now)
            if r is not None and not r.lifted:
                return r
        return None

    def _live(self, key: str, now: float) -> Revocation | None:
        r = self._by_key.get(key)
        if r is not None and r.expired(now):
            del self._by_key[key]
            return None
        return r

    def prune(self, now: float) -> list[Revocation]:
        """Drop and return the expired revocations."""
        expired = [r for r in self._by_key.values() if r.expired(now)]
        for r in expired:
            del self._by_key[r.key]
        return expired

    def live(self, now: float) -> list[Revocation]:
        """The revocations that have not expired at `now`, oldest first; lifted ones included
        (they are what a journal and Redis must keep, not what anyone is refused by)."""
        self.prune(now)
        return sorted(self._by_key.values(), key=lambda r: (r.at, r.key))


# The journal: one JSON object per line, appended and fsynced per revoke.


def _encode_revocation_line(r: Revocation) -> bytes:
    return json.dumps(r.to_dict(), separators=(",", ":")).encode() + b"\n"


def _decode_revocation_line(line: bytes) -> Revocation:
    d = json.loads(line)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return Revocation.from_dict(d)


def read_revocation_log(path: Path) -> tuple[list[Revocation], bool]:
    """The revocations in the log, and whether its last line was torn.

    A torn last line (a write cut short by a crash: its revoke never returned) is skipped with a
    warning. A bad line anywhere else is not a crash artefact: IntegrityError, so that a
    revocation is never silently lost.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], False
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    revocations: list[Revocation] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            revocations.append(_decode_revocation_line(line))
        except (ValueError, TypeError) as exc:
            raise IntegrityError(f"{path}:{lineno}: unreadable revocation ({exc})") from exc
    torn = False
    if tail.strip():
        try:
            revocations.append(_decode_revocation_line(tail))
        except (ValueError, TypeError):
            log.warning(
                "%s:%d: skipped a partially written last line (%d bytes)",
                path,
                len(lines) + 1,
                len(tail),
            )
        torn = True  # complete or not, the next append must not continue this line
    return revocations, torn


def append_revocations(path: Path, revocations: list[Revocation]) -> None:
    """Append revocations to the journal, durably (fsynced before it returns)."""
    append_durably(path, b"".join(_encode_revocation_line(r) for r in revocations))


def _rewrite_revocation_log(path: Path, revocations: list[Revocation]) -> None:
    write_atomically(path, b"".join(_encode_revocation_line(r) for r in revocations))


def load_revocation_log(path: Path, now: float) -> list[Revocation]:
    """Read the log; compact it (drop expired, superseded and torn lines) if it has any.

    The revocations live at `now`, oldest first.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    records, torn = read_revocation_log(path)
    index = RevocationIndex()
    for r in records:
        index.add(r)
    live = index.live(now)
    if torn or len(live) != len(records):
        _rewrite_revocation_log(path, live)
    return live
