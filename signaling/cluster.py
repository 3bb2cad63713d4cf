"""The node-to-node events: what one signalling node tells every node (itself included).

Events travel as JSON objects through `StateStore.publish` (one Redis pub/sub channel when nodes
share a Redis, an in-process queue otherwise). Each kind is declared here once, typed, and both
encoded and decoded from here; `docs/protocol.md` documents them from these declarations.

The tag field is `"k"`, and the field names and their order are the ones the untyped dicts had:
the bytes on Redis are the same, so nodes of this version and the one before read each other's
events during a rolling upgrade (tests/test_cluster_events.py checks it byte for byte). The one
exception in shape is the revocation event, which predates the others and is tagged `"type"`; it
is declared apart (`Revoked`) and decoded by its tag.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

CHANNEL_DOC = "consilium:events"
"""What the docs call the Redis channel (its real name carries the store's key prefix)."""

REVOKED_EVENT = "state.revoked"
"""The `type` of the revocation event (`Revoked`)."""


class NodeEvent(msgspec.Struct, tag_field="k", frozen=True):
    """One event a node publishes to every node, tagged by `k`."""


class RoomMessage(NodeEvent, tag="room", frozen=True, kw_only=True):
    """Deliver one server message to the room's connections on every node, in publication order
    (every participant sees a room's events in the order they happened)."""

    room: str
    """The room id."""
    to: str
    """Who gets it: `all` (everyone joined), `admitters` (those who may admit), or one
    participant id."""
    exclude: str | None = None
    """A participant id that does not get it (the one the message is about), or null."""
    msg: str
    """The server message, already encoded as JSON text."""


class CloseConnection(NodeEvent, tag="close", frozen=True):
    """The node holding this participant's connection cleans up after it and closes it."""

    room: str
    """The room id (a connection in another room with the same id is left alone)."""
    pid: str
    """The participant id."""
    code: int
    """The WebSocket close code (4403 denied or removed, 4409 replaced...)."""
    reason: str
    """The close reason (`denied`, `removed`, `replaced`)."""


class Admitted(NodeEvent, tag="admit", frozen=True):
    """A chair admitted someone from the lobby: the node holding their connection lets them in."""

    room: str
    """The room id."""
    pid: str
    """The admitted participant's id."""
    by: str
    """The `sub` of the chair who admitted them (for the audit entry of the join)."""


class MuteMedia(NodeEvent, tag="mute", frozen=True):
    """A chair muted someone: the node hosting their media stops forwarding the track."""

    room: str
    """The room id."""
    pid: str
    """The muted participant's id."""
    kind: Literal["audio", "video", "both"]
    """Which of their media."""


MediaOp = Literal[
    "join", "leave", "offer", "answer", "candidate", "restart_ice", "mute", "rec", "render_sizes"
]
"""The media operations a `MediaRequest` names."""


class MediaRequest(NodeEvent, tag="media", frozen=True, kw_only=True):
    """A media operation for the node hosting the room's media (a participant whose signalling
    connection is on another node has its SDP and ICE relayed there). `op` names the operation;
    the fields it needs are present, the others absent."""

    node: str
    """The node that must carry it out (the room's media node)."""
    op: MediaOp
    """The operation."""
    room: str | msgspec.UnsetType = msgspec.UNSET
    """`join`: the room id."""
    permissions: list[str] | msgspec.UnsetType = msgspec.UNSET
    """`join`: the participant's permissions in the room."""
    audio_muted: bool | msgspec.UnsetType = msgspec.UNSET
    """`join`: whether they join muted."""
    video_muted: bool | msgspec.UnsetType = msgspec.UNSET
    """`join`: whether they join with video off."""
    user: str | msgspec.UnsetType = msgspec.UNSET
    """`join`: their `sub`."""
    name: str | msgspec.UnsetType = msgspec.UNSET
    """`join`: their display name (for the recording's manifest)."""
    role: str | msgspec.UnsetType = msgspec.UNSET
    """`join`: their role (for the recording's manifest)."""
    depts: list[str] | msgspec.UnsetType = msgspec.UNSET
    """`join`: their departments (for the recording's manifest)."""
    org: str | msgspec.UnsetType = msgspec.UNSET
    """`join`: their organisation (for the recording's manifest)."""
    pc: str | msgspec.UnsetType = msgspec.UNSET
    """`offer`, `answer`, `candidate`, `restart_ice`: which media session (`publish` or
    `subscribe`)."""
    sdp: str | msgspec.UnsetType = msgspec.UNSET
    """`offer`, `answer`: the SDP."""
    screen: list[str] | msgspec.UnsetType = msgspec.UNSET
    """`offer`: media ids that carry a screen share."""
    candidate: str | msgspec.UnsetType = msgspec.UNSET
    """`candidate`: the ICE candidate (empty: end of gathering)."""
    sdp_mid: str | msgspec.UnsetType | None = msgspec.UNSET
    """`candidate`: its media id."""
    sdp_mline_index: int | msgspec.UnsetType | None = msgspec.UNSET
    """`candidate`: its m-line index."""
    kind: str | msgspec.UnsetType = msgspec.UNSET
    """`mute`: `audio` or `video`."""
    muted: bool | msgspec.UnsetType = msgspec.UNSET
    """`mute`: muted or not."""
    action: str | msgspec.UnsetType = msgspec.UNSET
    """`rec`: the recording request's message type (`hello` when joining)."""
    fields: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    """`rec`: the recording request's fields."""
    sizes: dict[str, list[int]] | msgspec.UnsetType = msgspec.UNSET
    """`render_sizes`: the size each subscribed video is shown at, by media id (device pixels,
    `[0, 0]`: hidden), as the client sent it (validated there)."""
    pid: str
    """The participant it is for."""
    origin: str
    """The node holding the participant's signalling connection (replies go there)."""


class MediaOut(NodeEvent, tag="media_out", frozen=True):
    """The SFU has something for a participant whose signalling connection is on another node:
    that node sends it on."""

    node: str
    """The node holding the participant's connection."""
    pid: str
    """The participant id."""
    msg: dict[str, Any]
    """The SFU's notification (`type`: `offer`, `answer`, `tracks`, `error` or `message`)."""


class RoomOpened(NodeEvent, tag="room_opened", frozen=True):
    """A chair opened the room: every node lets in (or moves to the lobby) those waiting for it."""

    room: str
    """The room id."""


class MeetingEnded(NodeEvent, tag="meeting_ended", frozen=True):
    """The meeting in this room ended (`signaling.ending`): every node closes its connections
    in the room, joined and waiting, with 4411 and `reason`."""

    room: str
    """The room id."""
    reason: str
    """The close reason (`ended by the chair` or `meeting ended`)."""


class MediaMoved(NodeEvent, tag="media_moved", frozen=True, kw_only=True):
    """The node hosting this room's media died (`signaling.liveness`) or is draining
    (`signaling.http.drain`), and the room's media now lives on `to`: every node moves its
    connections in the room whose media was on `gone` there (they join the new node's SFU, and
    their clients are told to open new media sessions). Sent by each node that cleaned up after
    the dead one, or by the draining node; a connection already moved is left alone."""

    room: str
    """The room id."""
    gone: str
    """The node that hosted the room's media (dead, or draining)."""
    to: str
    """The node that claimed it."""
    why: Literal["node_lost", "drain"] = "node_lost"
    """`node_lost`: `gone` died; `drain`: it is stopping and moved its rooms first."""


class Revoked(msgspec.Struct, tag_field="type", tag=REVOKED_EVENT, frozen=True):
    """A token or an identity was revoked: every node updates its copy of the revocations and
    drops the connections it covers (4401). Tagged `type`, not `k` (it is older than the rest)."""

    revocation: dict[str, Any]
    """The revocation: `kind` (`jti` or `sub`), `value`, `reason`, `by`, `at`, `expires_at`, and
    `lifted: true` when it withdraws the revocation of the same key (a SCIM re-activation)."""


Event = (
    RoomMessage | CloseConnection | Admitted | MuteMedia | MediaRequest | MediaOut | RoomOpened
    | MeetingEnded | MediaMoved
)  # fmt: skip
"""Every event tagged `k`."""

ALL_EVENTS: tuple[type[msgspec.Struct], ...] = (*Event.__args__, Revoked)
"""Every node-to-node event, in the order the docs list them."""

_decode_event_tag = {cls.__struct_config__.tag: cls for cls in Event.__args__}


def to_wire(event: NodeEvent | Revoked) -> dict[str, Any]:
    """The JSON object the store publishes for `event` (absent fields left out)."""
    wire: dict[str, Any] = msgspec.to_builtins(event)
    return wire


def from_wire(obj: dict[str, Any]) -> NodeEvent | Revoked | None:
    """The typed event of a published JSON object; None for an object of no kind declared here
    (another version's new event, or something else on the channel), which nodes ignore.

    Raises msgspec.ValidationError for a known kind with missing or mistyped fields."""
    if obj.get("type") == REVOKED_EVENT:
        return msgspec.convert(obj, Revoked)
    cls = _decode_event_tag.get(obj.get("k"))
    if cls is None:
        return None
    event: NodeEvent = msgspec.convert(obj, Event)
    return event
