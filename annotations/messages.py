"""The data-channel schema of a room's annotations and chat, declared once.

What a client sends on `consilium-reliable` (`op`, `chat`, `receipt`, `sync`) and what the SFU
sends back (`event`, `snapshot`, `error`, `storage`), and the pointer positions on
`consilium-lossy`: msgspec Structs that both validate and document the messages
(`signaling/protocol_doc.py` writes `docs/protocol.md` from them). The rules that apply them live
in `annotations.authority`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

RELIABLE = "consilium-reliable"
"""The reliable, ordered data channel: ops, chat, receipts, syncs, and what they cause."""
LOSSY = "consilium-lossy"
"""The lossy data channel: pointer positions, relayed and never stored."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ImageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Frame = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Color = Annotated[str, msgspec.Meta(pattern="^#[0-9a-fA-F]{6}$")]
Layer = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Point = tuple[float, float]
ShapeType = Literal["arrow", "line", "ellipse", "rectangle", "freehand", "text", "measure"]


# -- client → SFU on consilium-reliable --------------------------------------------------------


class Shape(msgspec.Struct, frozen=True):
    """A shape as its author draws it. Coordinates are image pixels (x: column, y: row)."""

    id: Id
    type: ShapeType
    points: list[Point]
    text: str = ""
    color: Color = "#ff0000"
    layer: Layer = "default"


class AddOp(msgspec.Struct, frozen=True, tag_field="kind", tag="add"):
    """Add a shape (its `id` is the author's choice, unique per author)."""

    shape: Shape


class EditOp(msgspec.Struct, frozen=True, tag_field="kind", tag="edit", omit_defaults=True):
    """Change a shape: new points (a move), text or colour. The author's own shapes, or any with
    `moderate_annotations`. As stamped, a measurement's edit carries its new `length_mm`."""

    shape_id: Id
    points: list[Point] | None = None
    text: str | None = None
    color: Color | None = None
    length_mm: float | msgspec.UnsetType | None = msgspec.UNSET


class DeleteOp(msgspec.Struct, frozen=True, tag_field="kind", tag="delete"):
    """Delete a shape: its author, or anyone with `moderate_annotations` (the chair)."""

    shape_id: Id


class ClearOwnOp(msgspec.Struct, frozen=True, tag_field="kind", tag="clear_own"):
    """Delete all of the sender's shapes on the envelope's image and frame."""


class StampedShape(msgspec.Struct, frozen=True):
    """A shape as the SFU keeps it: the shape, where it is drawn, who drew it, and the sequence
    number of its last change. Measurements carry `length_mm` (null without pixel spacing)."""

    id: str
    type: str
    points: list[Point]
    text: str
    color: str
    layer: str
    image_id: str
    frame: int
    author: str
    seq: int
    length_mm: float | msgspec.UnsetType | None = msgspec.UNSET


class StampedAdd(msgspec.Struct, frozen=True, tag_field="kind", tag="add"):
    """An `add` as stamped: the shape with its author, place and sequence number."""

    shape: StampedShape


Op = AddOp | EditOp | DeleteOp | ClearOwnOp
StampedOp = StampedAdd | EditOp | DeleteOp | ClearOwnOp


class OpMessage(msgspec.Struct, frozen=True, tag_field="type", tag="op"):
    """An annotation operation on frame `frame` of shared image `image_id`; needs `annotate`.
    Any `author`, `seq` or `time` in it is ignored: the SFU stamps them."""

    image_id: ImageId
    frame: Frame
    op: Op
    client_id: Annotated[str, msgspec.Meta(max_length=64)] = ""


class ChatMessage(msgspec.Struct, frozen=True, tag_field="type", tag="chat"):
    """A chat message to the room (`to` empty) or to the named participants."""

    text: Annotated[str, msgspec.Meta(min_length=1)]
    to: list[Id] = []
    client_id: Annotated[str, msgspec.Meta(max_length=64)] = ""


class ReceiptMessage(msgspec.Struct, frozen=True, tag_field="type", tag="receipt"):
    """A recipient's own delivered/read receipt for the chat message stamped `seq`."""

    seq: Annotated[int, msgspec.Meta(ge=1)]
    state: Literal["delivered", "read"]


