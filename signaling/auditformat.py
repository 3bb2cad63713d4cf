"""The audit log's lines: what an entry may hold, how it is hashed and chained, and how an entry
or a signed checkpoint is read back and checked (form, canonical bytes, signature).

Shared by the writer (`signaling.audit`, which also resumes from the tail of the files) and the
verifier (`signaling.auditverify`). Plain functions over bytes and paths' names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import canonical_json

GENESIS_HASH = "0" * 64
"""The `prev` of the first entry, and the head of an empty log."""
OUTCOMES = frozenset({"allow", "deny", "info", "error"})
"""What an entry says happened: a request allowed, a request denied, a plain event, or a
failure (a recording that stopped on a full disk)."""
FORBIDDEN_FIELDS = frozenset(
    {
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "authorization",
        "cookie",
        "password",
        "name",
        "display_name",
        "patient_name",
    }
)
"""Field names `AuditLog.append` refuses (compared case-insensitively): secrets and names."""


CHECKPOINTS_FILE = "checkpoints.jsonl"


_SEGMENT_NAME = re.compile(r"audit-(\d{6,})\.jsonl")
_ENTRY_KEYS = frozenset(
    {"seq", "ts", "action", "outcome", "sub", "room", "reason", "fields", "prev", "hash"}
)
_CHECKPOINT_KEYS = frozenset({"count", "head", "ts", "sig"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TOKEN_MARK = "<token>"
"""What a JWT-shaped part of a value is replaced with (the same mark as the server's logs)."""
# A JWT's header (and usually its payload) is base64url of '{"...', which always begins "eyJ".
# Two dot-separated parts are enough to count: a token cut short is still a token.
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){1,2}")


_TAIL_BLOCK = 8192


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit log."""

    seq: int
    """0-based position in the chain."""
    ts: str
    """UTC time, ISO-8601 with milliseconds and 'Z'."""
    action: str
    """What happened: "join", "join_refused", "admit", "revoke", "config_loaded", ..."""
    outcome: str
    """"allow", "deny", "info" or "error" (see `OUTCOMES`)."""
    sub: str | None
    """Subject the event concerns, if any."""
    room: str | None
    """Room the event concerns, if any."""
    reason: str | None
    """Why (a refusal's reason code, a revocation's cause), if any."""
    fields: dict[str, Any]
    """Other identifiers: jti, role, dept, node, ip, participant id..."""
    prev: str
    """Hex SHA-256 of the previous entry (its `hash`); `GENESIS_HASH` for the first."""
    hash: str
    """Hex SHA-256 of this entry's canonical JSON without the "hash" key."""

    def to_json(self) -> dict[str, Any]:
        """The entry as the JSON object written on its line."""
        return {
            "action": self.action,
            "fields": self.fields,
            "hash": self.hash,
            "outcome": self.outcome,
            "prev": self.prev,
            "reason": self.reason,
            "room": self.room,
            "seq": self.seq,
            "sub": self.sub,
            "ts": self.ts,
        }

    @property
    def time(self) -> datetime:
        """`ts` as an aware UTC datetime."""
        return datetime.fromisoformat(self.ts)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: at `ts` the log held `count` entries and its head was `head`."""

    count: int
    """Number of entries the checkpoint vouches for (entries 0 .. count-1)."""
    head: str
    """Hash of entry count-1 (`GENESIS_HASH` when count is 0)."""
    ts: str
    """UTC time of signing, same format as `AuditEntry.ts`."""
    sig: str
    """Base64 Ed25519 signature over the canonical JSON of {count, head, ts}."""


class Malformed(Exception):
    """A line that is not a well-formed entry or checkpoint; the message says why."""


def segment_name(number: int) -> str:
    """The file name of segment `number` (from 1), the only spelling `segment_paths` accepts."""
    return f"audit-{number:06d}.jsonl"


def segment_paths(directory: Path) -> list[tuple[int, Path]]:
    """The segment files in `directory`, by number."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _SEGMENT_NAME.fullmatch(name)
        # Only the exact spelling we write counts, so "audit-0000001.jsonl" can't pose as 1.
        if match and segment_name(int(match.group(1))) == name:
            found.append((int(match.group(1)), directory / name))
    return sorted(found)


def check_entry(
    action: str,
    outcome: str,
    sub: str | None,
    room: str | None,
    reason: str | None,
    fields: dict[str, Any],
) -> tuple[str | None, str | None, str | None, dict[str, Any]]:
    """Refuse what the caller must never ask the log to hold, before anything is written;
    return sub, room, reason and fields with anything token-shaped replaced."""
    if not isinstance(action, str) or not action:
        raise ValueError("audit action must be a non-empty string")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
    for label, text in (("sub", sub), ("room", room), ("reason", reason)):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"audit {label} must be a string or None")
    cleaned = {key: _clean_value(value, key) for key, value in fields.items()}
    for key in fields:
        _check_field_name(key, key)
    return _scrub_text(sub), _scrub_text(room), _scrub_text(reason), cleaned


def _check_field_name(key: str, where: str) -> None:
    if key.lower() in FORBIDDEN_FIELDS:
        raise ValueError(f"audit field {where!r} is refused: tokens and names are never logged")


