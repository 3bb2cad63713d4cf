"""Shared annotations and chat of a room: the ordering authority, sans-IO.

The SFU hosts a room's media on one node, so it is the one place that orders what is drawn and
said in the room. A client sends an operation (`op`, `chat`, `receipt`, `sync`) as JSON text on
its reliable data channel; `RoomAnnotations.handle` checks it (schema, bounds, permission), stamps
the room's next sequence number, the author (from the connection, never from the message) and the
server time, appends the stamped event to the room's log, applies it to the state and returns who
receives what. Clients apply events in sequence order on top of a `snapshot`, so they all converge.
Pointer positions (`consilium-lossy`) are rate-limited and relayed, never stored.

`AnnotationLog` keeps each room's events on disk, append-only, each record sealed on its own with
AES-256-GCM under the room's data key: no annotation or chat text touches disk in the clear. A
write that fails (a full disk) never reaches the participants: the event is still stamped and
delivered, its record waits in memory (bounded) and is written when space returns, and the room
is told (`storage`) that what it draws and says is not being stored, then that it is again.

Nothing here touches the event loop or a socket: `sfu.session` moves the text.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.actions import Action
from core.imageref import ImageRef

if TYPE_CHECKING:
    from sfu.room import MediaSettings

log = logging.getLogger("consilium.sfu.annotations")

RELIABLE = "consilium-reliable"
LOSSY = "consilium-lossy"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ImageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Frame = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Color = Annotated[str, msgspec.Meta(pattern="^#[0-9a-fA-F]{6}$")]
Layer = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Point = tuple[float, float]
ShapeType = Literal["arrow", "line", "ellipse", "rectangle", "freehand", "text", "measure"]

MAX_COORDINATE = 1e6
"""Largest absolute coordinate accepted (pixels); also rules out infinities."""

TWO_POINT_SHAPES = frozenset({"arrow", "line", "ellipse", "rectangle", "measure"})


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


_client_decoder = msgspec.json.Decoder(ClientMessage)
_pointer_decoder = msgspec.json.Decoder(PointerMessage)
_event_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class AnnotationError(Exception):
    """A message refused; `code` is its wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LogError(Exception):
    """An annotation log that cannot be read back (not a torn last record): names the seq."""


Recipients = tuple[str, ...] | None
"""Participant ids a message goes to; None: every participant in the room."""


class Delivery(NamedTuple):
    """One message (JSON text) for the reliable channel, and who receives it."""

    recipients: Recipients
    text: str
    kind: Literal["event", "snapshot", "error", "notice"]
    """A stamped `event` goes to synced participants only (the others get it in their
    snapshot); a `snapshot` or an `error` to its requester, synced or not; a `notice` (not
    stamped, not recorded) to its recipients, synced or not."""
    author: str
    """Who caused it (the sender, from the connection)."""


@dataclass(slots=True)
class TokenBucket:
    """`rate` per second on average, `burst` at once."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        """One token if there is one."""
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class ChatRecord:
    """A chat message and each recipient's receipt (`delivered` or `read`)."""

    event: Event
    receipts: dict[str, str] = field(default_factory=dict)


