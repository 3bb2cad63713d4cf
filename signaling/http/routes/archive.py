"""The archive's REST API: what archivists (and, for keys and retention, admins) ask of recordings.

Every route authenticates a bearer token and checks one policy action; every list, play,
verify, export, hold, shred and key operation is audited. The work (manifests, decryption,
remuxing) runs in worker threads; the event loop only moves bytes.

    GET    /api/recordings                      list_recordings  search (room, since, until,
                                                                 participant, department,
                                                                 case, status)
    GET    /api/recordings/{id}                 list_recordings  one recording: summary, tracks,
                                                                 cases, participants, consent,
                                                                 its legal hold
    POST   /api/recordings/{id}/verify          play_recording   every segment, the signature,
                                                                 the manifest's hash in the audit
    GET    /api/recordings/{id}/streams/{name}  play_recording   a stream's stored records, with
                                                                 HTTP Range (seek)
    GET    /api/recordings/{id}/media           play_recording   WebM/Matroska remux (?case=N or
                                                                 ?start_ms=&end_ms=; ?tracks=a,b
                                                                 only those tracks) to play
    GET    /api/recordings/{id}/annotations     play_recording   the sidecar JSON of that range
    GET    /api/recordings/{id}/export          export_recording the same file, as an attachment
    GET    /api/recordings/{id}/bundle          export_recording a signed evidence bundle (ZIP)
    GET    /api/recordings/{id}/images          play_recording   the shared images stored with it
    GET    /api/recordings/{id}/images/{image}/{frame}  play_recording  one frame, watermarked
                                                                 for its viewer

Exports are remuxed (never re-encoded) into a scratch folder that is memory, not disk, by
default (`/dev/shm`; the `export_scratch_dir` setting), streamed to the caller, then deleted:
plaintext media is not written to the server's disks.
    POST   /api/recordings/{id}/hold            hold_recording   legal hold {"reason": ...}
    DELETE /api/recordings/{id}/hold            hold_recording   release it
    POST   /api/retention/run                   run_retention    shred what has expired
    GET    /api/keys                            manage_keys      wrapped data keys (no key material)
    POST   /api/keys/rotate                     manage_keys      re-wrap every data key under a
                                                                 new KEK
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from core.errors import AuthenticationError, BadMessage, PolicyDenied
from recorder.catalogue import RecordingSummary
from recorder.roomkeys import rotate_kek
from recorder.streams import TrackStream
from signaling.audit import parse_time
from signaling.http.auth import audit_refusal, authenticate, peer_address
from signaling.http.bodies import json_body
from signaling.http.forwarding import (
    FORWARDED_HEADER,
    REQUEST_CALLER,
    SIGNATURE_HEADER,
    ForwardedCaller,
    forwarded_caller,
    verify,
)
from signaling.http.node import NODE
from signaling.http.sessions import REQUEST_SESSION, require_recent_authentication
from signaling.identity import Identity
from signaling.logs import scrub
from signaling.policy import RecordingScope

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
MAX_RANGE_BYTES = 8 * 1024 * 1024
"""Largest byte range one request returns (an open-ended range is cut to this)."""
STREAM_MEDIA_TYPE = "application/vnd.consilium.records"
"""A stream's stored records: arrival ms (u32), length (u32), the bytes (an RTP packet or an
event), repeated; see recorder/manifest.py."""


def summary_json(summary: RecordingSummary) -> dict[str, Any]:
    """A summary as the API shows it."""
    out = asdict(summary)
    for key in ("participants", "departments", "cases", "organisations", "participant_names"):
        out[key] = list(out[key])
    return out


def _recording_id(request: web.Request) -> str:
    return request.match_info["recording"]


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadMessage(f"{name} must be an integer") from None
    if value < 0:
        raise BadMessage(f"{name} must not be negative")
    return value


def _tracks_query(request: web.Request) -> list[str] | None:
    """`?tracks=a,b`: the track ids to export (None: all of them)."""
    raw = request.query.get("tracks")
    if not raw:
        return None
    ids = [t for t in raw.split(",") if t]
    if len(ids) > 64 or any(len(t) > 200 for t in ids):
        raise BadMessage("tracks: at most 64 track ids of at most 200 characters")
    return ids


def _time_query(request: web.Request, name: str) -> datetime | None:
    try:
        return parse_time(request.query.get(name))
    except ValueError as exc:
        raise BadMessage(f"{name}: {exc}") from None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _range_number(digits: str) -> int:
    """A Range header's byte position: any number past every stream is the same as the
    largest (Python refuses to parse a 5000-digit one; RFC 9110 gives no bound)."""
    return int(digits) if len(digits) <= 18 else 10**18


def _unsatisfiable(length: int) -> web.Response:
    return web.json_response(
        {"error": "range_not_satisfiable", "message": f"the stream has {length} bytes"},
        status=416,
        headers={"Content-Range": f"*/{length}"},
    )


def recording_scope(summary: RecordingSummary) -> RecordingScope:
    """Whose a recording is, for the policy: the departments and organisations of those present."""
    return RecordingScope(summary.recording_id, summary.departments, summary.organisations)


async def authorised(request: web.Request, action: str) -> tuple[Identity, RecordingSummary]:
    """The caller, allowed `action` on the recording the path names (audited if not); the
    policy scopes each recording to the organisation and departments of those present, as rooms
    are."""
    node = request.app[NODE]
    service = node.archive
    identity = await authenticate(request, action)
    if action == "play_recording":
        # Playing, verifying or exporting needs a recent authentication (RFC 9470 step-up).
        require_recent_authentication(request)
    summary = await service.run(service.archive.summary, _recording_id(request))
    decision = node.policy.decide_recording(identity, action, recording_scope(summary))
    if not decision:
        service.audit.append(
            "api_refused", "deny", sub=identity.sub, recording=summary.recording_id,
            reason=decision.reason, requested=action, path=scrub(request.path)[:200],
        )  # fmt: skip
        raise PolicyDenied(decision.reason)
    return identity, summary


async def list_recordings(request: web.Request) -> web.Response:
    """`GET /api/recordings`: the recordings matching the query that the caller may list."""
    node = request.app[NODE]
    service = node.archive
    identity = await authenticate(request, "list_recordings")
    q = request.query
    status = q.get("status") or None
    if status is not None and status not in (
        "recording", "complete", "interrupted", "failed", "damaged", "shredded",
    ):  # fmt: skip
        raise BadMessage(
            "status must be recording, complete, interrupted, failed, damaged or shredded"
        )
    criteria = {
        "room": q.get("room") or None,
        "since": _time_query(request, "since"),
        "until": _time_query(request, "until"),
        "participant": q.get("participant") or None,
        "department": q.get("department") or None,
        "case": q.get("case") or None,
        "status": status,
    }
    found = [
        summary
        for summary in await service.run(service.archive.search, **criteria)
        if node.policy.decide_recording(identity, "list_recordings", recording_scope(summary))
    ]
    filters = {k: str(v)[:100] for k, v in criteria.items() if v is not None}
    service.audit.append(
        "recordings_listed", "allow", sub=identity.sub, filters=filters, count=len(found)
    )
    listed = [summary_json(s) for s in found]
    if forwarded_caller(request) is not None:
        return web.json_response({"recordings": listed})  # this node's own, for the asker
    # The other live nodes' recordings, asked for this caller, each decided by its holder.
    others, unreachable = await node.forwarder.list_everywhere(request, _caller(request, identity))
    ids = {r["recording_id"] for r in listed}
    for summary in others:
        if summary.get("recording_id") not in ids:
            ids.add(summary.get("recording_id"))
            listed.append(summary)
    listed.sort(key=lambda r: (r.get("started") or "", r.get("recording_id") or ""), reverse=True)
    return web.json_response({"recordings": listed, "unreachable_nodes": unreachable})


def _caller(request: web.Request, identity: Identity) -> ForwardedCaller:
    """The caller authenticated here, as this node vouches for them to another."""
    session = request.get(REQUEST_SESSION)
    auth_time = None if session is None else session.auth_time
    return ForwardedCaller(identity, request.app[NODE].settings.node_id, auth_time)


def _archive_route(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical.startswith("/api/recordings")


@web.middleware
async def forward_to_holder(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The recordings' routes, in a cluster (`signaling.http.forwarding`): a request another
    node forwarded is verified, and its caller authenticated as that node vouches; a request
    for a recording another node holds is authenticated here and forwarded there."""
    if not _archive_route(request):
        return await handler(request)
    node = request.app[NODE]
    forwarder = node.forwarder
    if FORWARDED_HEADER in request.headers or SIGNATURE_HEADER in request.headers:
        body = await request.read()
        try:
            request[REQUEST_CALLER] = verify(
                forwarder.key, request.method, request.path_qs, request.headers, body,
                node.settings.node_id, forwarder.seen, time.time(),
            )  # fmt: skip
        except AuthenticationError as exc:
            audit_refusal(request, "forwarding_refused", ip=peer_address(request), why=exc.message)
            raise
        return await handler(request)
    recording_id = request.match_info.get("recording")
    if recording_id is None or node.archive.holds(recording_id):
        return await handler(request)
    holder = await forwarder.holder(recording_id)
    if holder is None:
        return await handler(request)  # held nowhere: this node's answer (not found)
    identity = await authenticate(request, None)
    node.audit.append(
        "archive_forwarded", "info", sub=identity.sub, recording=recording_id, node=holder,
        path=scrub(request.path)[:200],
    )  # fmt: skip
    return await forwarder.forward(request, _caller(request, identity), holder)


