"""The tamper-evident, append-only audit log.

Every security-relevant event (a join, a refusal, an admission, a revocation, a configuration
load) becomes one JSON line in ``<data-dir>/audit/audit-NNNNNN.jsonl``. Each entry carries the
SHA-256 of the entry before it, so editing, removing or reordering an entry breaks the chain.
Every ``checkpoint_every`` entries, and at close, the entry count and head hash are signed with
an Ed25519 key into ``checkpoints.jsonl``, so cutting off the tail or rewriting the whole chain
is caught as well. Verifying needs only the public key.

What the log cannot show by itself: someone with write access who removes the newest entries
*and* the checkpoints that vouch for them, wipes the log, or appends entries while the node is
stopped. Two copies of the heads outside the data folder close that gap: every checkpoint is
also appended to ``audit-heads.jsonl`` in the key folder (its last line says whether the node
closed the log cleanly), and the node refuses to extend a log that does not hold that head; and
every checkpoint goes to an external witness (`signaling.witness`, syslog over TLS), which
`signaling.auditverify.compare_with_witness` checks the log against. The lines' format and
their checks are `signaling.auditformat`; checking a whole log afterwards is
`signaling.auditverify`.

Entries hold identifiers (sub, room, jti, reason), never tokens or names: `AuditLog.append`
refuses field names for secrets and names (a programming error), and replaces anything in a value
that looks like a JWT with `auditformat.TOKEN_MARK`. A value comes from users (a path, a room
id, a reason), so the writer never fails on what they typed: an action is never left in force
without its entry, and a refusal is never answered 500. There is no way to delete an entry
through this module.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.canonical import as_utc, canonical_json, stamp_ms
from core.durable import append_durably, create_once, fsync_directory, open_for_append, write_all
from core.errors import ConfigError, IntegrityError
from signaling.auditformat import (
    CHECKPOINTS_FILE,
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
    Malformed,
    check_entry,
    decode_checkpoint,
    decode_entry,
    entry_hash,
    read_tail,
    segment_name,
    segment_paths,
)

HEADS_FILE = "audit-heads.jsonl"
"""In the key folder: each checkpoint's statement again, and whether the log was then closed."""
LOCK_FILE = ".lock"
PRIVATE_KEY_FILE = "audit-ed25519.pem"
PUBLIC_KEY_FILE = "audit-ed25519.pub.pem"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
"""A segment file is closed and the next one started once it would grow past this size."""
MAX_ENTRY_BYTES = 64 * 1024
"""An entry holds identifiers, not documents; the bound also keeps reading the tail cheap."""


# Log files are readable by the service's group so an auditor can verify without write access.
_FILE_MODE = 0o640
_DIRECTORY_MODE = 0o750