def utc_now() -> str:
    """Server time, ISO-8601 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def measure_length_mm(points: list[Point], spacing: tuple[float, float] | None) -> float | None:
    """Length of a two-point measurement in mm; spacing is (row mm, column mm)."""
    if spacing is None or len(points) != 2:
        return None
    (x0, y0), (x1, y1) = points
    return round(math.hypot((x1 - x0) * spacing[1], (y1 - y0) * spacing[0]), 3)


class RoomAnnotations:
    """A room's annotations and chat: validates, stamps, applies, says who receives what."""

    def __init__(
        self,
        room_id: str,
        settings: MediaSettings,
        image_info: Callable[[str, str], ImageRef | None] | None = None,
        log_file: AnnotationLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = utc_now,
    ) -> None:
        self.room_id = room_id
        self.settings = settings
        self.image_info = image_info
        self.log = log_file
        self.clock = clock
        self.wall_clock = wall_clock
        self.seq = 0
        """The last stamped sequence number."""
        self.shapes: dict[tuple[str, int, str], StampedShape] = {}
        """Shapes by (image, frame, shape id), in the order they were added."""
        self.shapes_per_image: dict[str, int] = {}
        self.chat: dict[int, ChatRecord] = {}
        """Chat messages by their seq."""
        self.users: dict[str, str] = {}
        """The person (token subject) behind each participant id, old connections included."""
        self._buckets: dict[str, TokenBucket] = {}
        self._pointer_buckets: dict[str, TokenBucket] = {}
        self.storing = True
        """What the room was last told (`StorageNotice`): whether its log is being written."""
        if log_file is not None:
            for event in log_file.replay():
                self.apply(event)

    # -- people -------------------------------------------------------------------------------

    def identify(self, participant_id: str, user: str) -> None:
        """`participant_id` is `user` (the token's subject): called when they join."""
        self.users[participant_id] = user

    def same_person(self, a: str, b: str) -> bool:
        """Whether two participant ids are one person (the same connection, or a reconnect)."""
        user = self.users.get(a)
        return a == b or (user is not None and user == self.users.get(b))

    def visible_to(self, record: ChatRecord, participant_id: str) -> bool:
        """Room-wide chat, or its author, or one of its recipients (by person)."""
        to = record.event.to
        if not to or self.same_person(participant_id, record.event.author):
            return True
        return any(self.same_person(participant_id, r) for r in to)

    def _everyone_who_is(self, participant_ids: list[str]) -> list[str]:
        """These participant ids and every other id of the same people (their reconnects)."""
        users = {self.users[p] for p in participant_ids if p in self.users}
        return [*participant_ids, *(p for p, u in self.users.items() if u in users)]

    # -- the reliable channel -----------------------------------------------------------------

    def handle(self, sender: str, permissions: frozenset[str], raw: str) -> list[Delivery]:
        """One message from `sender`'s reliable channel: the deliveries it causes, in order.
        Hot path, per annotation op: watched by bench/annotations.py."""
        client_id: str | None = None
        try:
            if len(raw) > self.settings.annotation_max_bytes or (
                len(raw.encode()) > self.settings.annotation_max_bytes
            ):
                raise AnnotationError("too_large", "message larger than the bound")
            try:
                message = _client_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                client_id = _loose_client_id(raw)
                raise AnnotationError("bad_message", str(exc)) from None
            if not isinstance(message, ReceiptMessage | SyncMessage):
                client_id = message.client_id
            bucket = self._buckets.get(sender)
            if bucket is None:
                bucket = self._buckets[sender] = TokenBucket(
                    self.settings.annotation_ops_per_s, self.settings.annotation_burst
                )
            if not bucket.take(self.clock()):
                raise AnnotationError("rate_limited", "too many messages per second")
            if isinstance(message, SyncMessage):
                snapshot = _encoder.encode(self.snapshot(sender)).decode()
                deliveries = [Delivery((sender,), snapshot, "snapshot", sender)]
                if self.log is not None and not self.log.stored:
                    deliveries.append(self.storage_notice((sender,)))
                return deliveries
            if isinstance(message, OpMessage):
                event = self._stamp_op(sender, permissions, message)
            elif isinstance(message, ChatMessage):
                event = self._stamp_chat(sender, message)
            else:
                stamped = self._stamp_receipt(sender, message)
                if stamped is None:
                    return []  # nothing new: the receipt was already at that state
                event = stamped
        except AnnotationError as exc:
            error = ErrorMessage(code=exc.code, message=str(exc), client_id=client_id)
            return [Delivery((sender,), _encoder.encode(error).decode(), "error", sender)]
        text = _encoder.encode(event).decode()
        deliveries = [Delivery(self.recipients(event), text, "event", sender)]
        if self.log is not None:
            self.log.append(event.seq, text.encode())  # never raises: see AnnotationLog
            if self.log.stored != self.storing:
                deliveries.append(self.storage_notice())
        self.apply(event)
        return deliveries

    def storage_notice(self, recipients: Recipients = None) -> Delivery:
        """Tell the room (or `recipients`) whether its log is being written (`StorageNotice`)."""
        log_file = self.log
        assert log_file is not None
        if recipients is None:
            self.storing = log_file.stored
        notice = StorageNotice(log_file.stored, len(log_file.unwritten), log_file.lost)
        return Delivery(recipients, _encoder.encode(notice).decode(), "notice", "")

    def retry_storage(self, force: bool = False) -> list[Delivery]:
        """Write what a full disk held back (see `AnnotationLog.retry`); when it all went, the
        notice that tells the room so."""
        if self.log is None:
            return []
        self.log.retry(force)
        return [self.storage_notice()] if self.log.stored != self.storing else []

    def recipients(self, event: Event) -> Recipients:
        """Who receives a stamped event: everyone for ops and room-wide chat; a private chat's
        author and recipients; a receipt's author and the chat's author."""
        if event.kind == "op":
            return None
        if event.kind == "chat":
            to = event.to if isinstance(event.to, list) else []
            return (
                None if not to else tuple(dict.fromkeys(self._everyone_who_is([event.author, *to])))
            )
        assert isinstance(event.ref, int)
        chat_author = self.chat[event.ref].event.author
        return tuple(dict.fromkeys(self._everyone_who_is([chat_author, event.author])))

    def _stamp(self, sender: str, client_id: str, kind: Any, **fields: Any) -> Event:
        user = self.users.get(sender)
        if user is not None:
            fields["author_user"] = user
        return Event(seq=self.seq + 1, time=self.wall_clock(), author=sender,
                     client_id=client_id, kind=kind, **fields)  # fmt: skip

    def _stamp_op(self, sender: str, permissions: frozenset[str], message: OpMessage) -> Event:
        if Action.ANNOTATE not in permissions:
            raise AnnotationError("not_allowed", "annotating needs the annotate permission")
        op = message.op
        where = (message.image_id, message.frame)
        stamped: StampedOp
        if isinstance(op, AddOp):
            image = self._image(message.image_id, message.frame)
            shape = op.shape
            self._check_shape(shape.type, shape.points, shape.text)
            if (*where, shape.id) in self.shapes:
                raise AnnotationError("bad_message", f"shape {shape.id!r} exists already")
            if self.shapes_per_image.get(message.image_id, 0) >= (
                self.settings.annotation_max_shapes_per_image
            ):
                raise AnnotationError("too_many_shapes", "this image has as many shapes as allowed")
            length: float | msgspec.UnsetType | None = msgspec.UNSET
            if shape.type == "measure":
                length = measure_length_mm(shape.points, image.pixel_spacing_mm)
            stamped = StampedAdd(StampedShape(
                id=shape.id, type=shape.type, points=shape.points, text=shape.text,
                color=shape.color, layer=shape.layer, image_id=message.image_id,
                frame=message.frame, author=sender, seq=self.seq + 1, length_mm=length,
            ))  # fmt: skip
        elif isinstance(op, EditOp | DeleteOp):
            current = self.shapes.get((*where, op.shape_id))
            if current is None:
                raise AnnotationError("unknown_shape", f"no shape {op.shape_id!r} there")
            if not self.same_person(current.author, sender) and (
                "moderate_annotations" not in permissions
            ):
                raise AnnotationError("not_allowed", "only its author or the chair may change it")
            stamped = op
            if isinstance(op, EditOp):
                if op.points is None and op.text is None and op.color is None:
                    raise AnnotationError("bad_message", "an edit changes points, text or colour")
                if op.text is not None and current.type != "text":
                    raise AnnotationError("bad_message", "only a text shape has text")
                points = op.points if op.points is not None else current.points
                self._check_shape(current.type, points, op.text or "")
                if current.type == "measure" and op.points is not None:
                    spacing = self._image(message.image_id, message.frame).pixel_spacing_mm
                    stamped = msgspec.structs.replace(
                        op, length_mm=measure_length_mm(points, spacing)
                    )
        else:
            stamped = op
        return self._stamp(sender, message.client_id, "op", image_id=message.image_id,
                           frame=message.frame, op=stamped)  # fmt: skip

    def _image(self, image_id: str, frame: int) -> ImageRef:
        image = self.image_info(self.room_id, image_id) if self.image_info is not None else None
        if image is None or frame >= image.frames:
            raise AnnotationError("unknown_image", f"no frame {frame} of image {image_id!r} here")
        return image

    def _check_shape(self, kind: str, points: list[Point], text: str) -> None:
        count = len(points)
        if kind in TWO_POINT_SHAPES and count != 2:
            raise AnnotationError("bad_message", f"a {kind} has exactly 2 points")
        if kind == "text" and count != 1:
            raise AnnotationError("bad_message", "a text has exactly 1 point")
        if kind == "freehand":
            if count < 2:
                raise AnnotationError("bad_message", "a freehand stroke has at least 2 points")
            if count > self.settings.annotation_max_points:
                raise AnnotationError("too_large", "more points than a stroke may have")
        if kind != "text" and text:
            raise AnnotationError("bad_message", "only a text shape has text")
        if len(text) > self.settings.annotation_max_text_chars:
            raise AnnotationError("too_large", "text longer than the bound")
        for x, y in points:
            if not (abs(x) <= MAX_COORDINATE and abs(y) <= MAX_COORDINATE):
                raise AnnotationError("bad_message", "coordinates must be finite image pixels")

    def _stamp_chat(self, sender: str, message: ChatMessage) -> Event:
        if len(message.text) > self.settings.chat_max_chars:
            raise AnnotationError("too_large", "chat message longer than the bound")
        to = list(dict.fromkeys(message.to))
        fields: dict[str, Any] = {"text": message.text, "to": to}
        if to and all(r in self.users for r in to):
            fields["to_users"] = [self.users[r] for r in to]
        return self._stamp(sender, message.client_id, "chat", **fields)

    def _stamp_receipt(self, sender: str, message: ReceiptMessage) -> Event | None:
        record = self.chat.get(message.seq)
        if record is None:
            raise AnnotationError("bad_message", f"no chat message {message.seq}")
        if self.same_person(sender, record.event.author) or not self.visible_to(record, sender):
            raise AnnotationError("not_allowed", "only a recipient sets its own receipt")
        current = self._receipt_of(record, sender)
        if current == message.state or current == "read":
            return None  # monotonic: read implies delivered, and nothing goes back
        return self._stamp(sender, "", "receipt", ref=message.seq, state=message.state)

    # -- state ----------------------------------------------------------------------------------

    def _receipt_of(self, record: ChatRecord, participant_id: str) -> str | None:
        """This person's receipt of a chat message (from any of their connections)."""
        states = [s for p, s in record.receipts.items() if self.same_person(p, participant_id)]
        return "read" if "read" in states else (states[0] if states else None)

    def apply(self, event: Event) -> None:
        """Apply a stamped event to the state (live, or replayed from the log)."""
        self.seq = event.seq
        # Who was who, so that a restarted room still knows its people's older connections.
        if isinstance(event.author_user, str):
            self.users.setdefault(event.author, event.author_user)
        if isinstance(event.to_users, list) and isinstance(event.to, list):
            for participant_id, user in zip(event.to, event.to_users, strict=False):
                self.users.setdefault(participant_id, user)
        if event.kind == "chat":
            self.chat[event.seq] = ChatRecord(event)
            return
        if event.kind == "receipt":
            assert isinstance(event.ref, int) and isinstance(event.state, str)
            record = self.chat.get(event.ref)
            if record is not None:
                record.receipts[event.author] = event.state
            return
        assert isinstance(event.image_id, str) and isinstance(event.frame, int)
        op = event.op
        if isinstance(op, StampedAdd):
            self.shapes[(event.image_id, event.frame, op.shape.id)] = op.shape
            self.shapes_per_image[event.image_id] = self.shapes_per_image.get(event.image_id, 0) + 1
        elif isinstance(op, DeleteOp):
            self._remove((event.image_id, event.frame, op.shape_id))
        elif isinstance(op, ClearOwnOp):
            for key, shape in list(self.shapes.items()):
                if key[:2] == (event.image_id, event.frame) and self.same_person(
                    shape.author, event.author
                ):
                    self._remove(key)
        elif isinstance(op, EditOp):
            key = (event.image_id, event.frame, op.shape_id)
            shape = self.shapes[key]
            changes: dict[str, Any] = {"seq": event.seq}
            if op.points is not None:
                changes["points"] = op.points
            if op.text is not None:
                changes["text"] = op.text
            if op.color is not None:
                changes["color"] = op.color
            if op.length_mm is not msgspec.UNSET:
                changes["length_mm"] = op.length_mm
            self.shapes[key] = msgspec.structs.replace(shape, **changes)

    def _remove(self, key: tuple[str, int, str]) -> None:
        if self.shapes.pop(key, None) is not None:
            self.shapes_per_image[key[0]] -= 1

    def snapshot(self, participant_id: str) -> Snapshot:
        """The state after `self.seq` as `participant_id` may see it: every shape, and the chat
        messages addressed to them (with all receipts if theirs, else their own receipt)."""
        chat = []
        for record in self.chat.values():
            if not self.visible_to(record, participant_id):
                continue
            receipts = record.receipts
            if not self.same_person(participant_id, record.event.author):
                own = self._receipt_of(record, participant_id)
                receipts = {participant_id: own} if own else {}
            chat.append(msgspec.structs.replace(record.event, receipts=dict(receipts)))
        return Snapshot(seq=self.seq, shapes=list(self.shapes.values()), chat=chat)

    # -- the lossy channel --------------------------------------------------------------------

    def pointer(self, sender: str, permissions: frozenset[str], raw: str) -> str | None:
        """A pointer position from `sender`: the text to relay to the others, or None when it is
        dropped (over `pointer_per_s`, or no `annotate`). A malformed one raises
        `AnnotationError`."""
        if len(raw) > 512:
            raise AnnotationError("too_large", "pointer message larger than the bound")
        try:
            message = _pointer_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise AnnotationError("bad_message", str(exc)) from None
        if not (abs(message.x) <= MAX_COORDINATE and abs(message.y) <= MAX_COORDINATE):
            raise AnnotationError("bad_message", "coordinates must be finite image pixels")
        if Action.ANNOTATE not in permissions:
            return None
        bucket = self._pointer_buckets.get(sender)
        if bucket is None:
            rate = self.settings.pointer_per_s
            bucket = self._pointer_buckets[sender] = TokenBucket(rate, max(1.0, rate / 10))
        if not bucket.take(self.clock()):
            return None
        relayed = RelayedPointer(image_id=message.image_id, frame=message.frame, x=message.x,
                                 y=message.y, from_=sender)  # fmt: skip
        return _encoder.encode(relayed).decode()

    def forget(self, participant_id: str) -> None:
        """A participant left: drop their rate-limit state."""
        self._buckets.pop(participant_id, None)
        self._pointer_buckets.pop(participant_id, None)

    def close(self) -> None:
        """Sync and close the log."""
        if self.log is not None:
            self.log.close()