async def get_recording(request: web.Request) -> web.Response:
    """`GET /api/recordings/{id}`: one recording's summary, tracks, cases, consent and hold."""
    service = request.app[NODE].archive
    identity, summary = await authorised(request, "list_recordings")
    recording_id = summary.recording_id
    manifest = await service.run(service.archive.manifest, recording_id)
    service.audit.append(
        "recording_listed", "allow", sub=identity.sub, room=summary.room_id,
        recording=recording_id,
    )  # fmt: skip
    body = summary_json(summary)
    body["tracks"] = [asdict(t) for t in manifest.tracks]
    body["streams"] = {
        name: {"segments": len(segments), "records": sum(s.records for s in segments)}
        for name, segments in manifest.streams.items()
    }
    body["case_markers"] = [asdict(c) for c in manifest.cases]
    body["participant_list"] = [asdict(p) for p in manifest.participants]
    body["consent"] = [asdict(c) for c in manifest.consent]
    hold = await service.run(service.archive.hold_of, recording_id)
    body["hold"] = asdict(hold) if hold is not None else None
    body["notes"] = list(manifest.notes)
    body["failure"] = manifest.failure
    body["stopped_at_ms"] = manifest.stopped_at_ms
    return web.json_response(body)


async def verify_recording(request: web.Request) -> web.Response:
    """`POST /api/recordings/{id}/verify`: segments, signature, the manifest in the audit log."""
    service = request.app[NODE].archive
    identity, summary = await authorised(request, "play_recording")
    recording_id = summary.recording_id
    result = await service.run(service.verify, recording_id)
    service.audit.append(
        "recording_verified", "allow" if result["ok"] else "deny", sub=identity.sub,
        recording=recording_id, ok=result["ok"], problems=len(result["problems"]),
    )  # fmt: skip
    return web.json_response(result)


