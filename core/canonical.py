"""Canonical JSON and UTC time stamps: the bytes that get signed and the times that get stored.

One canonical JSON, for everything that is hashed or signed (audit entries and checkpoints,
recording manifests, export bundle indexes): sorted keys, no spaces, UTF-8 as is, and no NaN or
Infinity, which are not JSON (a value holding one is a bug, refused with ValueError rather than
signed as something no other JSON reader accepts). Every signed document on disk was written with
exactly these bytes (none ever held a float that was not finite), so they all still verify.

The time stamps keep each stored format byte for byte, because they sit inside signed manifests
and audit logs already on disk: a helper per format, named by its precision and zone suffix,
each taking the moment (the caller owns the clock). `parse_stamp` reads them all back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def canonical_json(value: Any, *, ascii_only: bool = False) -> bytes:
    """`value` as canonical JSON bytes: sorted keys, `,` and `:` without spaces, UTF-8.

    `ascii_only` escapes non-ASCII characters as `\\uXXXX`; only the audit witness's syslog
    message uses it (its bytes have always been ASCII, and a SIEM may expect that). Raises
    ValueError for NaN or an infinity anywhere in `value`.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False
    ).encode()


def stamp_ms(moment: datetime) -> str:
    """`2026-11-25T10:00:00.123Z`: milliseconds, `Z`. Audit entries and annotation records."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamp_ms_offset(moment: datetime) -> str:
    """`2026-11-25T10:00:00.123+00:00`: milliseconds, `+00:00`. Recording manifests (their
    start, end and last write) and consent answers."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def stamp_s(moment: datetime) -> str:
    """`2026-11-25T10:00:00+00:00`: seconds, `+00:00`. Keyring entries and tombstones, legal
    holds and retention dates, export bundles."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def stamp_compact(moment: datetime) -> str:
    """`20261125T100000Z`: seconds, no separators. Part of recording ids (directory names)."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def parse_stamp(text: str) -> datetime:
    """Any of the stamps above (or another ISO 8601 time) as an aware UTC datetime; a time
    without a zone is taken as UTC. ValueError if it is not an ISO 8601 time."""
    return as_utc(datetime.fromisoformat(text))


def as_utc(moment: datetime) -> datetime:
    """A caller's time in UTC: a naive one is taken as UTC, an aware one converted."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
