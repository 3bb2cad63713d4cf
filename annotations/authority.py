"""Shared annotations and chat of a room: the ordering authority, sans-IO.

The SFU hosts a room's media on one node, so it is the one place that orders what is drawn and
said in the room. A client sends an operation (`op`, `chat`, `receipt`, `sync`) as JSON text on
its reliable data channel; `AnnotationAuthority.handle` checks it (schema, bounds, permission),
stamps the room's next sequence number, the author (from the connection, never from the message)
and the server time (passed in), applies it to the state and returns who receives what. Clients
apply events in sequence order on top of a `snapshot`, so they all converge. Pointer positions
(`consilium-lossy`) are rate-limited and relayed, never stored.

Nothing here reads a clock, touches a file, the event loop or a socket: the messages are declared
in `annotations.messages`, the encrypted log is `annotations.log`, and `annotations.room` drives
the three for the SFU (`sfu.session` moves the text).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from annotations.messages import (
    AddOp,
    ChatMessage,
    ClearOwnOp,
    DeleteOp,
    EditOp,
    ErrorMessage,
    Event,
    OpMessage,
    Point,
    ReceiptMessage,
    RelayedPointer,
    Snapshot,
    StampedAdd,
    StampedOp,
    StampedShape,
    SyncMessage,
    client_decoder,
    encode,
    pointer_decoder,
)
from core.actions import Action
from core.imageref import ImageRef
from core.ratelimit import TokenBucket

MAX_COORDINATE = 1e6
"""Largest absolute coordinate accepted (pixels); also rules out infinities."""

TWO_POINT_SHAPES = frozenset({"arrow", "line", "ellipse", "rectangle", "measure"})


class AnnotationBounds(Protocol):
    """The bounds the authority enforces, read from the SFU's settings (`sfu.server.MediaSettings`
    documents each and its default); read-only here."""

    @property
    def annotation_max_bytes(self) -> int: ...
    @property
    def annotation_max_points(self) -> int: ...
    @property
    def annotation_max_text_chars(self) -> int: ...
    @property
    def annotation_ops_per_s(self) -> float: ...
    @property
    def annotation_burst(self) -> int: ...
    @property
    def annotation_max_shapes_per_image(self) -> int: ...
    @property
    def chat_max_chars(self) -> int: ...
    @property
    def pointer_per_s(self) -> float: ...


class AnnotationError(Exception):
    """A message refused; `code` is its wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
    seq: int = 0
    """A stamped event's sequence number (its record in the room's log); 0 for the others."""


@dataclass(slots=True)
class ChatRecord:
    """A chat message and each recipient's receipt (`delivered` or `read`)."""

    event: Event
    receipts: dict[str, str] = field(default_factory=dict)


def measure_length_mm(points: list[Point], spacing: tuple[float, float] | None) -> float | None:
    """Length of a two-point measurement in mm; spacing is (row mm, column mm)."""
    if spacing is None or len(points) != 2:
        return None
    (x0, y0), (x1, y1) = points
    return round(math.hypot((x1 - x0) * spacing[1], (y1 - y0) * spacing[0]), 3)


