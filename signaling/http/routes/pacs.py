"""Images from the hospital PACS: search it from a room and share a series (or a study) into it.

Who may: a current participant of the room whose token allows `share_image` there (the same
decision as an upload: role, second factor, the token's room grant, the room's departments)
and whose role is one of `pacs_search_roles`. A search needs an exact patient id or accession
number: nobody lists the PACS's patients at large from a meeting.

A share takes exactly the upload's path: each instance the PACS sends (`signaling.pacs`, one at
a time) goes through the upload's de-identification, burned-in text check and rendering in a
memory-capped image worker and is watermarked per viewer when fetched. A series becomes ONE
stacked image in the room (`imaging.stack`), its slices frames in anatomical order; the share
runs in the background (`pacs_share`) so the room carries on, the first slice is in the room as
soon as it is ready, and the image and `pacs_share_progress` grow as the rest arrive. The sharer
may cancel it; what arrived stays. Every search and share is audited, with no patient data: the
criteria's names (never their values), counts, and the SHA-256 of the UIDs shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from core.errors import (
    ConsiliumError,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
)
from imaging.deidentify import replace_uid
from imaging.dicomweb import SearchRequest, check_uid
from imaging.store import TooManyImages, room_uid_secret
from signaling.http.auth import audit_refusal
from signaling.http.bodies import json_body
from signaling.http.node import NODE, Node
from signaling.http.routes.images import room_participant
from signaling.http.routes.pacs_share import ShareOrder, run_share
from signaling.identity import Identity
from signaling.membership import room_scope
from signaling.pacs import PacsClient, PacsNotConfigured

log = logging.getLogger("consilium.pacs")


STOPPED_KEPT = 64
"""Stopped shares remembered for a repeated stop (`PacsShares.stopped`)."""


@dataclass
class PacsShares:
    """The node's PACS client and the shares it is running (bounded by
    `pacs_concurrent_shares`); stored in the app under `PACS`."""

    client: PacsClient | None
    """None when no `pacs_url` is set."""
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Shares in flight, by share id."""
    orders: dict[str, ShareOrder] = field(default_factory=dict)
    """What each share in flight is (its room, its sharer), by share id."""
    cancelled: set[str] = field(default_factory=set)
    """Shares someone stopped (their task ends as `cancelled`, not as a shutdown)."""
    stopped: dict[str, ShareOrder] = field(default_factory=dict)
    """The last `STOPPED_KEPT` shares that ended stopped, by share id: a second click on "Stop"
    arriving after the share ended is answered as done, not as an unknown share."""
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
            expected = await _instances_to_share(node, client, room_id, study_uid, series_uid)
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
        sum(expected.values()),
        identity.sub,
        participant_id,
        expected,
    )
    node.audit.append(
        "pacs_share_started",
        "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant_id,
        share=order.share_id,
        total=order.total,
        series=len(expected),
        **digests,
    )
    task = asyncio.get_running_loop().create_task(run_share(node, client, order, shares.cancelled))
    shares.running[order.share_id] = task
    shares.orders[order.share_id] = order

    def ended(_: asyncio.Task[None]) -> None:
        shares.running.pop(order.share_id, None)
        shares.orders.pop(order.share_id, None)
        if order.share_id in shares.cancelled:
            shares.cancelled.discard(order.share_id)
            shares.stopped[order.share_id] = order
            while len(shares.stopped) > STOPPED_KEPT:
                del shares.stopped[next(iter(shares.stopped))]

    task.add_done_callback(ended)
    return web.json_response(
        {"share_id": order.share_id, "total": order.total, "state": "running"}, status=202
    )


async def cancel_share(request: web.Request) -> web.Response:
    """`DELETE /api/rooms/{room}/pacs/shares/{share_id}`: the sharer stops their share; the
    slices that arrived stay (the room's `pacs_share_progress` ends `failed`, `cancelled`)."""
    node = request.app[NODE]
    identity, room_id, participant = await room_participant(request, "share_image")
    shares = request.app[PACS]
    share_id = request.match_info["share_id"]
    order = shares.orders.get(share_id) or shares.stopped.get(share_id)
    if order is None or order.room_id != room_id:
        raise NotFound("no such share running in this room")
    if order.sub != identity.sub:
        audit_refusal(request, "pacs_not_sharer", sub=identity.sub, room=room_id)
        raise PolicyDenied("only whoever started a share may stop it")
    if share_id not in shares.orders:  # a second click that came after it ended: done
        return web.json_response({"share_id": share_id, "state": "cancelled"}, status=200)
    if share_id in shares.cancelled:  # a second click: the share is already ending
        return web.json_response({"share_id": share_id, "state": "cancelling"}, status=202)
    shares.cancelled.add(share_id)
    shares.running[share_id].cancel()
    node.audit.append(
        "pacs_share_cancelled",
        "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant.participant_id,
        share=share_id,
    )
    return web.json_response({"share_id": share_id, "state": "cancelling"}, status=202)


async def _instances_to_share(
    node: Node, client: PacsClient, room_id: str, study_uid: str, series_uid: str
) -> dict[str, int]:
    """How many instances each series to share holds (by its UID as replaced for the room),
    once it is clear they may all come into the room: within `pacs_max_instances`, each series
    within the frames one image may hold (`ImageLimits.max_frames`: a larger series is refused
    whole rather than cut, so a stack never silently lacks slices), and the room's
    `max_images_per_room` (a series is one image)."""
    found = [s for s in await client.search_series(study_uid, series_uid) if s.instances]
    total = sum(s.instances for s in found)
    if total == 0:
        raise NotFound("the PACS has no instances for this series")
    if total > node.settings.pacs_max_instances:
        raise PayloadTooLarge(
            "the series has more instances than one share may bring",
            limit=node.settings.pacs_max_instances,
        )
    max_frames = node.images.limits.max_frames
    if any(s.instances > max_frames for s in found):
        raise PayloadTooLarge("the series has more slices than one image may hold",
                              limit=max_frames)  # fmt: skip
    held = len(await asyncio.to_thread(node.images.list, room_id))
    if held + len(found) > node.settings.max_images_per_room:
        raise TooManyImages(
            "the room cannot hold this many more images",
            limit=node.settings.max_images_per_room,
        )
    key = await asyncio.to_thread(node.images.room_key, room_id)
    secret = room_uid_secret(key, room_id)
    expected: dict[str, int] = {}
    for series in found:
        mapped = replace_uid(series.series_uid, secret)
        expected[mapped] = expected.get(mapped, 0) + series.instances
    return expected


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
    app.router.add_delete("/api/rooms/{room}/pacs/shares/{share_id}", cancel_share)
