"""Images from the hospital PACS: search it from a room and share a series (or a study) into it.

Who may: a current participant of the room whose token allows `share_image` there (the same
decision as an upload: role, second factor, the token's room grant, the room's departments)
and whose role is one of `pacs_search_roles`. A search needs an exact patient id or accession
number: nobody lists the PACS's patients at large from a meeting.

A share takes exactly the upload's path: each instance the PACS sends (`signaling.pacs`, one at
a time) goes through `ImageStore.share` in a memory-capped image worker (de-identified, burned-in
text checked, rendered, encrypted at rest), is announced with `image_shared` like an upload, and
is watermarked per viewer when fetched. The share runs in the background so the room carries on;
the first slice is in the room as soon as it is ready, and `pacs_share_progress` tells everyone
how far it is. Every search and share is audited, with no patient data: the criteria's names
(never their values), counts, and the SHA-256 of the UIDs shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from core.errors import (
    ConsiliumError,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
)
from imaging.dicomweb import SearchRequest, check_uid
from imaging.pacs_source import read_source
from imaging.sniff import BurnedInAnnotation, ImageTooLarge, UnsupportedImage
from imaging.store import SharedImage, TooManyImages
from signaling import protocol as p
from signaling.http.auth import audit_refusal
from signaling.http.bodies import json_body
from signaling.http.node import NODE, Node
from signaling.http.routes.images import announce_image, audit_shared, room_participant
from signaling.identity import Identity
from signaling.membership import room_scope
from signaling.pacs import PacsClient, PacsNotConfigured

log = logging.getLogger("consilium.pacs")

_BUSY_RETRY_S = 0.2
"""Wait before retrying an instance when the image work queue is full (uploads run too)."""


@dataclass(frozen=True, slots=True)
class ShareOrder:
    """One share from the PACS into a room, as decided by the route."""

    share_id: str
    room_id: str
    study_uid: str
    series_uid: str
    """Empty: the whole study."""
    total: int
    """Instances the PACS said it holds for it."""
    sub: str
    """Who shares (`sub`): the uploader of every instance, the one who sees a held one."""
    participant_id: str
    """Their participant id in the room (`shared_by`)."""


@dataclass
class PacsShares:
    """The node's PACS client and the shares it is running (bounded by
    `pacs_concurrent_shares`); stored in the app under `PACS`."""

    client: PacsClient | None
    """None when no `pacs_url` is set."""
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Shares in flight, by share id."""
    starting: int = 0
    """Share requests between their checks and their start (they count against the bound)."""

    def require(self) -> PacsClient:
        """The client, or `PacsNotConfigured` (HTTP 503)."""
        if self.client is None:
            raise PacsNotConfigured("no PACS is configured on this server")
        return self.client

    async def close(self) -> None:
        """Stop every share (the node is stopping) and close the connections to the PACS."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None:
            await self.client.close()


PACS = web.AppKey("pacs", PacsShares)


def _uid_digest(uid: str) -> str:
    """What the audit keeps of a UID: UIDs identify a patient's study (PS3.15), so a digest
    that whoever holds the UID can match, never the UID itself."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


async def _searcher(request: web.Request) -> tuple[Node, Identity, str, str, PacsClient]:
    """The caller as a PACS searcher in this room (see the module); refusals are audited."""
    node = request.app[NODE]
    identity, room_id, participant = await room_participant(request, "share_image")
    if identity.role not in node.settings.pacs_search_roles:
        audit_refusal(request, "pacs_role", sub=identity.sub, room=room_id, role=identity.role)
        raise PolicyDenied("your role may not search the PACS")
    return node, identity, room_id, participant.participant_id, request.app[PACS].require()


async def pacs_status(request: web.Request) -> web.Response:
    """`GET /api/rooms/{room}/pacs`: whether this node has a PACS and the caller may search it
    (participants; the web client shows its PACS panel from this)."""
    node = request.app[NODE]
    identity, room_id, _participant = await room_participant(request, "join_room")
    configured = request.app[PACS].client is not None
    allowed = configured and identity.role in node.settings.pacs_search_roles
    if allowed:
        scope = room_scope(await node.store.get_room(room_id), room_id)
        allowed = bool(node.policy.decide(identity, "share_image", scope))
    return web.json_response({"configured": configured, "allowed": allowed})