async def read_stream(request: web.Request) -> web.StreamResponse:
    """`GET /api/recordings/{id}/streams/{name}`: a stream's stored records, with HTTP Range."""
    service = request.app[NODE].archive
    identity, summary = await authorised(request, "play_recording")
    recording_id = summary.recording_id
    reader = await service.run(
        TrackStream, service.archive, recording_id, request.match_info["stream"]
    )
    length = reader.length
    start, end = 0, length  # end exclusive
    status = 200
    header = request.headers.get("Range")
    if header is not None:
        match = _RANGE.match(header.strip())
        if match is None or match.group(1) == match.group(2) == "":
            return _unsatisfiable(length)
        first, last = match.groups()
        if first == "":  # the last N bytes
            start, end = max(0, length - _range_number(last)), length
        else:
            start = _range_number(first)
            end = min(length, _range_number(last) + 1) if last else length
        if start >= length or start >= end:
            return _unsatisfiable(length)
        status = 206
    end = min(end, start + MAX_RANGE_BYTES)
    if status == 200 and end < length:
        status = 206  # cut to the bound: say which part this is
    body = await asyncio.to_thread(reader.read, start, end - start)
    service.audit.append(
        "recording_played", "allow", sub=identity.sub, recording=recording_id,
        stream=reader.stream, offset=start, bytes=len(body),
    )  # fmt: skip
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{length}"
    return web.Response(body=body, status=status, content_type=STREAM_MEDIA_TYPE, headers=headers)


