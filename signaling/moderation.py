"""What a chair does to others in the room: mute, remove, and lock or open the lobby.

Pure (sans-IO), like `signaling/membership.py` whose effects it returns: the executor
(`signaling/rooms.py`) reads the record, or carries out the atomic removal, and hands the result
here. Permission to moderate is checked before (`membership.missing_action`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from core.codes import ErrorCode
from core.errors import PolicyDenied
from signaling import cluster
from signaling import protocol as p
from signaling.errors import close_code_of
from signaling.membership import (
    Actor,
    Audit,
    Broadcast,
    CloseRemote,
    Effect,
    Publish,
    RememberAdmitted,
    Reply,
    SaveParticipant,
    SaveRoom,
    participant_info,
    room_state,
)
from signaling.state.records import ParticipantRecord, RoomRecord


def mute(
    chair: Actor, record: ParticipantRecord | None, kind: Literal["audio", "video", "both"]
) -> list[Effect]:
    """A chair mutes someone's audio, video or both (they may unmute themselves); `record` is
    the participant as stored (None: not in the room)."""
    if record is None:
        return [Reply(p.Error(ErrorCode.NOT_FOUND, "no such participant", "mute"))]
    muted = dataclasses.replace(
        record,
        audio_muted=record.audio_muted or kind in ("audio", "both"),
        video_muted=record.video_muted or kind in ("video", "both"),
    )
    return [
        SaveParticipant(chair.room, muted),
        Audit(
            "mute", "allow", {"sub": muted.sub, "room": chair.room, "by": chair.sub, "kind": kind}
        ),
        # The media side listens for this event and stops forwarding the track.
        Publish(cluster.MuteMedia(room=chair.room, pid=muted.participant_id, kind=kind)),
        Broadcast(
            chair.room, p.ParticipantUpdated(participant_info(muted), by=chair.participant_id)
        ),
    ]


def remove(chair: Actor, participant_id: str, removed: ParticipantRecord | None) -> list[Effect]:
    """A chair removes someone (closed with 4403; they must be admitted again to come back);
    `removed` is what the store took out under that id (None: nobody)."""
    if removed is None:
        return [Reply(p.Error(ErrorCode.NOT_FOUND, "no such participant", "remove"))]
    return [
        RememberAdmitted(chair.room, removed.sub, False),
        Audit(
            "remove",
            "allow",
            {
                "sub": removed.sub,
                "room": chair.room,
                "by": chair.sub,
                "reason": "removed_by_chair",
            },
        ),
        Broadcast(chair.room, p.ParticipantLeft(participant_id, "removed")),
        CloseRemote(chair.room, participant_id, close_code_of(PolicyDenied), "removed"),
    ]


def update_room(
    chair: Actor, room: RoomRecord | None, *, lobby: bool | None, locked: bool | None
) -> list[Effect]:
    """A chair turns the lobby on or off, or locks or unlocks the room (None: unchanged)."""
    if room is None:
        return []
    changed = dataclasses.replace(
        room,
        lobby=room.lobby if lobby is None else lobby,
        locked=room.locked if locked is None else locked,
    )
    return [
        SaveRoom(changed),
        Audit(
            "room_updated",
            "info",
            {
                "sub": chair.sub,
                "room": changed.room_id,
                "lobby": changed.lobby,
                "locked": changed.locked,
            },
        ),
        Broadcast(changed.room_id, p.RoomUpdated(room_state(changed))),
    ]