async def search_studies(request: web.Request) -> web.Response:
    """`POST /api/rooms/{room}/pacs/search`: studies matching a patient id or accession (and a
    date range, a modality); audited without the criteria's values."""
    node, identity, room_id, participant_id, client = await _searcher(request)
    query = SearchRequest.from_body(await json_body(request))
    node.image_work.workers.warm()  # a share usually follows: start the decoders now
    fields = ("patient_id", "accession", "date_from", "date_to", "modality")
    criteria = [name for name in fields if getattr(query, name)]
    try:
        studies = await client.search_studies(query)
    except ConsiliumError as exc:
        node.audit.append(
            "pacs_search_failed",
            "deny",
            sub=identity.sub,
            room=room_id,
            reason=exc.code,
            participant=participant_id,
            criteria=criteria,
        )
        raise
    node.audit.append(
        "pacs_searched",
        "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant_id,
        criteria=criteria,
        results=len(studies),
    )
    return web.json_response({"studies": [study.to_wire() for study in studies]})


async def list_series(request: web.Request) -> web.Response:
    """`POST /api/rooms/{room}/pacs/series` `{"study_uid"}`: the study's series."""
    node, identity, room_id, participant_id, client = await _searcher(request)
    body = await json_body(request)
    study_uid = check_uid(str(body.get("study_uid", "")), "study_uid")
    series = await client.search_series(study_uid)
    node.audit.append(
        "pacs_series_listed",
        "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant_id,
        study_sha256=_uid_digest(study_uid),
        results=len(series),
    )
    return web.json_response({"series": [item.to_wire() for item in series]})


async def share_series(request: web.Request) -> web.Response:
    """`POST /api/rooms/{room}/pacs/shares` `{"study_uid", "series_uid"}` (no `series_uid`:
    the whole study): `202 {"share_id", "total", "state"}`; the instances follow in the room."""
    node, identity, room_id, participant_id, client = await _searcher(request)
    shares = request.app[PACS]
    body = await json_body(request)
    study_uid = check_uid(str(body.get("study_uid", "")), "study_uid")
    series_uid = str(body.get("series_uid", "") or "")
    if series_uid:
        check_uid(series_uid, "series_uid")
    digests = {"study_sha256": _uid_digest(study_uid)}
    if series_uid:
        digests["series_sha256"] = _uid_digest(series_uid)
    try:
        if len(shares.running) + shares.starting >= node.settings.pacs_concurrent_shares:
            raise RateLimited("the server is already sharing from the PACS; try again shortly")
        shares.starting += 1  # counted while the PACS is asked, so parallel requests cannot pass
        try:
            total = await _instances_to_share(node, client, room_id, study_uid, series_uid)
        finally:
            shares.starting -= 1
    except ConsiliumError as exc:
        node.audit.append(
            "pacs_share_refused",
            "deny",
            sub=identity.sub,
            room=room_id,
            reason=exc.code,
            participant=participant_id,
            **digests,
        )
        raise
    order = ShareOrder(
        secrets.token_urlsafe(12),
        room_id,
        study_uid,
        series_uid,
        total,
        identity.sub,
        participant_id,
    )
    node.audit.append(
        "pacs_share_started",
        "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant_id,
        share=order.share_id,
        total=total,
        **digests,
    )
    task = asyncio.get_running_loop().create_task(_run_share(node, client, order))
    shares.running[order.share_id] = task
    task.add_done_callback(lambda _: shares.running.pop(order.share_id, None))
    return web.json_response(
        {"share_id": order.share_id, "total": total, "state": "running"}, status=202
    )


async def _instances_to_share(
    node: Node, client: PacsClient, room_id: str, study_uid: str, series_uid: str
) -> int:
    """How many instances the PACS holds for the series (or study), once it is clear they may
    all come into the room: within `pacs_max_instances` and the room's `max_images_per_room`."""
    total = sum(s.instances for s in await client.search_series(study_uid, series_uid))
    if total == 0:
        raise NotFound("the PACS has no instances for this series")
    if total > node.settings.pacs_max_instances:
        raise PayloadTooLarge(
            "the series has more instances than one share may bring",
            limit=node.settings.pacs_max_instances,
        )
    held = len(await asyncio.to_thread(node.images.list, room_id))
    if held + total > node.settings.max_images_per_room:
        raise TooManyImages(
            "the room cannot hold this many more images",
            limit=node.settings.max_images_per_room,
        )
    return total