class SyncMessage(msgspec.Struct, frozen=True, tag_field="type", tag="sync"):
    """Ask for a snapshot (when the channel opens, and after a reconnect, `since: -1`); live
    events follow it from the snapshot's `seq + 1`."""

    since: int = -1


ClientMessage = OpMessage | ChatMessage | ReceiptMessage | SyncMessage


# -- SFU → client on consilium-reliable ----------------------------------------------------------


class Event(msgspec.Struct, frozen=True, tag_field="type", tag="event"):
    """One stamped event of the room, in sequence order. `kind` `op`: `image_id`, `frame`, `op`
    (as stamped); `chat`: `text`, `to` (sent only to its author and recipients, or everyone);
    `receipt`: `ref` (the chat's seq) and `state` (sent to the chat's author and the receipt's).
    In a snapshot, a chat message also carries the `receipts` its reader may see.
    `author_user` and `to_users` name the people (token subjects) behind the participant ids,
    so that someone who reconnects (a new participant id) still owns their shapes and still
    sees, and acknowledges, the private messages sent to them."""

    seq: int
    time: str
    author: str
    client_id: str
    kind: Literal["op", "chat", "receipt"]
    image_id: str | msgspec.UnsetType = msgspec.UNSET
    frame: int | msgspec.UnsetType = msgspec.UNSET
    op: StampedOp | msgspec.UnsetType = msgspec.UNSET
    text: str | msgspec.UnsetType = msgspec.UNSET
    to: list[str] | msgspec.UnsetType = msgspec.UNSET
    ref: int | msgspec.UnsetType = msgspec.UNSET
    state: str | msgspec.UnsetType = msgspec.UNSET
    receipts: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    author_user: str | msgspec.UnsetType = msgspec.UNSET
    to_users: list[str] | msgspec.UnsetType = msgspec.UNSET


class Snapshot(msgspec.Struct, frozen=True, tag_field="type", tag="snapshot"):
    """The room's state after sequence number `seq`: every shape, and the chat messages this
    participant may see (with their receipts). Live events follow from `seq + 1`."""

    seq: int
    shapes: list[StampedShape]
    chat: list[Event]


class ErrorMessage(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    """A refused message, to its sender only (nothing was stored or sent to anyone else).
    Codes: `bad_message`, `not_allowed`, `too_large`, `rate_limited`, `too_many_shapes`,
    `unknown_shape`, `unknown_image`."""

    code: str
    message: str
    client_id: str | None = None


class StorageNotice(msgspec.Struct, frozen=True, tag_field="type", tag="storage"):
    """To everyone in the room (and to a joiner while it lasts): `stored` false when the room's
    log cannot be written (the server's disk is full): annotations and chat are still delivered
    but not yet stored, `unwritten` of them wait in the server's memory; `stored` true when they
    have all been written. `lost`: records dropped because too many waited (none normally)."""

    stored: bool
    unwritten: int = 0
    lost: int = 0


ServerMessage = Snapshot | Event | ErrorMessage | StorageNotice


# -- consilium-lossy -------------------------------------------------------------------------------


class PointerMessage(msgspec.Struct, frozen=True, tag_field="type", tag="pointer"):
    """A pointer (laser) position; at most `pointer_per_s` per participant, extra ones dropped
    silently; relayed to the others, never stored. Needs `annotate`."""

    image_id: ImageId
    frame: Frame
    x: float
    y: float


class RelayedPointer(msgspec.Struct, frozen=True, tag_field="type", tag="pointer"):
    """A pointer position relayed to the other participants."""

    image_id: str
    frame: int
    x: float
    y: float
    from_: str = msgspec.field(name="from")


client_decoder = msgspec.json.Decoder(ClientMessage)
"""Decodes what a client sends on `consilium-reliable`."""
pointer_decoder = msgspec.json.Decoder(PointerMessage)
"""Decodes a pointer position from `consilium-lossy`."""
encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> str:
    """A message as the JSON text a data channel carries."""
    return encoder.encode(message).decode()


def error_text(code: str, message: str, client_id: str | None = None) -> str:
    """An `error` message as JSON text."""
    return encode(ErrorMessage(code=code, message=message, client_id=client_id))
