"""Shared images of a live room: share (upload), release a held one, list, and view a frame
watermarked for its viewer; participants only, every step audited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import BodyPartReader, web

from core.errors import BadMessage, ConsiliumError, PolicyDenied
from core.rooms import valid_room_id
from imaging.burnedin import Box
from imaging.sniff import ImageTooLarge
from imaging.store import ImageStore, SharedImage
from imaging.watermark import Mark, watermark
from signaling import protocol as p
from signaling.http.auth import audit_refusal, authenticate, decide_in_room
from signaling.http.bodies import json_body, short
from signaling.http.node import NODE, Node
from signaling.identity import Identity
from signaling.logs import scrub
from signaling.membership import room_scope
from signaling.state.records import ParticipantRecord

_UPLOAD_PARTS = 8
_UPLOAD_FIELD_BYTES = 64
# Room for the multipart boundaries and part headers around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024


async def room_participant(
    request: web.Request, action: str
) -> tuple[Identity, str, ParticipantRecord]:
    """The caller, the room and the caller's participant record, for every image route.

    Decided as the join is, on this request's token (not on who joined): revocation, role,
    second factor, the token's room grant and the room's departments and grants must all allow
    `join_room` in this room, and `action` too when it is another action; then only a current
    (joined, not waiting) participant of the room gets through. Every refusal is audited.
    """
    node = request.app[NODE]
    identity = await authenticate(request, None)
    room_id = request.match_info["room"]
    if not valid_room_id(room_id):
        raise BadMessage("room id must be 1-64 letters, digits, '.', '_' or '-'")
    scope = room_scope(await node.store.get_room(room_id), room_id)
    decide_in_room(
        request, identity, room_id, scope, ("join_room", action), "not allowed in this room"
    )
    participant = await node.rooms.current_participant(room_id, identity.sub)
    if participant is None:
        audit_refusal(request, "not_a_participant", sub=identity.sub, room=room_id)
        raise PolicyDenied("only the room's current participants may do this")
    return identity, room_id, participant


async def _read_upload(request: web.Request, max_bytes: int) -> tuple[bytes, bool]:
    """The `file` and `confirm_burned_in` fields of a multipart upload, streamed with a bound."""
    if request.content_type != "multipart/form-data":
        raise BadMessage("send the image as multipart/form-data with a `file` field")
    if request.content_length is not None and (
        request.content_length > max_bytes + _MULTIPART_OVERHEAD
    ):
        raise ImageTooLarge("the image file is too large", limit=max_bytes)
    data: bytes | None = None
    confirm = False
    try:
        reader = await request.multipart()
        for _ in range(_UPLOAD_PARTS + 1):
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadMessage("nested multipart bodies are not accepted")
            is_file = part.name == "file"
            limit = max_bytes if is_file else _UPLOAD_FIELD_BYTES
            buffer = bytearray()
            while chunk := await part.read_chunk(256 * 1024):
                buffer += chunk
                if len(buffer) > limit:
                    if is_file:
                        raise ImageTooLarge("the image file is too large", limit=max_bytes)
                    raise BadMessage(f"form field {scrub(part.name or '')[:40]!r} is too long")
            if is_file:
                if data is not None:
                    raise BadMessage("send one `file` per upload")
                data = bytes(buffer)
            elif part.name == "confirm_burned_in":
                confirm = buffer.decode("utf-8", "replace").strip().lower() == "true"
        else:
            raise BadMessage("too many form fields")
    except ValueError as exc:  # aiohttp's multipart parser: a malformed body
        raise BadMessage(f"malformed multipart body: {short(str(exc))}") from None
    if not data:
        raise BadMessage("the upload has no `file` field (or it is empty)")
    return data, confirm


async def share_image(request: web.Request) -> web.Response:
    """`POST /api/rooms/{room}/images`: share an image into the room (`share_image`)."""
    node = request.app[NODE]
    identity, room_id, participant = await room_participant(request, "share_image")
    try:
        data, confirm = await _read_upload(request, node.settings.max_image_bytes)
        record: SharedImage = await node.image_work.run(
            node.images.share,
            room_id,
            data,
            shared_by_participant=participant.participant_id,
            uploader=identity.sub,
            confirm_burned_in=confirm,
            prepare=node.image_work.workers.prepare,
        )
    except ConsiliumError as exc:
        node.audit.append(
            "image_share_refused",
            "deny",
            sub=identity.sub,
            room=room_id,
            reason=exc.code,
            participant=participant.participant_id,
        )
        raise
    audit_shared(node, identity.sub, room_id, participant.participant_id, record)
    if record.held:
        # Only the uploader sees it until they redact what is left and confirm (202).
        return web.json_response(record.to_wire(), status=202)
    await announce_image(node, room_id, record)
    return web.json_response(record.to_wire(), status=201)


def audit_shared(
    node: Node, sub: str, room_id: str, participant_id: str, record: SharedImage, **more: Any
) -> None:
    """Audit an image shared (or held for its uploader's redaction): what de-identification
    and the burned-in text check did, never what the image shows."""
    node.audit.append(
        "image_held" if record.held else "image_shared",
        "info" if record.held else "allow",
        sub=sub,
        room=room_id,
        participant=participant_id,
        image=record.image_id,
        kind=record.kind,
        frames=record.frames,
        removed_tags=record.removed_tags,
        burned_in_confirmed=record.burned_in_confirmed,
        text_blanked=record.text_blanked,
        held_reasons=list(record.held_reasons),
        **more,
    )


async def announce_image(node: Node, room_id: str, record: SharedImage) -> None:
    """Tell the room (every node) an image is shared, and the room's recording if one runs."""
    await node.rooms.announce(room_id, p.ImageShared(**record.announcement()))
    if node.rooms.recorder is not None:
        await node.rooms.recorder.image_shared(room_id, record.image_id)


_REDACT_BOXES = 256


class RedactionBox(msgspec.Struct, forbid_unknown_fields=True):
    """One box the uploader blanks on a held image, in the frame's pixels."""

    frame: int
    x: int
    y: int
    width: int
    height: int


class Redaction(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/rooms/{room}/images/{image_id}/release`."""

    confirm: bool
    boxes: list[RedactionBox] = msgspec.field(default_factory=list)


async def release_image(request: web.Request) -> web.Response:
    """`POST /api/rooms/{room}/images/{image_id}/release`: the uploader of a held image blanks
    the boxes they drew and confirms that nothing identifying is left; it is then shared."""
    node = request.app[NODE]
    identity, room_id, participant = await room_participant(request, "share_image")
    image_id = request.match_info["image_id"]
    try:
        body = msgspec.convert(await json_body(request), Redaction)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid redaction: {exc}") from None
    if not body.confirm:
        raise BadMessage("confirm that nothing identifying is left in the image")
    if len(body.boxes) > _REDACT_BOXES or any(
        b.width < 1 or b.height < 1 or b.x < 0 or b.y < 0 or max(b.x, b.y) > 1 << 16
        for b in body.boxes
    ):
        raise BadMessage(f"at most {_REDACT_BOXES} boxes, each inside the image")
    boxes = [(b.frame, Box(b.x, b.y, b.width, b.height)) for b in body.boxes]
    record: SharedImage = await node.image_work.run(
        node.images.release, room_id, image_id, identity.sub, boxes
    )
    node.audit.append(
        "image_released",
        "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant.participant_id,
        image=record.image_id,
        redacted=len(boxes),
        held_reasons=list(record.held_reasons),
    )
    await announce_image(node, room_id, record)
    return web.json_response(record.to_wire())


async def list_images(request: web.Request) -> web.Response:
    """`GET /api/rooms/{room}/images`: the room's images in sharing order (participants)."""
    node = request.app[NODE]
    identity, room_id, _participant = await room_participant(request, "join_room")
    node.image_work.workers.warm()  # every client lists the images on joining: a share may follow
    # The first call reads disk. The caller's own held images are listed for them alone.
    images = await asyncio.to_thread(node.images.list, room_id, uploader=identity.sub)
    return web.json_response({"images": [image.to_wire() for image in images]})


def _served_frame(
    images: ImageStore, key: bytes, room_id: str, image_id: str, index: int, mark: Mark
) -> tuple[bytes, str]:
    images.visible(room_id, image_id, mark.viewer)  # a held image: its uploader alone
    data, media_type = images.frame(room_id, image_id, index)
    return watermark(data, mark, key), media_type


async def get_image(request: web.Request) -> web.Response:
    """`GET /api/rooms/{room}/images/{image_id}?frame=N[&purpose=export]`: one frame,
    watermarked for this viewer (participants); every fetch is audited."""
    node = request.app[NODE]
    identity, room_id, participant = await room_participant(request, "join_room")
    image_id = request.match_info["image_id"]
    try:
        index = int(request.query.get("frame", "0"))
    except ValueError:
        raise BadMessage("frame must be an integer") from None
    purpose = request.query.get("purpose", "view")
    if purpose not in ("view", "export"):
        raise BadMessage("purpose must be view or export")
    mark = Mark(viewer=identity.sub, room=room_id, time=datetime.now(UTC).replace(microsecond=0))
    body, media_type = await node.image_work.run(
        _served_frame, node.images, node.watermark_key, room_id, image_id, index, mark
    )
    node.audit.append(
        "image_exported" if purpose == "export" else "image_viewed",
        "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant.participant_id,
        image=image_id,
        frame=index,
    )
    return web.Response(body=body, content_type=media_type, headers={"Cache-Control": "no-store"})