class AuditLog:
    """The writer: appends chained entries, signs checkpoints, and holds the directory's lock.

    Opening an existing log reads only the last line of the last segment and the last
    checkpoint to resume the chain. A line left half-written by a crash is cut off and the
    cut recorded in an ``audit_recovered`` entry (its length and SHA-256), so the chain stays
    verifiable and the repair stays visible.
    """

    def __init__(
        self,
        directory: Path,
        signing_key: Ed25519PrivateKey,
        *,
        checkpoint_every: int = 1000,
        fsync: bool = False,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], datetime] | None = None,
        heads_file: Path | None = None,
        witness: CheckpointWitness | None = None,
        on_entry: Callable[[AuditEntry], None] | None = None,
    ) -> None:
        """Open (or create) the log in `directory` and take its lock.

        `fsync=True` syncs every entry to disk; by default only checkpoints, rotation and
        close sync. `clock` returns aware datetimes (tests pass a fixed one). `heads_file`
        (outside `directory`) keeps every checkpoint's statement; `witness` is sent each one,
        and each entry (for the SIEM, `signaling.siem`). `on_entry` is called with each entry
        once written, in the appending thread (the webhooks); it must not block or raise.
        Raises `ConfigError` if another writer holds the lock, the existing log's tail does
        not agree with its last signed checkpoint, or the log does not hold the head kept in
        `heads_file` (entries removed, the log wiped or replaced, entries appended while the
        node was stopped).
        """
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if max_segment_bytes < 1:
            raise ValueError("max_segment_bytes must be positive")
        self._directory = Path(directory)
        self._key = signing_key
        self._checkpoint_every = checkpoint_every
        self._fsync = fsync
        self._max_segment_bytes = max_segment_bytes
        self._clock: Callable[[], datetime] = clock or _utc_now
        self._mutex = threading.Lock()
        self._closed = False
        self._count = 0
        self._head = GENESIS_HASH
        self._checkpointed = 0
        self._segment_number = 1
        self._segment_size = 0
        self._segment_fd = -1
        self._checkpoint_fd = -1
        self._heads_file = Path(heads_file) if heads_file is not None else None
        self._witness = witness
        self._on_entry = on_entry
        self._last_statement: dict[str, Any] | None = None

        self._directory.mkdir(parents=True, exist_ok=True, mode=_DIRECTORY_MODE)
        self._lock_fd = _acquire_lock(self._directory / LOCK_FILE)
        try:
            recoveries = self._resume()
        except BaseException:
            self._release_files()
            raise
        for note in recoveries:
            self.append("audit_recovered", "info", **note)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def directory(self) -> Path:
        """The directory holding the segments, checkpoints and lock."""
        return self._directory

    @property
    def head(self) -> str:
        """Hash of the newest entry (`GENESIS_HASH` for an empty log)."""
        with self._mutex:
            return self._head

    @property
    def count(self) -> int:
        """Number of entries in the log."""
        with self._mutex:
            return self._count

    def append(
        self,
        action: str,
        outcome: str = "info",
        *,
        sub: str | None = None,
        room: str | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> AuditEntry:
        """Append one entry and return it. Thread-safe; written and flushed before returning.

        `fields` are further identifiers (jti, role, dept, node, ip, participant id) with
        JSON values. Anything in `sub`, `room`, `reason` or a value that looks like a JWT is
        written as `TOKEN_MARK`. Raises `ValueError` for a field named like a secret or a name
        (see `FORBIDDEN_FIELDS`) or an unknown outcome, and `TypeError` for a value JSON cannot
        carry unchanged: errors in the caller's code, never in what a user sent.
        """
        # Called on every join: keep this to two json.dumps, one sha256 and one write(2).
        sub, room, reason, fields = check_entry(action, outcome, sub, room, reason, fields)
        with self._mutex:
            if self._closed:
                raise ValueError("audit log is closed")
            body: dict[str, Any] = {
                "action": action,
                "fields": fields,
                "outcome": outcome,
                "prev": self._head,
                "reason": reason,
                "room": room,
                "seq": self._count,
                "sub": sub,
                "ts": stamp_ms(self._clock()),
            }
            digest = hashlib.sha256(canonical_json(body)).hexdigest()
            body["hash"] = digest
            line = canonical_json(body) + b"\n"
            if len(line) > MAX_ENTRY_BYTES:
                raise ValueError(f"audit entry is {len(line)} bytes, over {MAX_ENTRY_BYTES}")
            if self._segment_size and self._segment_size + len(line) > self._max_segment_bytes:
                self._rotate()
            self._write_entry_line(line)
            self._segment_size += len(line)
            self._count += 1
            self._head = digest
            entry = AuditEntry(
                seq=body["seq"],
                ts=body["ts"],
                action=action,
                outcome=outcome,
                sub=sub,
                room=room,
                reason=reason,
                fields=fields,
                prev=body["prev"],
                hash=digest,
            )
            if self._witness is not None:
                # Queued under the lock, so the stream has entries and checkpoints in order.
                self._witness.send_entry(entry)
            if self._count - self._checkpointed >= self._checkpoint_every:
                self._checkpoint_locked()
        if self._on_entry is not None:
            self._on_entry(entry)
        return entry

    def checkpoint(self) -> None:
        """Sign the current count and head into ``checkpoints.jsonl`` and sync both to disk."""
        with self._mutex:
            if self._closed:
                raise ValueError("audit log is closed")
            self._checkpoint_locked()

    def close(self) -> None:
        """Sign a final checkpoint if anything is unsigned, record in the heads file that the
        log was closed there, then release the lock. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            try:
                if self._count != self._checkpointed or self._last_statement is None:
                    self._checkpoint_locked(closed=True)
                elif self._heads_file is not None:
                    self._append_head(self._last_statement, closed=True)
            finally:
                self._closed = True
                self._release_files()
        if self._witness is not None:
            self._witness.close()

    def _resume(self) -> list[dict[str, Any]]:
        """Set up the chain state from the files on disk; return crash repairs to record."""
        checkpoints_path = self._directory / CHECKPOINTS_FILE
        segments = segment_paths(self._directory)
        known = self._known_head()
        if not segments and not checkpoints_path.exists():
            if known is not None:
                raise ConfigError(
                    f"audit log {self._directory} is missing or empty, but {self._heads_file} "
                    f"says it held {known.count} entries (head {known.head[:16]}..., signed "
                    f"{known.ts}): the log was wiped or moved. Keep both as evidence; to start "
                    "a new log on purpose, move the heads file aside too."
                )
            # A new log. The genesis checkpoint comes first, so that on disk a segment without
            # checkpoints is never legitimate and its absence is evidence of removal.
            self._checkpoint_fd = open_for_append(checkpoints_path, _FILE_MODE)
            self._checkpoint_locked()
            self._segment_fd = open_for_append(self._segment_path(1), _FILE_MODE)
            fsync_directory(self._directory)
            return []
        if not checkpoints_path.exists():
            raise ConfigError(
                f"audit log {self._directory} has segments but no {CHECKPOINTS_FILE}; it may "
                "have been tampered with. Keep the directory as evidence and start a new log "
                "elsewhere, or restore the file."
            )

        recoveries: list[dict[str, Any]] = []
        cut = _cut_partial_tail(checkpoints_path)
        if cut is not None:
            recoveries.append(_recovery_note(checkpoints_path, *cut))
        last_line, _, _ = read_tail(checkpoints_path)
        if last_line is None:
            raise ConfigError(f"{checkpoints_path} is empty; run the audit verifier")
        try:
            last = decode_checkpoint(last_line, self._key.public_key())
        except Malformed as exc:
            raise ConfigError(
                f"last checkpoint in {checkpoints_path} is unusable ({exc}); was the audit key "
                "replaced? Run the audit verifier."
            ) from None

        if segments:
            self._segment_number = segments[-1][0]
        for _, path in reversed(segments):
            cut = _cut_partial_tail(path)
            if cut is not None:
                recoveries.append(_recovery_note(path, *cut))
            raw, _, _ = read_tail(path)
            if raw is None:
                continue  # an empty segment: created by rotation just before a crash
            try:
                entry = decode_entry(raw)
            except Malformed as exc:
                raise ConfigError(
                    f"last entry of {path} is unusable ({exc}); run the audit verifier"
                ) from None
            if entry_hash(entry) != entry.hash:
                raise ConfigError(f"last entry of {path} fails its hash; run the audit verifier")
            self._count = entry.seq + 1
            self._head = entry.hash
            break

        if last.count > self._count:
            raise ConfigError(
                f"audit log {self._directory} is truncated: its last checkpoint says "
                f"{last.count} entries, found {self._count}. Run the audit verifier."
            )
        if last.count == self._count and last.head != self._head:
            raise ConfigError(
                f"audit log {self._directory} does not match its last checkpoint; "
                "run the audit verifier"
            )
        if known is not None:
            self._check_known_head(known, last, checkpoints_path)
        if self._count > last.count:
            # After a crash the newest entries were never signed; after a clean close there
            # are none (the heads file says which). Say so in the log before signing over them.
            recoveries.append(
                {
                    "reason": "unsigned_entries_adopted",
                    "first_seq": last.count,
                    "entries": self._count - last.count,
                }
            )
        self._checkpointed = last.count
        self._last_statement = {"count": last.count, "head": last.head, "ts": last.ts,
                                "sig": last.sig}  # fmt: skip
        if self._heads_file is not None and (known is None or known.closed):
            # Open from now on: entries after this head are this run's, signed at its close,
            # or adopted at the next start if it crashes (not "appended while stopped").
            self._append_head(self._last_statement, closed=False)
        self._checkpoint_fd = open_for_append(checkpoints_path, _FILE_MODE)
        segment_path = self._segment_path(self._segment_number)
        self._segment_fd = open_for_append(segment_path, _FILE_MODE)
        self._segment_size = os.fstat(self._segment_fd).st_size
        return recoveries

    def _segment_path(self, number: int) -> Path:
        return self._directory / segment_name(number)

    def _write_entry_line(self, line: bytes) -> None:
        try:
            write_all(self._segment_fd, line)
            if self._fsync:
                os.fsync(self._segment_fd)
        except OSError:
            # A half-written line (disk full) would corrupt every later entry: cut it off, so
            # the log on disk stays exactly the entries we counted.
            os.ftruncate(self._segment_fd, self._segment_size)
            raise

    def _rotate(self) -> None:
        # A finished segment is complete on disk before its successor exists.
        os.fsync(self._segment_fd)
        os.close(self._segment_fd)
        self._segment_fd = -1
        self._segment_number += 1
        self._segment_fd = open_for_append(self._segment_path(self._segment_number), _FILE_MODE)
        fsync_directory(self._directory)
        self._segment_size = 0

    def _known_head(self) -> _KnownHead | None:
        """The last head the heads file holds (signature checked), None without one."""
        if self._heads_file is None or not self._heads_file.exists():
            return None
        _cut_partial_tail(self._heads_file)  # a crash mid-append: the log's copy is whole
        raw, _, _ = read_tail(self._heads_file)
        if raw is None:
            return None
        try:
            obj = json.loads(raw)
            closed = obj.pop("closed")
            checkpoint = decode_checkpoint(canonical_json(obj), self._key.public_key())
        except (ValueError, KeyError, TypeError, AttributeError, Malformed) as exc:
            raise ConfigError(
                f"last line of {self._heads_file} is unusable ({exc}); was the audit key "
                "replaced, or the file edited?"
            ) from None
        return _KnownHead(checkpoint.count, checkpoint.head, checkpoint.ts, checkpoint.sig,
                          closed is True)  # fmt: skip

    def _check_known_head(
        self, known: _KnownHead, last: Checkpoint, checkpoints_path: Path
    ) -> None:
        """Refuse a log that does not hold the head kept outside it."""
        statement = {"count": known.count, "head": known.head, "ts": known.ts, "sig": known.sig}
        if not _holds_checkpoint(checkpoints_path, statement):
            raise ConfigError(
                f"audit log {self._directory} does not hold the head kept in {self._heads_file}: "
                f"{known.count} entries, head {known.head[:16]}..., signed {known.ts}; the log's "
                f"last checkpoint is {last.count} entries, head {last.head[:16]}.... Entries "
                "were removed or the log replaced. Run `consilium audit verify` and keep both "
                "as evidence."
            )
        if known.closed and (self._count, last.count) != (known.count, known.count):
            raise ConfigError(
                f"audit log {self._directory} has {self._count - known.count} entries after "
                f"the head the node closed it with ({known.count} entries, {known.ts}, kept in "
                f"{self._heads_file}): they were appended while the node was stopped. Run "
                "`consilium audit verify` and keep the log as evidence."
            )

    def _append_head(self, statement: dict[str, Any], *, closed: bool) -> None:
        """Copy a checkpoint's statement to the heads file, outside the data folder."""
        assert self._heads_file is not None
        self._heads_file.parent.mkdir(parents=True, exist_ok=True, mode=_DIRECTORY_MODE)
        line = canonical_json({**statement, "closed": closed}) + b"\n"
        append_durably(self._heads_file, line, _FILE_MODE)

    def _checkpoint_locked(self, *, closed: bool = False) -> None:
        if self._segment_fd >= 0:
            # Entries must be on disk before a signature vouches for them.
            os.fsync(self._segment_fd)
        statement = {
            "count": self._count,
            "head": self._head,
            "ts": stamp_ms(self._clock()),
        }
        signature = self._key.sign(canonical_json(statement))
        statement["sig"] = base64.b64encode(signature).decode("ascii")
        write_all(self._checkpoint_fd, canonical_json(statement) + b"\n")
        os.fsync(self._checkpoint_fd)
        self._checkpointed = self._count
        self._last_statement = statement
        if self._heads_file is not None:
            self._append_head(statement, closed=closed)
        if self._witness is not None:
            self._witness.send(statement)

    def _release_files(self) -> None:
        for fd in (self._segment_fd, self._checkpoint_fd):
            if fd >= 0:
                os.close(fd)
        self._segment_fd = self._checkpoint_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1


def generate_audit_key(keys_dir: Path) -> Ed25519PrivateKey:
    """Create the audit signing key pair in `keys_dir`, or load it if it exists.

    Writes ``audit-ed25519.pem`` (PKCS#8, mode 0600) and ``audit-ed25519.pub.pem`` (mode
    0644); the public key is what auditors need to verify. Raises `ConfigError` if the files
    exist but are unusable or do not belong together.
    """
    keys_dir = Path(keys_dir)
    private_path = keys_dir / PRIVATE_KEY_FILE
    public_path = keys_dir / PUBLIC_KEY_FILE
    if private_path.exists():
        key = _load_private_key(private_path)
    else:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if not create_once(private_path, pem, 0o600):
            key = _load_private_key(private_path)  # another process created it first
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not create_once(public_path, public_pem, 0o644):
        existing = load_public_key(public_path)
        if existing.public_bytes_raw() != key.public_key().public_bytes_raw():
            raise ConfigError(f"{public_path} does not belong to the key in {private_path}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (PEM); raises `ConfigError` if missing or of another kind."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load audit public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def parse_time(value: str | None) -> datetime | None:
    """An ISO-8601 time with a zone (`2026-11-25T10:00:00Z`) for the entry filters.

    ValueError says what is wrong; the CLI and the REST API each turn it into their own error.
    """
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError("a time needs a zone, e.g. 2026-11-25T10:00:00Z")
    return parsed


def iter_entries(
    directory: Path,
    *,
    sub: str | None = None,
    room: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[AuditEntry]:
    """Yield entries in log order that match every filter given.

    The time range is `since` <= ts < `until`; naive datetimes are taken as UTC. Reading is
    not verifying (use `signaling.auditverify.verify_log`): the chain is not checked, but a
    line that is not a well-formed entry raises `IntegrityError`. A partial last line, an
    append in flight, is skipped.
    """
    start = as_utc(since) if since is not None else None
    end = as_utc(until) if until is not None else None
    segments = segment_paths(Path(directory))
    for index, (_, path) in enumerate(segments, start=1):
        with path.open("rb") as file:
            for lineno, raw in enumerate(file, start=1):
                if not raw.endswith(b"\n"):
                    if index == len(segments):
                        return
                    raise IntegrityError(f"{path.name} line {lineno}: partial line")
                try:
                    entry = decode_entry(raw[:-1])
                except Malformed as exc:
                    raise IntegrityError(f"{path.name} line {lineno}: {exc}") from None
                if sub is not None and entry.sub != sub:
                    continue
                if room is not None and entry.room != room:
                    continue
                if action is not None and entry.action != action:
                    continue
                if start is not None or end is not None:
                    moment = entry.time
                    if (start is not None and moment < start) or (
                        end is not None and moment >= end
                    ):
                        continue
                yield entry


class CheckpointWitness(Protocol):
    """Where checkpoints (and entries) are copied off the machine
    (`signaling.witness.SyslogWitness`)."""

    def send(self, statement: dict[str, Any]) -> None:
        """Queue one signed checkpoint statement (count, head, ts, sig); never raises."""

    def send_entry(self, entry: AuditEntry) -> None:
        """Queue one entry just written (the sender decides what of it leaves); never raises."""

    def close(self) -> object:
        """Deliver what is queued (bounded wait), then stop."""


@dataclass(frozen=True, slots=True)
class _KnownHead:
    """The last line of the heads file."""

    count: int
    head: str
    ts: str
    sig: str
    closed: bool


def _holds_checkpoint(path: Path, statement: dict[str, Any]) -> bool:
    """Whether ``checkpoints.jsonl`` has a line that is exactly this signed statement."""
    wanted = canonical_json(statement) + b"\n"
    with path.open("rb") as file:
        return any(line == wanted for line in file)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _cut_partial_tail(path: Path) -> tuple[int, str] | None:
    """Cut bytes after the last newline (a write interrupted by a crash).

    Returns (bytes cut, their SHA-256) for the record, or None if the file ends cleanly.
    """
    _, end, size = read_tail(path)
    if end == size:
        return None
    with path.open("r+b") as file:
        file.seek(end)
        cut = file.read()
        file.truncate(end)
        file.flush()
        os.fsync(file.fileno())
    return len(cut), hashlib.sha256(cut).hexdigest()


def _recovery_note(path: Path, length: int, digest: str) -> dict[str, Any]:
    return {
        "reason": "partial_line_discarded",
        "file": path.name,
        "discarded_bytes": length,
        "discarded_sha256": digest,
    }


def _acquire_lock(path: Path) -> int:
    """Take the exclusive lock that keeps a second process from writing the same log."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        # flock, not lockf: it is held per open file, so a second AuditLog in the same
        # process is refused too, and the kernel drops it if the process dies.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"audit log {path.parent} is already open for writing (pid {holder}); "
            "only one process may write an audit log"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load audit signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key