class AnnotationAuthority:
    """A room's annotations and chat: validates, stamps, applies, says who receives what.

    Sans-IO: the caller passes the time in (`now` for the rate limits, `time` for the stamp)
    and writes the stamped events wherever they are kept (`annotations.room`)."""

    def __init__(
        self,
        room_id: str,
        settings: AnnotationBounds,
        image_info: Callable[[str, str], ImageRef | None] | None = None,
    ) -> None:
        self.room_id = room_id
        self.settings = settings
        self.image_info = image_info
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

    def handle(
        self, sender: str, permissions: frozenset[str], raw: str, now: float, time: str
    ) -> list[Delivery]:
        """One message from `sender`'s reliable channel at `now` (monotonic seconds, for the rate
        limit): the deliveries it causes, in order; a stamped event carries `time` (UTC) and is
        applied to the state before this returns. Hot path, per annotation op: watched by
        bench/annotations.py."""
        client_id: str | None = None
        try:
            if len(raw) > self.settings.annotation_max_bytes or (
                len(raw.encode()) > self.settings.annotation_max_bytes
            ):
                raise AnnotationError("too_large", "message larger than the bound")
            try:
                message = client_decoder.decode(raw)
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
            if not bucket.allow(now):
                raise AnnotationError("rate_limited", "too many messages per second")
            if isinstance(message, SyncMessage):
                snapshot = encode(self.snapshot(sender))
                return [Delivery((sender,), snapshot, "snapshot", sender)]
            if isinstance(message, OpMessage):
                event = self._stamp_op(sender, permissions, message, time)
            elif isinstance(message, ChatMessage):
                event = self._stamp_chat(sender, message, time)
            else:
                stamped = self._stamp_receipt(sender, message, time)
                if stamped is None:
                    return []  # nothing new: the receipt was already at that state
                event = stamped
        except AnnotationError as exc:
            error = ErrorMessage(code=exc.code, message=str(exc), client_id=client_id)
            return [Delivery((sender,), encode(error), "error", sender)]
        delivery = Delivery(self.recipients(event), encode(event), "event", sender, event.seq)
        self.apply(event)
        return [delivery]

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

    def _stamp(self, sender: str, client_id: str, kind: Any, time: str, **fields: Any) -> Event:
        user = self.users.get(sender)
        if user is not None:
            fields["author_user"] = user
        return Event(seq=self.seq + 1, time=time, author=sender,
                     client_id=client_id, kind=kind, **fields)  # fmt: skip

    def _stamp_op(
        self, sender: str, permissions: frozenset[str], message: OpMessage, time: str
    ) -> Event:
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
        return self._stamp(sender, message.client_id, "op", time, image_id=message.image_id,
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

    def _stamp_chat(self, sender: str, message: ChatMessage, time: str) -> Event:
        if len(message.text) > self.settings.chat_max_chars:
            raise AnnotationError("too_large", "chat message longer than the bound")
        to = list(dict.fromkeys(message.to))
        fields: dict[str, Any] = {"text": message.text, "to": to}
        if to and all(r in self.users for r in to):
            fields["to_users"] = [self.users[r] for r in to]
        return self._stamp(sender, message.client_id, "chat", time, **fields)

    def _stamp_receipt(self, sender: str, message: ReceiptMessage, time: str) -> Event | None:
        record = self.chat.get(message.seq)
        if record is None:
            raise AnnotationError("bad_message", f"no chat message {message.seq}")
        if self.same_person(sender, record.event.author) or not self.visible_to(record, sender):
            raise AnnotationError("not_allowed", "only a recipient sets its own receipt")
        current = self._receipt_of(record, sender)
        if current == message.state or current == "read":
            return None  # monotonic: read implies delivered, and nothing goes back
        return self._stamp(sender, "", "receipt", time, ref=message.seq, state=message.state)

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

    def skip_to(self, seq: int) -> None:
        """Records up to `seq` exist but cannot be applied (a full disk lost them: a gap in the
        log): the next event is stamped after them, never reusing their seqs."""
        self.seq = max(self.seq, seq)

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

    def pointer(self, sender: str, permissions: frozenset[str], raw: str, now: float) -> str | None:
        """A pointer position from `sender` at `now` (monotonic seconds): the text to relay to
        the others, or None when it is dropped (over `pointer_per_s`, or no `annotate`). A
        malformed one raises `AnnotationError`."""
        if len(raw) > 512:
            raise AnnotationError("too_large", "pointer message larger than the bound")
        try:
            message = pointer_decoder.decode(raw)
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
        if not bucket.allow(now):
            return None
        relayed = RelayedPointer(image_id=message.image_id, frame=message.frame, x=message.x,
                                 y=message.y, from_=sender)  # fmt: skip
        return encode(relayed)

    def forget(self, participant_id: str) -> None:
        """A participant left: drop their rate-limit state."""
        self._buckets.pop(participant_id, None)
        self._pointer_buckets.pop(participant_id, None)


def _loose_client_id(raw: str) -> str | None:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    client_id = value.get("client_id") if isinstance(value, dict) else None
    return client_id if isinstance(client_id, str) and len(client_id) <= 64 else None