ShareState = Literal["running", "done", "failed"]


async def _progress(
    node: Node, order: ShareOrder, state: ShareState, shared: int, title: str = "", error: str = ""
) -> None:
    await node.rooms.announce(
        order.room_id,
        p.PacsShareProgress(
            share_id=order.share_id,
            state=state,
            shared=shared,
            total=order.total,
            title=title,
            shared_by=order.participant_id,
            error=error,
        ),
    )


async def _share_one(node: Node, order: ShareOrder, data: bytes) -> SharedImage:
    """One instance through the upload's path; retried while the image work queue is full."""
    # Its original UIDs, kept encrypted with the image for the annotations' write-back.
    source = await asyncio.to_thread(read_source, data)
    while True:
        try:
            record: SharedImage = await node.image_work.run(
                node.images.share,
                order.room_id,
                data,
                shared_by_participant=order.participant_id,
                uploader=order.sub,
                prepare=node.image_work.workers.prepare,
                source=source,
            )
            return record
        except RateLimited as exc:
            if isinstance(exc, TooManyImages):
                raise
            await asyncio.sleep(_BUSY_RETRY_S)


async def _run_share(node: Node, client: PacsClient, order: ShareOrder) -> None:
    """Retrieve the instances one by one and share each as it comes (the background task)."""
    counts = {"shared": 0, "held": 0, "skipped": 0}
    title = ""
    error = ""
    try:
        await _progress(node, order, "running", 0)
        # Closed on every exit (a break included): the PACS's connection is released at once.
        async with contextlib.aclosing(
            client.retrieve(order.study_uid, order.series_uid)
        ) as instances:
            async for data in instances:
                if sum(counts.values()) >= order.total:
                    break  # the PACS sends more than it counted: never more than was checked
                try:
                    record = await _share_one(node, order, data)
                except (UnsupportedImage, BurnedInAnnotation, ImageTooLarge):
                    # One unreadable or unconfirmed instance (a report, a burned-in secondary
                    # capture) does not stop the series: it is counted, not shared.
                    counts["skipped"] += 1
                    continue
                audit_shared(node, order.sub, order.room_id, order.participant_id, record,
                             share=order.share_id)  # fmt: skip
                if record.held:
                    counts["held"] += 1  # only the sharer sees it until they redact it
                else:
                    counts["shared"] += 1
                    title = title or record.title
                    await announce_image(node, order.room_id, record)
                await _progress(node, order, "running", counts["shared"], title)
    except asyncio.CancelledError:
        error = "server_shutdown"
        raise
    except ConsiliumError as exc:
        error = exc.code
    except Exception:
        log.exception("share from the PACS failed")
        error = "server_error"
    finally:
        node.audit.append(
            "pacs_share_failed" if error else "pacs_share_finished",
            "deny" if error else "allow",
            sub=order.sub,
            room=order.room_id,
            reason=error or None,
            participant=order.participant_id,
            share=order.share_id,
            total=order.total,
            **counts,
        )
        if error != "server_shutdown":
            try:
                await _progress(
                    node, order, "failed" if error else "done", counts["shared"], title, error
                )
            except Exception:  # the shared state is out of reach: the audit entry stands
                log.warning("the end of a PACS share could not be announced to the room")


def add_pacs_routes(app: web.Application) -> None:
    """The PACS routes, and the PACS client (its credentials read now: a missing password file
    fails the start), closed with the app."""
    settings = app[NODE].settings
    shares = PacsShares(PacsClient(settings) if settings.pacs_url is not None else None)
    app[PACS] = shares

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        yield
        await shares.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/api/rooms/{room}/pacs", pacs_status)
    app.router.add_post("/api/rooms/{room}/pacs/search", search_studies)
    app.router.add_post("/api/rooms/{room}/pacs/series", list_series)
    app.router.add_post("/api/rooms/{room}/pacs/shares", share_series)
