"""What a room id may be: one rule for the wire, the folders on disk and the image store."""

from __future__ import annotations

import re
import secrets

ROOM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

_ROOM_ID = re.compile(ROOM_ID_PATTERN)


def valid_room_id(room_id: str) -> bool:
    """True for 1-64 letters, digits, '.', '_' or '-' (not starting with '.', '_' or '-')."""
    return _ROOM_ID.match(room_id) is not None


def new_room_id() -> str:
    """A fresh room id for a room scheduled without one: 12 random URL-safe characters (72 bits)
    that pass `valid_room_id`. A URL-safe token starts with '-' or '_' one time in 32, which the
    rule refuses, so such a draw is thrown away and another taken."""
    while True:
        room_id = secrets.token_urlsafe(9)
        if valid_room_id(room_id):
            return room_id
