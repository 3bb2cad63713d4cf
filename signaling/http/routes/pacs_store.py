"""The meeting's annotations on an image from the PACS, stored back in the PACS (STOW-RS).

`POST /api/rooms/{room}/pacs/annotations` `{"image_id"}`: a participant allowed `pacs_write`
in the room (by default the chair and the radiologist) writes every shape the room drew on one
shared image as a Grayscale Softcopy Presentation State (`imaging.presentation_state`) on the
ORIGINAL instances, authored in their name, and the PACS stores it. The path, in order:

1. the image's record: it must come from the PACS (`SharedImage.source`, the original UIDs per
   frame, kept encrypted by the store) and be visible to the caller;
2. its shapes, from the room's annotation authority on this node (the SFU hosting the room's
   media holds the room's one ordered state);
3. the headers of the annotated instances from the PACS itself (WADO-RS metadata): the patient
   attributes the GSPS must repeat come from the PACS and go back to it, Consilium keeps none;
4. the GSPS built (off the event loop) and sent with `PacsClient.store`.

Audited as `pacs_store` (allow, or deny with the reason) with no patient data: the image id,
the counts, and SHA-256 digests of the study UID and of the new presentation state's UID, which
IT can match against the PACS (one presentation state, or one per rescale when the slices
drawn on differ in it). The answer names no UID either.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from annotations.messages import StampedShape
from core import __version__
from core.errors import BadMessage, Conflict, ConsiliumError, RateLimited
from imaging.pacs_source import DicomSource, NotFromPacs
from imaging.presentation_state import (
    Authorship,
    GraphicShape,
    NothingToWrite,
    encode,
    header_from_json,
    presentation_states,
)
from imaging.store import IMAGE_ID_PATTERN
from signaling.http.bodies import json_body
from signaling.http.node import NODE, Node
from signaling.http.routes.images import room_participant
from signaling.http.routes.pacs import PACS
from signaling.identity import Identity
from signaling.pacs import PacsClient, PacsUnavailable


class AnnotationsNotHere(Conflict):
    """The room's annotations are held by the node hosting its media, not this one (or the
    room is not running: nobody is in it)."""

    code = "annotations_not_here"


PACS_WRITES = web.AppKey("pacs_writes", set)
"""(room, image) pairs being written back now: a second click waits for the first."""


def _digest(uid: str) -> str:
    """What the audit keeps of a UID (as `routes.pacs` does): a digest, never the UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def room_shapes(node: Node, room_id: str, image_id: str) -> list[GraphicShape]:
    """Every shape the room drew on the image, from the annotation authority on this node."""
    media = node.rooms.media
    room = media.rooms.get(room_id) if media is not None else None
    if room is None:
        raise AnnotationsNotHere(
            "the meeting's drawings are held where its media runs: save them during the meeting"
        )
    return [_shape(s) for s in room.annotations.snapshot("").shapes if s.image_id == image_id]


def _shape(shape: StampedShape) -> GraphicShape:
    length = shape.length_mm if isinstance(shape.length_mm, float | int) else None
    return GraphicShape(
        frame=shape.frame,
        type=shape.type,
        points=tuple((float(x), float(y)) for x, y in shape.points),
        text=shape.text,
        color=shape.color,
        length_mm=length,
    )


def authorship(identity: Identity, meeting_title: str, node_id: str) -> Authorship:
    """Who writes it: the directory's names for the person (OIDC `family_name`/`given_name`
    when the token carries them, else the display name), their institution, the meeting."""

    def claim(name: str) -> str:
        value = identity.extra.get(name)
        return value if isinstance(value, str) else ""

    return Authorship(
        display_name=identity.name or identity.sub,
        family_name=claim("family_name"),
        given_name=claim("given_name"),
        institution=identity.org,
        meeting_title=meeting_title,
        series_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        software_version=__version__,
        device_serial=node_id,
    )


async def _headers(
    client: PacsClient, source: DicomSource, shapes: list[GraphicShape]
) -> dict[str, Dataset]:
    """The PACS's header of each instance an annotated frame comes from."""
    wanted = {f.sop_instance_uid for s in shapes if (f := source.frame(s.frame)) is not None}
    headers: dict[str, Dataset] = {}
    for sop in sorted(wanted):
        item = await client.instance_metadata(source.study_uid, source.series_uid, sop)
        try:
            headers[sop] = header_from_json(item)
        except ValueError:
            raise PacsUnavailable("the PACS's metadata is not DICOM JSON") from None
    return headers


def _build(
    source: DicomSource,
    headers: dict[str, Dataset],
    shapes: list[GraphicShape],
    author: Authorship,
    now: datetime,
) -> tuple[list[bytes], list[str], int]:
    """The presentation state(s) as Part 10 files, their SOPInstanceUIDs, and how many graphic
    annotations (instance, frame, colour) they carry."""
    states = presentation_states(source, headers, shapes, author, now)
    annotated = sum(len(state.GraphicAnnotationSequence) for state in states)
    return (
        [encode(state) for state in states],
        [state.SOPInstanceUID for state in states],
        annotated,
    )


async def store_annotations(request: web.Request) -> web.Response:
    """`POST /api/rooms/{room}/pacs/annotations` `{"image_id"}`: `201 {"state": "stored",
    "shapes", "annotations", "states"}`; refused with a typed error (see the module)."""
    node = request.app[NODE]
    identity, room_id, participant = await room_participant(request, "pacs_write")
    body = await json_body(request)
    image_id = str(body.get("image_id", ""))
    if not IMAGE_ID_PATTERN.match(image_id):
        raise BadMessage("image_id must be the id of an image shared in this room")
    fields: dict[str, Any] = {"participant": participant.participant_id, "image": image_id}
    writes = request.app[PACS_WRITES]
    busy = (room_id, image_id) in writes
    try:
        if busy:
            raise RateLimited("these annotations are being saved to the PACS already")
        writes.add((room_id, image_id))
        client = request.app[PACS].require()
        record = await asyncio.to_thread(node.images.visible, room_id, image_id, identity.sub)
        source = record.source
        if source is None:
            raise NotFromPacs("this image was not shared from the PACS")
        shapes = room_shapes(node, room_id, image_id)
        fields["shapes"] = len(shapes)
        if not shapes:
            raise NothingToWrite("nothing is drawn on this image yet")
        fields["study_sha256"] = _digest(source.study_uid)
        headers = await _headers(client, source, shapes)
        room = await node.store.get_room(room_id)
        author = authorship(identity, room.title if room else "", node.settings.node_id)
        files, uids, annotated = await asyncio.to_thread(
            _build, source, headers, shapes, author, datetime.now(UTC)
        )
        fields["annotations"] = annotated
        fields["states_sha256"] = [_digest(uid) for uid in uids]
        outcome = await client.store(files)
        if not outcome.kept(uids):
            raise PacsUnavailable("the PACS did not keep the presentation state")
    except ConsiliumError as exc:
        node.audit.append("pacs_store", "deny", sub=identity.sub, room=room_id,
                          reason=exc.code, **fields)  # fmt: skip
        raise
    finally:
        if not busy:
            writes.discard((room_id, image_id))
    node.audit.append("pacs_store", "allow", sub=identity.sub, room=room_id, **fields)
    return web.json_response(
        {"state": "stored", "shapes": len(shapes), "annotations": annotated, "states": len(uids)},
        status=201,
    )


def add_pacs_store_routes(app: web.Application) -> None:
    """The write-back route (after `add_pacs_routes`, whose PACS client it uses)."""
    app[PACS_WRITES] = set()
    app.router.add_post("/api/rooms/{room}/pacs/annotations", store_annotations)