async def send_file(
    request: web.Request, path: Path, media_type: str, attachment: bool
) -> web.StreamResponse:
    """Stream a file to the caller, inline or as an attachment, never cached."""
    disposition = "attachment" if attachment else "inline"
    size = (await asyncio.to_thread(path.stat)).st_size
    response = web.StreamResponse(
        headers={
            "Content-Type": media_type,
            "Content-Length": str(size),
            "Content-Disposition": f'{disposition}; filename="{path.name}"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    file = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, 1024 * 1024):
            await response.write(chunk)
    finally:
        file.close()
    await response.write_eof()
    return response


async def exported(request: web.Request, what: str) -> web.StreamResponse:
    """Remux or bundle `what` into a scratch folder, audit it with its SHA-256, stream it, and
    delete it."""
    service = request.app[NODE].archive
    action = "play_recording" if what in ("media", "annotations") else "export_recording"
    identity, summary = await authorised(request, action)
    recording_id = summary.recording_id
    case = _int_query(request, "case")
    start, end = _int_query(request, "start_ms"), _int_query(request, "end_ms")
    track_ids = _tracks_query(request)
    service.scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=service.scratch_dir))
    try:
        if what == "bundle":
            path = await service.run(service.bundle, recording_id, scratch, case)
            media_type = "application/zip"
        elif what == "annotations":
            path = await service.run(service.annotations, recording_id, scratch, case, start, end)
            media_type = "application/json"
        else:
            path, _, container = await service.run(
                service.export, recording_id, scratch, case, start, end, track_ids
            )
            media_type = "video/webm" if container == "webm" else "video/x-matroska"
        digest = await asyncio.to_thread(_sha256_of, path)
        service.audit.append(
            {"media": "recording_played", "annotations": "recording_played",
             "export": "recording_exported", "bundle": "recording_exported"}[what],
            "allow", sub=identity.sub, recording=recording_id, part=what, case=case,
            start_ms=start, end_ms=end, tracks=track_ids, sha256=digest,
        )  # fmt: skip
        return await send_file(request, path, media_type, attachment=what != "media")
    finally:
        # Synchronously (a folder in memory, quick): an await here could be cancelled when
        # the client hangs up, and the plaintext export must not stay behind.
        shutil.rmtree(scratch, ignore_errors=True)


async def recording_media(request: web.Request) -> web.StreamResponse:
    """`GET /api/recordings/{id}/media`: the WebM/Matroska remux to play."""
    return await exported(request, "media")


async def recording_annotations(request: web.Request) -> web.StreamResponse:
    """`GET /api/recordings/{id}/annotations`: the sidecar JSON of that range."""
    return await exported(request, "annotations")


async def export_recording(request: web.Request) -> web.StreamResponse:
    """`GET /api/recordings/{id}/export`: the remux, as an attachment."""
    return await exported(request, "export")


async def evidence_bundle(request: web.Request) -> web.StreamResponse:
    """`GET /api/recordings/{id}/bundle`: the signed evidence bundle (ZIP)."""
    return await exported(request, "bundle")


async def list_recorded_images(request: web.Request) -> web.Response:
    """`GET /api/recordings/{id}/images`: the shared images stored with the recording."""
    service = request.app[NODE].archive
    identity, summary = await authorised(request, "play_recording")
    recording_id = summary.recording_id
    stored = await service.run(service.archive.images, recording_id)
    service.audit.append(
        "recording_images_listed", "allow", sub=identity.sub, recording=recording_id,
        count=len(stored),
    )  # fmt: skip
    return web.json_response({"images": [meta for meta, _ in stored]})


async def recorded_image(request: web.Request) -> web.Response:
    """`GET /api/recordings/{id}/images/{image}/{frame}`: one frame, watermarked for its viewer."""
    service = request.app[NODE].archive
    identity, summary = await authorised(request, "play_recording")
    recording_id = summary.recording_id
    image_id = request.match_info["image_id"]
    try:
        frame = int(request.match_info["frame"])
    except ValueError:
        raise BadMessage("frame must be an integer") from None
    body, media_type = await service.run(service.image, recording_id, image_id, frame, identity.sub)
    service.audit.append(
        "recording_image_viewed", "allow", sub=identity.sub, recording=recording_id,
        image=image_id, frame=frame,
    )  # fmt: skip
    return web.Response(body=body, content_type=media_type,
                        headers={"Cache-Control": "no-store"})  # fmt: skip