def error_text(code: str, message: str, client_id: str | None = None) -> str:
    """An `error` message as JSON text."""
    return _encoder.encode(ErrorMessage(code=code, message=message, client_id=client_id)).decode()


def _loose_client_id(raw: str) -> str | None:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    client_id = value.get("client_id") if isinstance(value, dict) else None
    return client_id if isinstance(client_id, str) and len(client_id) <= 64 else None


# -- the log on disk ---------------------------------------------------------------------------

LENGTH_BYTES = 4
NONCE_BYTES = 12
FSYNC_INTERVAL_S = 0.1
"""Each record is flushed to the OS at once (a crashed process loses nothing), but fsynced at most
every 100 ms (and on close): an fsync per op would cap a room at a few hundred ops/s on ordinary
disks, and a power cut then loses at most the last ~100 ms of drawing."""
RETRY_INTERVAL_S = 1.0
"""While the disk is full, held-back records are tried again at most this often."""
MAX_UNWRITTEN_BYTES = 16 * 1024 * 1024
"""Sealed records held in memory while the disk is full; beyond this the oldest are dropped
(counted in `lost`). 16 MiB is tens of thousands of chat messages or shapes."""


def log_path(data_dir: Path, room_id: str) -> Path:
    """Where a room's annotation log lives."""
    if not room_id or "/" in room_id or "\\" in room_id or room_id in (".", ".."):
        raise ValueError(f"room id {room_id!r} cannot name a folder")
    return data_dir / "rooms" / room_id / "annotations.log"