def _scrub_text(text: str | None) -> str | None:
    if text is None or "eyJ" not in text:
        return text
    return _JWT_LIKE.sub(TOKEN_MARK, text)


def _clean_value(value: Any, where: str) -> Any:
    """The value with token-shaped text replaced; refuses (TypeError, ValueError) a value that
    would not survive a JSON round trip unchanged, so hashes re-verify."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit field {where!r} is not a finite number")
        return value
    if isinstance(value, list | tuple):
        return [_clean_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit field {where!r} has a non-string key {key!r}")
            _check_field_name(key, f"{where}.{key}")
            cleaned[_scrub_text(key) or key] = _clean_value(item, f"{where}.{key}")
        return cleaned
    raise TypeError(f"audit field {where!r} has type {type(value).__name__}, not JSON")


def entry_hash(entry: AuditEntry) -> str:
    """What `entry.hash` must be: SHA-256 of its canonical JSON without the "hash" key."""
    body = entry.to_json()
    del body["hash"]
    return hashlib.sha256(canonical_json(body)).hexdigest()


def decode_entry(raw: bytes) -> AuditEntry:
    """Parse one line (without its newline) into an entry; checks form, not the chain."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise Malformed("not JSON (garbage line)") from None
    if not isinstance(obj, dict) or obj.keys() != _ENTRY_KEYS:
        raise Malformed("not an audit entry (wrong keys)")
    seq, ts, fields = obj["seq"], obj["ts"], obj["fields"]
    if type(seq) is not int or seq < 0:
        raise Malformed("seq is not a non-negative integer")
    if not isinstance(ts, str) or not _TIMESTAMP.fullmatch(ts):
        raise Malformed("ts is not a UTC timestamp")
    if not isinstance(obj["action"], str) or obj["outcome"] not in OUTCOMES:
        raise Malformed("action or outcome malformed")
    if any(
        obj[key] is not None and not isinstance(obj[key], str) for key in ("sub", "room", "reason")
    ):
        raise Malformed("sub, room or reason is not a string")
    if not isinstance(fields, dict):
        raise Malformed("fields is not an object")
    for key in ("prev", "hash"):
        if not isinstance(obj[key], str) or not _HEX_DIGEST.fullmatch(obj[key]):
            raise Malformed(f"{key} is not a hex SHA-256")
    try:
        canonical = canonical_json(obj)
    except ValueError:  # NaN or infinity, or an escaped lone surrogate (not UTF-8)
        raise Malformed("not in canonical form (entry edited)") from None
    # Any byte changed without changing the parsed value (spacing, escapes, key order)
    # still counts as an edit.
    if canonical != raw:
        raise Malformed("not in canonical form (entry edited)")
    return AuditEntry(
        seq=seq,
        ts=ts,
        action=obj["action"],
        outcome=obj["outcome"],
        sub=obj["sub"],
        room=obj["room"],
        reason=obj["reason"],
        fields=fields,
        prev=obj["prev"],
        hash=obj["hash"],
    )


def decode_checkpoint(raw: bytes, public_key: Ed25519PublicKey) -> Checkpoint:
    """Parse one checkpoint line and check its signature."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
    except ValueError:
        raise Malformed("not JSON (garbage line)") from None
    if not isinstance(obj, dict) or obj.keys() != _CHECKPOINT_KEYS:
        raise Malformed("not a checkpoint (wrong keys)")
    count, head, ts, sig = obj["count"], obj["head"], obj["ts"], obj["sig"]
    if type(count) is not int or count < 0:
        raise Malformed("count is not a non-negative integer")
    if not isinstance(head, str) or not _HEX_DIGEST.fullmatch(head):
        raise Malformed("head is not a hex SHA-256")
    if not isinstance(ts, str) or not _TIMESTAMP.fullmatch(ts) or not isinstance(sig, str):
        raise Malformed("ts or sig malformed")
    try:
        canonical = canonical_json(obj)
    except ValueError:  # an escaped lone surrogate in sig (not UTF-8)
        raise Malformed("not in canonical form (checkpoint edited)") from None
    if canonical != raw:
        raise Malformed("not in canonical form (checkpoint edited)")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("signature is not base64") from None
    # Base64 has spare bits in its last character; only the one spelling we write is accepted.
    if base64.b64encode(signature).decode("ascii") != sig:
        raise Malformed("signature is not in canonical base64 (checkpoint edited)")
    statement = canonical_json({"count": count, "head": head, "ts": ts})
    try:
        public_key.verify(signature, statement)
    except InvalidSignature:
        raise Malformed("signature does not verify (forged, edited, or another key)") from None
    return Checkpoint(count=count, head=head, ts=ts, sig=sig)


def read_tail(path: Path) -> tuple[bytes | None, int, int]:
    """Read backwards from the end: (last complete line without its newline, or None;
    offset where complete lines end; file size)."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        buffer = b""
        position = size
        while position > 0:
            step = min(_TAIL_BLOCK, position)
            position -= step
            file.seek(position)
            buffer = file.read(step) + buffer
            last_newline = buffer.rfind(b"\n")
            if last_newline < 0:
                continue
            line_start = buffer.rfind(b"\n", 0, last_newline) + 1
            if line_start > 0 or position == 0:
                return buffer[line_start:last_newline], position + last_newline + 1, size
        return None, 0, size