async def hold_recording(request: web.Request) -> web.Response:
    """`POST /api/recordings/{id}/hold`: a legal hold, with its reason."""
    service = request.app[NODE].archive
    identity, summary = await authorised(request, "hold_recording")
    body = await json_body(request)
    reason = str(body.get("reason", "")).strip()
    if not reason:
        raise BadMessage("a legal hold needs a reason (a matter or complaint reference)")
    held = await service.run(service.archive.hold, summary.recording_id, reason[:200],
                             identity.sub)  # fmt: skip
    return web.json_response(asdict(held), status=201)


async def release_hold(request: web.Request) -> web.Response:
    """`DELETE /api/recordings/{id}/hold`: release the legal hold."""
    service = request.app[NODE].archive
    identity, summary = await authorised(request, "hold_recording")
    released = await service.run(service.archive.release, summary.recording_id,
                                 identity.sub)  # fmt: skip
    return web.json_response(asdict(released))


async def run_retention(request: web.Request) -> web.Response:
    """`POST /api/retention/run`: shred the recordings whose retention has ended."""
    service = request.app[NODE].archive
    identity = await authenticate(request, "run_retention")
    shredded = await service.run(service.archive.run_retention)
    if shredded and (store := request.app[NODE].archive_store) is not None:
        store.nudge()  # their copies in the object store go too
    service.audit.append(
        "retention_run", "allow", sub=identity.sub, shredded=len(shredded),
        recordings=shredded,
    )  # fmt: skip
    return web.json_response({"shredded": shredded})


async def list_keys(request: web.Request) -> web.Response:
    """`GET /api/keys`: the wrapped data keys (no key material)."""
    service = request.app[NODE].archive
    identity = await authenticate(request, "manage_keys")
    keyring = service.archive.keyring
    entries = await service.run(keyring.list)
    service.audit.append("keys_listed", "allow", sub=identity.sub, count=len(entries))
    return web.json_response(
        {
            "kek_id": keyring.kek.key_id,
            "keys": [
                {"id": e.recording_id, "kek_id": e.kek_id, "created": e.created} for e in entries
            ],
        }
    )


async def rotate_keys(request: web.Request) -> web.Response:
    """`POST /api/keys/rotate`: re-wrap every data key under a new KEK."""
    service = request.app[NODE].archive
    identity = await authenticate(request, "manage_keys")
    keyring = service.archive.keyring
    old = keyring.kek.key_id
    result = await service.run(rotate_kek, keyring, service.kek_file)
    service.audit.append(
        "keys_rotated", "allow", sub=identity.sub, old_kek=old, new_kek=keyring.kek.key_id,
        rewrapped=result.rewrapped, already_current=result.already_current,
    )  # fmt: skip
    return web.json_response(
        {
            "old_kek_id": old,
            "kek_id": keyring.kek.key_id,
            "rewrapped": result.rewrapped,
            "already_current": result.already_current,
        }
    )


def add_archive_routes(app: web.Application) -> None:
    """Add the archive's routes (see the table above)."""
    app.router.add_get("/api/recordings", list_recordings)
    app.router.add_get("/api/recordings/{recording}", get_recording)
    app.router.add_post("/api/recordings/{recording}/verify", verify_recording)
    app.router.add_get("/api/recordings/{recording}/streams/{stream}", read_stream)
    app.router.add_get("/api/recordings/{recording}/media", recording_media)
    app.router.add_get("/api/recordings/{recording}/annotations", recording_annotations)
    app.router.add_get("/api/recordings/{recording}/export", export_recording)
    app.router.add_get("/api/recordings/{recording}/bundle", evidence_bundle)
    app.router.add_get("/api/recordings/{recording}/images", list_recorded_images)
    app.router.add_get("/api/recordings/{recording}/images/{image_id}/{frame}", recorded_image)
    app.router.add_post("/api/recordings/{recording}/hold", hold_recording)
    app.router.add_delete("/api/recordings/{recording}/hold", release_hold)
    app.router.add_post("/api/retention/run", run_retention)
    app.router.add_get("/api/keys", list_keys)
    app.router.add_post("/api/keys/rotate", rotate_keys)