class AnnotationLog:
    """A room's append-only event log, each record AES-256-GCM-sealed on its own.

    Record: 4-byte big-endian length, then a 12-byte nonce (4 random bytes + the 8-byte seq) and
    the ciphertext of the stamped event's JSON, with the room id and the seq as associated data
    (a record cannot be moved to another room or position unnoticed).
    """

    def __init__(
        self, path: Path, room_id: str, key: bytes, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.room_id = room_id
        self._aead = AESGCM(key)
        self._clock = clock
        self._last_fsync = 0.0
        self.dirty = False
        """Records flushed but not yet fsynced."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._valid_end = 0
        self._events = list(self._read())
        # Unbuffered: a write that fails leaves nothing behind in a buffer to be written later.
        self._file = open(path, "r+b" if path.exists() else "w+b", buffering=0)
        if self._valid_end < self._file.seek(0, os.SEEK_END):
            self._file.truncate(self._valid_end)  # the torn record goes: appends follow good ones
        self._file.seek(self._valid_end)
        self._end = self._valid_end
        """Where the next record goes: the end of the last one written in full."""
        self.unwritten: deque[bytes] = deque()
        """Sealed records a write failure held back, in order (written before any newer one)."""
        self._unwritten_bytes = 0
        self.lost = 0
        """Records dropped because more than `MAX_UNWRITTEN_BYTES` waited."""
        self._last_try = 0.0

    def _aad(self, seq: int) -> bytes:
        return self.room_id.encode() + b"\0" + seq.to_bytes(8, "big")

    def _read(self) -> Iterator[Event]:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos, expected = 0, 1
        while pos < len(data):
            if pos + LENGTH_BYTES > len(data):
                break
            length = int.from_bytes(data[pos : pos + LENGTH_BYTES], "big")
            end = pos + LENGTH_BYTES + length
            if end > len(data):
                break
            record = data[pos + LENGTH_BYTES : end]
            if length < NONCE_BYTES + 16:
                raise LogError(f"{self.path}: record {expected} is malformed")
            seq = int.from_bytes(record[4:NONCE_BYTES], "big")
            if seq != expected:
                raise LogError(f"{self.path}: record {expected} carries seq {seq}")
            try:
                plain = self._aead.decrypt(record[:NONCE_BYTES], record[NONCE_BYTES:],
                                           self._aad(seq))  # fmt: skip
                event = _event_decoder.decode(plain)
            except (InvalidTag, msgspec.DecodeError):
                raise LogError(f"{self.path}: record {seq} fails authentication") from None
            yield event
            pos, expected = end, expected + 1
            self._valid_end = pos
        if pos < len(data):
            log.warning("annotation log ends with a torn record; ignored",
                        extra={"path": str(self.path), "seq": expected})  # fmt: skip

    def replay(self) -> list[Event]:
        """Every event read back when the log was opened, in order."""
        events, self._events = self._events, []
        return events

    @property
    def stored(self) -> bool:
        """Whether no record is held back (every one appended is on disk, or `lost`)."""
        return not self.unwritten

    def append(self, seq: int, plaintext: bytes) -> None:
        """Seal and write one record; written at once, fsynced at most every 100 ms. Never
        raises on a write error: the record is held back (see `retry`) and `stored` is False."""
        nonce = secrets.token_bytes(4) + seq.to_bytes(8, "big")
        sealed = nonce + self._aead.encrypt(nonce, plaintext, self._aad(seq))
        record = len(sealed).to_bytes(LENGTH_BYTES, "big") + sealed
        if self.unwritten:
            self._hold(record)
            self.retry()
            return
        try:
            self._write(record)
        except OSError as error:
            self._hold(record)
            self._last_try = self._clock()
            log.error("annotation log not written; held in memory",
                      extra={"path": str(self.path), "error": error.strerror})  # fmt: skip
            return
        if self._clock() - self._last_fsync >= FSYNC_INTERVAL_S:
            self.sync()

    def retry(self, force: bool = False) -> None:
        """Write the held-back records, oldest first, stopping at the first that fails; at
        most every `RETRY_INTERVAL_S` unless `force`d."""
        now = self._clock()
        if not self.unwritten or (not force and now - self._last_try < RETRY_INTERVAL_S):
            return
        self._last_try = now
        while self.unwritten:
            try:
                self._write(self.unwritten[0])
            except OSError:
                return
            self._unwritten_bytes -= len(self.unwritten.popleft())
        log.info("annotation log written again", extra={"path": str(self.path)})

    def _hold(self, record: bytes) -> None:
        self.unwritten.append(record)
        self._unwritten_bytes += len(record)
        while self._unwritten_bytes > MAX_UNWRITTEN_BYTES and len(self.unwritten) > 1:
            self._unwritten_bytes -= len(self.unwritten.popleft())
            self.lost += 1

    def _write(self, record: bytes) -> None:
        """One whole record at the end, or nothing: a partly written record is cut away so the
        log stays readable (and the next record follows the last good one)."""
        if self._file.closed:
            raise OSError("annotation log is closed")
        try:
            view = memoryview(record)
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[written:]
        except OSError:
            try:
                self._file.truncate(self._end)
                self._file.seek(self._end)
            except OSError:
                log.exception("annotation log: a torn record could not be cut away")
            raise
        self._end += len(record)
        self.dirty = True

    def sync(self) -> None:
        """fsync what was written (called by `append`, by the room's timer, and at close)."""
        if self.dirty and not self._file.closed:
            try:
                os.fsync(self._file.fileno())
            except OSError:
                log.exception("annotation log: fsync failed", extra={"path": str(self.path)})
                return
            self.dirty = False
            self._last_fsync = self._clock()

    def close(self) -> None:
        """fsync and close (a last try for held-back records first)."""
        if not self._file.closed:
            self.retry(force=True)
            self.sync()
            if self.unwritten:
                extra = {"path": str(self.path), "records": len(self.unwritten)}
                log.error("annotation log closed with records unwritten", extra=extra)
            self._file.close()
