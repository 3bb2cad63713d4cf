"""What a room id may be: one rule for the wire, the folders on disk and the image store."""

from __future__ import annotations

import re

ROOM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

_ROOM_ID = re.compile(ROOM_ID_PATTERN)


def valid_room_id(room_id: str) -> bool:
    """True for 1-64 letters, digits, '.', '_' or '-' (not starting with '.', '_' or '-')."""
    return _ROOM_ID.match(room_id) is not None
