"""The aiohttp application: health, REST API, the signalling WebSocket and the web client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import BodyPartReader, WSMsgType, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import __version__
from core.errors import (
    AuthenticationError,
    BadMessage,
    ConfigError,
    Conflict,
    ConsiliumError,
    IntegrityError,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
    ServerError,
    TimedOut,
    Unavailable,
)
from core.ratelimit import TokenBucket, WindowCounter
from core.rooms import valid_room_id
from imaging.burnedin import Box
from imaging.sniff import ImageLimits, ImageTooLarge
from imaging.store import ImageStore, SharedImage
from imaging.watermark import Mark, load_or_create_watermark_key, watermark
from imaging.worker import ImageWorkers
from recorder.diskspace import MIB, DiskSpace
from recorder.recovery import recover_interrupted
from recorder.roomkeys import KEK_FILE_NAME, RoomKeys, open_keyring
from recorder.sink import RecordingSettings
from sfu.ice import IceSettings, client_ice_servers
from sfu.room import MediaServer, MediaSettings
from signaling import protocol as p
from signaling.archive_api import ARCHIVE, ArchiveService, retention_settings
from signaling.archive_api import register as register_archive
from signaling.audit import HEADS_FILE, AuditLog, generate_audit_key, iter_entries, parse_time
from signaling.connection import (
    CLOSE_HANDSHAKE_S,
    Connection,
    ConsiliumWebSocket,
    limit_send_buffer,
)
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER, DevelopmentIdP
from signaling.devpage import add_dev_routes
from signaling.identity import Identity
from signaling.logs import scrub
from signaling.policy import Policy, RoomScope
from signaling.recording import Recorder, recorder_audit
from signaling.rooms import Rooms, room_scope, room_state
from signaling.settings import Settings, is_loopback
from signaling.state import ParticipantRecord, Revocation, RoomRecord, StateStore, open_store
from signaling.tokens import JwksFile, JwksUrl, KeySource, OidcDiscovery, TokenVerifier
from signaling.witness import SyslogWitness

log = logging.getLogger("consilium.server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), microphone=(self), display-capture=(self), "
    "geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass
class Node:
    """Everything one running node holds; stored in the app under `NODE`."""

    settings: Settings
    store: StateStore
    policy: Policy
    verifier: TokenVerifier
    audit: AuditLog
    rooms: Rooms
    key_source: KeySource
    dev_idp: DevelopmentIdP | None
    join_attempts: WindowCounter
    room_keys: RoomKeys
    """Each room's data key (shared images, the annotation log), wrapped in the keyring."""
    images: ImageStore
    """Each room's shared images, de-identified and encrypted at rest."""
    watermark_key: bytes
    """Key of the invisible mark every served image carries."""
    image_slots: asyncio.Semaphore
    """Bounds the image work (de-identify, render, watermark) running at once."""
    image_workers: ImageWorkers
    """The memory-capped processes that decode uploads (a decompression bomb fails there)."""
    audit_key: Ed25519PrivateKey
    """The node's Ed25519 key: signs the audit log's checkpoints and recording manifests."""
    pending: int = 0
    image_queue: int = 0
    """Image requests waiting for or holding a slot."""
    ready: bool = False
    retention_swept: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the retention sweep that runs at start has finished."""


NODE = web.AppKey("node", Node)


def _key_source(settings: Settings) -> KeySource:
    if settings.jwks:
        if settings.jwks.startswith(("https://", "http://")):
            return JwksUrl(settings.jwks, refetch_interval_s=settings.jwks_refetch_interval_s)
        return JwksFile(Path(settings.jwks))
    assert settings.oidc_issuer is not None
    return OidcDiscovery(settings.oidc_issuer, refetch_interval_s=settings.jwks_refetch_interval_s)


def ice_settings(settings: Settings) -> IceSettings:
    """The SFU's ICE settings from the node's settings (ConfigError when unusable)."""
    try:
        return IceSettings(
            host_addresses=tuple(settings.ice_host_addresses),
            # Browsers of a loopback-only node are on this host: loopback candidates reach them.
            loopback=is_loopback(settings.host),
            port_min=settings.ice_port_min,
            port_max=settings.ice_port_max,
            stun_urls=tuple(settings.stun_urls),
            turn_urls=tuple(settings.turn_urls),
            turn_secret=settings.turn_secret,
            turn_ttl_s=settings.turn_ttl_s,
        )
    except ValueError as exc:
        raise ConfigError(f"ICE settings: {exc}") from None


def _image_frames(
    images: ImageStore, room_id: str, image_id: str | None
) -> list[tuple[dict[str, Any], list[bytes]]]:
    """A room's shared images (or one) as the recorder stores them: metadata and frames."""
    found = []
    for image in images.list(room_id):
        if image_id is not None and image.image_id != image_id:
            continue
        frames = [images.frame(room_id, image.image_id, i)[0] for i in range(image.frames)]
        found.append(({**image.to_wire(), "media_type": image.media_type}, frames))
    return found


def kek_location(settings: Settings) -> Path:
    """The key-encryption key file: `kek_file`, or `kek.json` in the key folder."""
    return settings.kek_file or settings.keys_directory() / KEK_FILE_NAME


def audit_witness(settings: Settings) -> SyslogWitness | None:
    """The syslog-over-TLS witness of the audit checkpoints, if one is configured."""
    address = settings.witness_address()
    if address is None:
        return None
    return SyslogWitness(*address, node=settings.node_id, cafile=settings.audit_witness_ca)


def build_node(settings: Settings) -> Node:
    """Load keys, policy and state for one node (nothing listens yet)."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    key_dir = settings.keys_directory()
    audit_key = generate_audit_key(key_dir)
    audit = AuditLog(
        data_dir / "audit",
        audit_key,
        checkpoint_every=settings.audit_checkpoint_every,
        fsync=settings.audit_fsync,
        heads_file=key_dir / HEADS_FILE,
        witness=audit_witness(settings),
    )
    policy = Policy.load(settings.policy_file)
    dev_idp: DevelopmentIdP | None = None
    if settings.dev_mode:
        dev_idp = DevelopmentIdP.load_or_create(data_dir)
        source: KeySource = JwksFile(dev_idp.jwks_path)
        # Development tokens always carry the development IdP's issuer and audience.
        issuer, audience = DEV_ISSUER, DEV_AUDIENCE
    else:
        source = _key_source(settings)
        issuer = settings.jwt_issuer or settings.oidc_issuer or ""
        audience = settings.jwt_audience or "consilium"
        if not issuer:
            raise ConfigError("CONSILIUM_JWT_ISSUER is required with CONSILIUM_JWKS")

    def on_key_refresh(reason: str, n_keys: int) -> None:
        audit.append("token_key_refresh", "info", reason=reason, keys=n_keys)

    verifier = TokenVerifier(
        source,
        issuer=issuer,
        audience=audience,
        leeway_s=settings.jwt_leeway_s,
        on_key_refresh=on_key_refresh,
    )
    store = open_store(settings.redis, data_dir, settings.node_id)
    ice = ice_settings(settings)
    rooms = Rooms(
        settings,
        store,
        policy,
        verifier,
        audit,
        ice_servers=lambda identity: client_ice_servers(ice, identity.sub),
    )
    room_keys = RoomKeys(open_keyring(data_dir, kek_location(settings)))
    images = ImageStore(
        data_dir,
        room_keys.key_for,
        max_images_per_room=settings.max_images_per_room,
        limits=ImageLimits(max_bytes=settings.max_image_bytes),
    )
    recordings_dir = data_dir / "recordings"
    recover_interrupted(recordings_dir, audit_key, recorder_audit(audit))
    if settings.media:
        rooms.media = MediaServer(
            MediaSettings(
                video_codecs=tuple(settings.video_codecs),
                ice=ice,
                data_dir=data_dir,
                room_key=room_keys.key_for,
                image_info=images.lookup,
            ),
            rooms.media_notify,
        )
        rooms.recorder = Recorder(
            recordings_dir,
            room_keys.keyring,
            audit_key,
            audit,
            rooms.media,
            notice_version=settings.recording_notice_version,
            settings=RecordingSettings(segment_seconds=settings.recording_segment_seconds),
            broadcast=rooms.announce,
            notify=rooms.notify_message,
            images=lambda room_id, image_id: _image_frames(images, room_id, image_id),
            disk=DiskSpace(settings.disk_reserve_mb * MIB),
        )
    return Node(
        settings=settings,
        store=store,
        policy=policy,
        verifier=verifier,
        audit=audit,
        rooms=rooms,
        key_source=source,
        dev_idp=dev_idp,
        join_attempts=WindowCounter(settings.join_attempts_per_ip_per_min, 60.0),
        room_keys=room_keys,
        images=images,
        watermark_key=load_or_create_watermark_key(data_dir),
        image_slots=asyncio.Semaphore(settings.image_workers),
        image_workers=ImageWorkers(settings.image_workers),
        audit_key=audit_key,
    )


# -- middleware -------------------------------------------------------------------------------


@web.middleware
async def errors_and_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Map every error to a JSON body (the security headers are added by `security_headers`)."""
    try:
        response = await handler(request)
    except ConsiliumError as exc:
        response = web.json_response(exc.to_json(), status=exc.http_status)
    except IntegrityError as exc:
        # Stored data failed its check (a manifest signed by another key, a damaged file):
        # say what failed, as `verify` would, rather than "internal error".
        log.warning("stored data failed verification", extra={"path": scrub(request.path)})
        response = web.json_response(
            {"error": "integrity_failed", "message": str(exc)[:500]}, status=409
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "bad_request"
        )
        response = web.json_response(
            {"error": code, "message": exc.reason}, status=exc.status, headers=exc.headers
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        response = web.json_response(ServerError("internal error").to_json(), status=500)
    return response


HSTS = "max-age=31536000"
"""Strict-Transport-Security when the node is reached over HTTPS: browsers refuse plain HTTP to
it for a year. Without includeSubDomains: other hospital hosts under the same domain may still
serve HTTP."""


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Add the security headers to every response as it is prepared: also to the streamed
    ones (exports, bundles, media) a handler prepares itself, which a middleware sees too late."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    if request.app[NODE].settings.own_origin.startswith("https://"):
        # Served over TLS, or behind a TLS-terminating proxy at an https `public_url`.
        response.headers.setdefault("Strict-Transport-Security", HSTS)


def _peer(request: web.Request) -> str:
    return request.remote or "unknown"


def _audit_refusal(request: web.Request, reason: str, **fields: Any) -> None:
    """Audit an API request refused (`api_refused`, outcome deny), with its path scrubbed."""
    request.app[NODE].audit.append(
        "api_refused", "deny", reason=reason, path=scrub(request.path)[:200], **fields
    )


def _decide_in_room(
    request: web.Request,
    identity: Identity,
    room_id: str,
    scope: RoomScope,
    actions: tuple[str, ...] = ("join_room",),
    refused: str = p.JOIN_REFUSED,
) -> None:
    """Every one of `actions` allowed for `identity` in the room, decided as the join is; the
    first refusal is audited and raised as `refused` with the refusal's code only (the policy's
    detail stays in the audit log)."""
    node = request.app[NODE]
    for action in dict.fromkeys(actions):
        decision = node.policy.decide(identity, action, scope)
        if not decision:
            _audit_refusal(
                request, decision.reason, sub=identity.sub, room=scrub(room_id)[:64],
                requested=action,
            )  # fmt: skip
            raise PolicyDenied(refused, reason=decision.refusal)


async def _authenticate(request: web.Request, action: str | None) -> Identity:
    """The identity behind `Authorization: Bearer <token>`, allowed to do `action`."""
    node = request.app[NODE]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _audit_refusal(request, "no_bearer_token", ip=_peer(request))
        raise AuthenticationError("an Authorization: Bearer token is required", reason="missing")
    try:
        identity = await node.verifier.verify(token.strip())
    except AuthenticationError as exc:
        _audit_refusal(request, str(exc.details.get("reason", "invalid_token")), ip=_peer(request))
        raise
    revoked = await node.store.is_revoked(jti=identity.jti, sub=identity.sub)
    if revoked is not None:
        _audit_refusal(request, f"revoked_{revoked.kind}", sub=identity.sub)
        raise AuthenticationError("this token or identity has been revoked", reason="revoked")
    if action is not None:
        decision = node.policy.decide(identity, action)
        if not decision:
            _audit_refusal(request, decision.reason, sub=identity.sub, requested=action)
            raise PolicyDenied(decision.reason)
    return identity


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and (
        request.content_length > request.app[NODE].settings.max_request_bytes
    ):
        raise PayloadTooLarge("request body too large")
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("request body too large") from None
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadMessage("request body must be a JSON object")
    return body


# -- REST -------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """200 when the node is ready to serve, 503 otherwise."""
    node = request.app[NODE]
    status = 200 if node.ready else 503
    return web.json_response(
        {
            "status": "ok" if node.ready else "starting",
            "node": node.settings.node_id,
            "version": __version__,
        },
        status=status,
    )


async def readyz(request: web.Request) -> web.Response:
    """200 when the node can take joins now: started, and its shared state (Redis) answers;
    503 otherwise (a load balancer stops sending new clients; `/healthz` says it is alive)."""
    node = request.app[NODE]
    state_ok = node.ready and await node.store.ping()
    ready = node.ready and state_ok
    return web.json_response(
        {
            "status": "ready" if ready else "not_ready",
            "node": node.settings.node_id,
            "started": node.ready,
            "shared_state": "ok" if state_ok else "unreachable",
        },
        status=200 if ready else 503,
    )


async def api_info(request: web.Request) -> web.Response:
    """Public facts a client needs before it has a token."""
    node = request.app[NODE]
    return web.json_response(
        {
            "version": __version__,
            "dev_mode": node.settings.dev_mode,
            "max_message_bytes": node.settings.max_message_bytes,
        }
    )


class ScheduleRoom(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/rooms`."""

    room_id: str | None = None
    departments: list[str] = msgspec.field(default_factory=list)
    lobby: bool = True
    title: str = ""
    grants: list[str] = msgspec.field(default_factory=list)
    starts_at: float | None = None


async def create_room(request: web.Request) -> web.Response:
    """Schedule a room (a chair, or anyone the policy lets open rooms)."""
    node = request.app[NODE]
    identity = await _authenticate(request, None)
    if not node.policy.may_open_room(identity):
        _audit_refusal(request, "may_not_schedule_rooms", sub=identity.sub)
        raise PolicyDenied("your role may not schedule rooms")
    try:
        body = msgspec.convert(await _json_body(request), ScheduleRoom)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid room: {exc}") from None
    room_id = body.room_id or secrets.token_urlsafe(9)
    if not valid_room_id(room_id):
        raise BadMessage("room_id must be 1-64 letters, digits, '.', '_' or '-'")
    try:
        RoomScope(room_id=room_id, departments=tuple(body.departments), grants=tuple(body.grants))
    except ValueError as exc:
        raise BadMessage(f"grants are 'sub:<id>', 'dept:<name>' or 'org:<name>': {exc}") from None
    if len(body.title) > 200 or len(body.departments) > 32 or len(body.grants) > 256:
        raise BadMessage("room title, departments or grants over their bounds")
    departments = body.departments or list(identity.depts)
    # The scheduler must be allowed into the room it schedules, by the join's own rule: the
    # token grants this room id (a server-made id is new, so nobody else's), and the room
    # shares one of the scheduler's departments. The body's cross-department grants are for
    # the guests, not the scheduler: a chair cannot grant themselves another department.
    scheduler = identity
    if body.room_id is None:
        scheduler = dataclasses.replace(identity, rooms=(*identity.rooms, room_id))
    scope = RoomScope(room_id=room_id, departments=tuple(departments))
    _decide_in_room(
        request, scheduler, room_id, scope, ("join_room",), "you may not schedule this room"
    )
    if await node.store.count_rooms() >= node.settings.max_scheduled_rooms:
        raise RateLimited("too many rooms are scheduled")
    room = RoomRecord(
        room_id=room_id,
        departments=departments,
        lobby=body.lobby,
        title=body.title,
        grants=body.grants,
        scheduled_by=identity.sub,
        created_at=time.time(),
        starts_at=body.starts_at,
    )
    if not await node.store.create_room(room):
        raise Conflict("a room with that id exists")
    node.audit.append(
        "room_scheduled",
        "allow",
        sub=identity.sub,
        room=room_id,
        departments=room.departments,
        lobby=room.lobby,
    )
    return web.json_response(msgspec.to_builtins(room_state(room)), status=201)


async def _may_join(request: web.Request) -> tuple[str, RoomRecord | None]:
    """The room id and record of a `/api/rooms/{room}` route, once the caller's token may join
    it, decided as the join is; a refusal is audited and raised with its `reason` code (the
    policy's detail stays in the audit log)."""
    node = request.app[NODE]
    identity = await _authenticate(request, None)
    room_id = request.match_info["room"]
    room = await node.store.get_room(room_id)
    _decide_in_room(request, identity, room_id, room_scope(room, room_id))
    return room_id, room


async def room_admission(request: web.Request) -> web.Response:
    """Whether the caller's token may join the room now, asked by the web client before it opens
    any camera or microphone: `{"allowed": true}`, or the refusal the join would give."""
    await _may_join(request)
    return web.json_response({"allowed": True})


async def get_room(request: web.Request) -> web.Response:
    """A room's settings and who is in it, for someone whose token grants the room."""
    node = request.app[NODE]
    room_id, room = await _may_join(request)
    if room is None:
        raise NotFound("no such room")
    participants = await node.store.list_participants(room_id)
    return web.json_response(
        {
            "room": msgspec.to_builtins(room_state(room)),
            "opened": room.opened,
            "participants": len(participants),
            "lobby": len(await node.store.list_lobby(room_id)),
        }
    )


class RevocationRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/revocations`: exactly one of `jti` or `sub`."""

    jti: str | None = None
    sub: str | None = None
    reason: str = ""
    expires_at: float | None = None


async def create_revocation(request: web.Request) -> web.Response:
    """Revoke one token (`jti`) or a whole identity (`sub`) on every node, at once."""
    node = request.app[NODE]
    identity = await _authenticate(request, "revoke")
    try:
        body = msgspec.convert(await _json_body(request), RevocationRequest)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid revocation: {exc}") from None
    if (body.jti is None) == (body.sub is None):
        raise BadMessage("give exactly one of 'jti' or 'sub'")
    value = body.jti if body.jti is not None else body.sub
    assert value is not None
    if not value or len(value) > 256 or len(body.reason) > 500:
        raise BadMessage("jti/sub must be 1-256 characters, reason at most 500")
    revocation = Revocation(
        kind="jti" if body.jti is not None else "sub",
        value=value,
        reason=body.reason,
        by=identity.sub,
        at=time.time(),
        expires_at=body.expires_at,
    )
    try:
        await node.rooms.revoke(revocation)
    except Unavailable:
        # Nothing took effect: the administrator is told to retry (503), and it is on record.
        node.audit.append(
            "revoke",
            "deny",
            sub=revocation.value if revocation.kind == "sub" else None,
            by=identity.sub,
            reason="shared_state_unavailable",
            kind=revocation.kind,
            jti=revocation.value if revocation.kind == "jti" else None,
        )
        raise
    return web.json_response(revocation.to_dict(), status=201)


async def list_revocations(request: web.Request) -> web.Response:
    """Every revocation in force."""
    node = request.app[NODE]
    await _authenticate(request, "revoke")
    return web.json_response([r.to_dict() for r in await node.store.list_revocations()])


def _parse_time(value: str | None, name: str) -> datetime | None:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BadMessage(f"{name}: {exc}") from None


async def read_audit(request: web.Request) -> web.Response:
    """Audit entries, filtered (auditor only); the read itself is audited."""
    node = request.app[NODE]
    identity = await _authenticate(request, "read_audit")
    q = request.query
    try:
        limit = min(int(q.get("limit", "1000")), 10_000)
    except ValueError:
        raise BadMessage("limit must be an integer") from None
    since = _parse_time(q.get("since"), "since")
    until = _parse_time(q.get("until"), "until")
    filters = {k: scrub(q[k])[:200] for k in ("sub", "room", "action", "since", "until") if k in q}
    node.audit.append("audit_read", "allow", sub=identity.sub, filters=filters)
    entries = []
    for entry in iter_entries(
        node.settings.data_dir / "audit",
        sub=q.get("sub"),
        room=q.get("room"),
        action=q.get("action"),
        since=since,
        until=until,
    ):
        entries.append(msgspec.to_builtins(entry))
        if len(entries) >= limit:
            break
    return web.json_response({"entries": entries})


_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text metrics: from loopback, or with `Authorization: Bearer <metrics_token>`."""
    node = request.app[NODE]
    token = node.settings.metrics_token
    given = request.headers.get("Authorization", "").partition(" ")[2].strip()
    # A reverse proxy on this host connects from loopback on behalf of anyone: a request that
    # carries a forwarding header is the forwarded client's, and needs the token.
    forwarded = any(name in request.headers for name in _FORWARDING_HEADERS)
    local = is_loopback(request.remote or "") and not forwarded
    if not (local or (token and secrets.compare_digest(given.encode(), token.encode()))):
        raise PolicyDenied(
            "metrics are served to direct loopback clients, or with the metrics token"
        )
    values: dict[str, float] = {
        "consilium_ready": 1.0 if node.ready else 0.0,
        "consilium_connections": float(len(node.rooms.connections)),
        "consilium_rooms_on_node": float(len(node.rooms.by_room)),
        "consilium_pending_connections": float(node.pending),
        "consilium_audit_entries": float(node.audit.count),
    }
    for cause, count in node.rooms.media_failures.items():
        values[f'consilium_media_failures_total{{cause="{cause}"}}'] = float(count)
    if node.rooms.media is not None:
        for name, value in node.rooms.media.stats().items():
            values[f"consilium_sfu_{name}"] = float(value)
    # Counters are integers: printed whole, never in exponent form (Prometheus reads both, but
    # "1.23457e+06" would lose precision).
    lines = [
        f"{name} {int(value) if value.is_integer() else value}"
        for name, value in sorted(values.items())
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


# -- shared images ----------------------------------------------------------------------------

IMAGE_SWEEP_S = 3600.0
"""How often each node deletes the shared images older than `image_retention_days`."""
RECORDING_SWEEP_S = 86400.0
"""How often each node shreds the recordings whose retention has ended (and once at start)."""
_IMAGE_QUEUE_PER_WORKER = 8
_UPLOAD_PARTS = 8
_UPLOAD_FIELD_BYTES = 64
# Room for the multipart boundaries and part headers around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024


async def _room_participant(
    request: web.Request, action: str
) -> tuple[Identity, str, ParticipantRecord]:
    """The caller, the room and the caller's participant record, for every image route.

    Decided as the join is, on this request's token (not on who joined): revocation, role,
    second factor, the token's room grant and the room's departments and grants must all allow
    `join_room` in this room, and `action` too when it is another action; then only a current
    (joined, not waiting) participant of the room gets through. Every refusal is audited.
    """
    node = request.app[NODE]
    identity = await _authenticate(request, None)
    room_id = request.match_info["room"]
    if not valid_room_id(room_id):
        raise BadMessage("room id must be 1-64 letters, digits, '.', '_' or '-'")
    scope = room_scope(await node.store.get_room(room_id), room_id)
    _decide_in_room(
        request, identity, room_id, scope, ("join_room", action), "not allowed in this room"
    )
    participant = await node.rooms.current_participant(room_id, identity.sub)
    if participant is None:
        _audit_refusal(request, "not_a_participant", sub=identity.sub, room=room_id)
        raise PolicyDenied("only the room's current participants may do this")
    return identity, room_id, participant


async def _image_work(node: Node, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run CPU-heavy image work in a thread, at most `image_workers` at once, so the event
    loop (signalling) stays responsive; a bounded number of requests may wait (429 beyond)."""
    if node.image_queue >= node.settings.image_workers * _IMAGE_QUEUE_PER_WORKER:
        raise RateLimited("the server is busy with other images; try again shortly")
    node.image_queue += 1
    try:
        async with node.image_slots:
            return await asyncio.to_thread(work, *args, **kwargs)
    finally:
        node.image_queue -= 1


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
        raise BadMessage(f"malformed multipart body: {_short(str(exc))}") from None
    if not data:
        raise BadMessage("the upload has no `file` field (or it is empty)")
    return data, confirm


async def share_image(request: web.Request) -> web.Response:
    """`POST /api/rooms/{room}/images`: share an image into the room (`share_image`)."""
    node = request.app[NODE]
    identity, room_id, participant = await _room_participant(request, "share_image")
    try:
        data, confirm = await _read_upload(request, node.settings.max_image_bytes)
        record: SharedImage = await _image_work(
            node,
            node.images.share,
            room_id,
            data,
            shared_by_participant=participant.participant_id,
            uploader=identity.sub,
            confirm_burned_in=confirm,
            prepare=node.image_workers.prepare,
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
    node.audit.append(
        "image_held" if record.held else "image_shared",
        "info" if record.held else "allow",
        sub=identity.sub,
        room=room_id,
        participant=participant.participant_id,
        image=record.image_id,
        kind=record.kind,
        frames=record.frames,
        removed_tags=record.removed_tags,
        burned_in_confirmed=record.burned_in_confirmed,
        text_blanked=record.text_blanked,
        held_reasons=list(record.held_reasons),
    )
    if record.held:
        # Only the uploader sees it until they redact what is left and confirm (202).
        return web.json_response(record.to_wire(), status=202)
    await _announce_image(node, room_id, record)
    return web.json_response(record.to_wire(), status=201)


async def _announce_image(node: Node, room_id: str, record: SharedImage) -> None:
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
    identity, room_id, participant = await _room_participant(request, "share_image")
    image_id = request.match_info["image_id"]
    try:
        body = msgspec.convert(await _json_body(request), Redaction)
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
    record: SharedImage = await _image_work(
        node, node.images.release, room_id, image_id, identity.sub, boxes
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
    await _announce_image(node, room_id, record)
    return web.json_response(record.to_wire())


async def list_images(request: web.Request) -> web.Response:
    """`GET /api/rooms/{room}/images`: the room's images in sharing order (participants)."""
    node = request.app[NODE]
    identity, room_id, _participant = await _room_participant(request, "join_room")
    node.image_workers.warm()  # every client lists the images on joining: a share may follow
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
    identity, room_id, participant = await _room_participant(request, "join_room")
    image_id = request.match_info["image_id"]
    try:
        index = int(request.query.get("frame", "0"))
    except ValueError:
        raise BadMessage("frame must be an integer") from None
    purpose = request.query.get("purpose", "view")
    if purpose not in ("view", "export"):
        raise BadMessage("purpose must be view or export")
    mark = Mark(viewer=identity.sub, room=room_id, time=datetime.now(UTC).replace(microsecond=0))
    body, media_type = await _image_work(
        node, _served_frame, node.images, node.watermark_key, room_id, image_id, index, mark
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


async def delete_expired_images(node: Node) -> dict[str, list[str]]:
    """Delete the shared images older than `image_retention_days` (audited per room)."""
    cutoff = time.time() - node.settings.image_retention_days * 86400.0
    deleted: dict[str, list[str]] = await asyncio.to_thread(node.images.delete_expired, cutoff)
    for room_id, image_ids in deleted.items():
        node.audit.append(
            "images_deleted",
            "info",
            room=room_id,
            reason="retention",
            images=image_ids,
            count=len(image_ids),
        )
    return deleted


def _expired_annotation_logs(node: Node, cutoff: float) -> list[Path]:
    """Annotation logs whose last entry is older than `cutoff`, of rooms not in session here."""
    live = set(node.rooms.media.rooms) if node.rooms.media is not None else set()
    expired = []
    for path in sorted((node.settings.data_dir / "rooms").glob("*/annotations.log")):
        room_id = path.parent.name
        if room_id not in live and path.stat().st_mtime < cutoff:
            expired.append(path)
    return expired


async def delete_expired_annotations(node: Node) -> list[str]:
    """Delete the rooms' annotation and chat logs older than `annotation_retention_days`
    (audited per room): the records are encrypted under the room key, so the file goes."""
    cutoff = time.time() - node.settings.annotation_retention_days * 86400.0
    deleted = []
    for path in await asyncio.to_thread(_expired_annotation_logs, node, cutoff):
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:  # a concurrent sweep took it (and audited it)
            continue
        deleted.append(path.parent.name)
        node.audit.append("annotations_deleted", "info", room=path.parent.name, reason="retention")
    return deleted


async def _sweep_retention(node: Node, archive: ArchiveService) -> None:
    """Apply retention at start, then: shared images and annotation logs every
    `IMAGE_SWEEP_S`, recordings every `RECORDING_SWEEP_S` (legal holds are kept)."""
    last_recordings = -RECORDING_SWEEP_S
    while True:
        try:
            await delete_expired_images(node)
            await delete_expired_annotations(node)
        except Exception:
            log.exception("retention sweep of shared images and annotations failed")
        if time.monotonic() - last_recordings >= RECORDING_SWEEP_S:
            last_recordings = time.monotonic()
            try:
                shredded = await archive.run(archive.archive.run_retention)
                if shredded:
                    node.audit.append("retention_run", "info", shredded=len(shredded),
                                      recordings=shredded)  # fmt: skip
            except Exception:
                log.exception("retention sweep of recordings failed")
        node.retention_swept.set()
        await asyncio.sleep(IMAGE_SWEEP_S)


async def api_not_found(request: web.Request) -> web.Response:
    """Unknown API paths get a JSON 404, not an HTML page."""
    raise NotFound(f"no such API endpoint: {request.method} {request.path}")


# -- WebSocket --------------------------------------------------------------------------------


def _origin_allowed(request: web.Request, settings: Settings) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        # Non-browser clients (bots, the CLI) send no Origin; a browser always does, which is
        # what cross-site WebSocket hijacking needs.
        return True
    allowed = set(settings.allowed_origins) or {settings.own_origin}
    if not settings.allowed_origins:
        allowed.add(f"{request.scheme}://{request.host}")
    return origin.rstrip("/") in allowed


async def signalling(request: web.Request) -> web.StreamResponse:
    """`GET /ws`: the signalling WebSocket (see docs/protocol.md)."""
    node = request.app[NODE]
    settings = node.settings
    peer = _peer(request)
    if not _origin_allowed(request, settings):
        node.audit.append(
            "join_refused",
            "deny",
            reason="origin_not_allowed",
            origin=scrub(request.headers.get("Origin", ""))[:200],
            ip=peer,
        )
        raise PolicyDenied("this origin may not open a signalling connection")
    if not node.join_attempts.allow(peer, time.monotonic()):
        node.audit.append("join_refused", "deny", reason="join_rate_limited", ip=peer)
        raise RateLimited("too many join attempts from this address; wait a minute")
    if node.pending >= settings.max_pending_connections:
        raise RateLimited("too many connections are joining; try again shortly")

    ws = ConsiliumWebSocket(
        max_msg_size=settings.max_message_bytes, compress=False, timeout=CLOSE_HANDSHAKE_S
    )
    await ws.prepare(request)
    limit_send_buffer(request.transport)
    conn = Connection(
        ws,
        peer,
        TokenBucket(settings.messages_per_s, settings.message_burst),
        settings.max_outbound_queue,
        request.transport,
    )
    reason = "left"
    node.pending += 1
    try:
        joined = await _first_message(node, conn)
    finally:
        node.pending -= 1
    if not joined:
        return ws
    try:
        reason = await _message_loop(node, conn)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the node shuts down, and when the TCP connection is
        # lost without a close (a crashed tab, a reset): not a shutdown while the node is ready.
        reason = "connection_lost" if node.ready else "server shutting down"
        raise
    except Exception:
        log.exception("signalling connection failed")
        reason = "server_error"
        conn.finish(4500, "server error")
    finally:
        if conn.dropped is not None:
            # Dropped by the server (its queue filled): its socket may be aborted under it.
            reason = conn.dropped.value
            _audit_close(node, conn, "dropped", reason)
        # The room's clean-up first, the close handshake after: a person who leaves (or whose
        # client vanished) is gone from the room, its media and a recording at once, and may
        # join again at once. Shielded: aiohttp cancels the handler once the socket is gone, and
        # a clean-up cut off half-way would leave the participant in the room.
        cleanup = asyncio.ensure_future(node.rooms.disconnect(conn, reason))
        _cleanups.add(cleanup)
        cleanup.add_done_callback(_cleanups.discard)
        await asyncio.shield(cleanup)
    await conn.end()
    return ws


_cleanups: set[asyncio.Future[None]] = set()
"""Disconnect clean-ups running on after their handler was cancelled."""


async def _first_message(node: Node, conn: Connection) -> bool:
    """Wait for `join`; False when the connection was closed instead."""
    try:
        msg = await conn.ws.receive(timeout=node.settings.join_timeout_s)
    except TimeoutError:
        node.audit.append("join_refused", "deny", reason="join_timeout", ip=conn.peer)
        await conn.close(TimedOut.close_code, "no join in time")
        return False
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return False
    join: p.Message | None = None
    if msg.type is WSMsgType.TEXT:
        try:
            join = p.client_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            join = None
    if not isinstance(join, p.Join):
        node.audit.append("join_refused", "deny", reason="first_message_not_join", ip=conn.peer)
        await conn.close(AuthenticationError.close_code, "first message must be join")
        return False
    try:
        await node.rooms.join(conn, join)
    except ConsiliumError as exc:
        await node.rooms.disconnect(conn, "refused")
        await conn.close(exc.close_code, exc.message)
        return False
    except Exception:
        # E.g. the shared state (Redis) is unreachable: this client may retry; others go on.
        log.exception("join failed")
        with contextlib.suppress(Exception):
            await node.rooms.disconnect(conn, "server_error")
        await conn.close(ServerError.close_code, "server error, try again")
        return False
    return True


async def _message_loop(node: Node, conn: Connection) -> str:
    """Read messages until the connection ends; returns why it ended.

    Ending on the server's side, it notes the close (`Connection.finish`) and returns: the
    handler closes after the room's clean-up, never before.
    """
    settings = node.settings
    ws = conn.ws
    decode = p.client_decoder.decode
    while True:
        try:
            msg = await ws.receive(timeout=settings.keepalive_timeout_s)
        except TimeoutError:
            _audit_close(node, conn, "timed_out", "keepalive_missed")
            conn.finish(TimedOut.close_code, "keepalive missed")
            return "timed_out"
        if conn.dropped is not None:
            # E.g. its outbound queue filled: the close is under way (Connection.send).
            return conn.dropped.value
        if msg.type is WSMsgType.TEXT:
            # Hot path, per client message: watched by bench/signaling.py.
            if not conn.bucket.allow(time.monotonic()):
                _audit_close(node, conn, "rate_limited", "messages_per_second")
                conn.finish(RateLimited.close_code, "too many messages")
                return "rate_limited"
            try:
                message = decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                _audit_close(node, conn, "bad_message", scrub(_short(str(exc))))
                conn.finish(BadMessage.close_code, _short(f"bad message: {exc}"))
                return "bad_message"
            await node.rooms.handle(conn, message)
            if conn.dropped is not None:
                return conn.dropped.value
            if conn.ending is not None or conn.closing:
                return "left"
        elif msg.type is WSMsgType.BINARY:
            _audit_close(node, conn, "bad_message", "binary_frame")
            conn.finish(BadMessage.close_code, "binary frames are not part of the protocol")
            return "bad_message"
        elif msg.type is WSMsgType.ERROR:
            # aiohttp refused the frame (over max_message_bytes, or not valid WebSocket).
            too_large = getattr(msg.data, "code", None) == 1009  # RFC 6455: message too big
            _audit_close(
                node, conn, "bad_message", "message_too_large" if too_large else "protocol_error"
            )
            return "bad_message"
        else:
            return "left"


def _audit_close(node: Node, conn: Connection, action: str, reason: str) -> None:
    node.audit.append(
        action, "deny", sub=_sub(conn), room=conn.room_id or None, reason=reason, ip=conn.peer
    )


def _sub(conn: Connection) -> str | None:
    return conn.identity.sub if conn.identity else None


def _short(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


# -- static web client ------------------------------------------------------------------------


async def static_file(request: web.Request) -> web.FileResponse:
    """A file of the web client (`/` is `index.html`); nothing outside `web/` is reachable."""
    relative = request.match_info.get("path", "") or "index.html"
    root = WEB_DIR.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound("no such page")
    return web.FileResponse(target)


async def join_page(request: web.Request) -> web.FileResponse:
    """A join link, `/join/<room>#token=...`: the web client (the token stays in the fragment)."""
    return web.FileResponse(WEB_DIR / "index.html")


async def archive_page(request: web.Request) -> web.FileResponse:
    """The archivist's page, `/archive#token=...` (the token stays in the fragment)."""
    return web.FileResponse(WEB_DIR / "archive.html")


# -- the app ----------------------------------------------------------------------------------


async def _load_trusted_keys(node: Node) -> None:
    """Load the IdP's keys at start, so a wrong JWKS path fails the start, not every join."""
    try:
        keys = await node.key_source.keys()
    except Exception as exc:
        if isinstance(node.key_source, JwksFile):
            raise ConfigError(f"cannot load the trusted keys: {exc}") from None
        # A remote IdP may be down for a moment: start, say so, and retry at the first join.
        log.error("identity provider keys not reachable yet; joins fail until they are: %s", exc)
        return
    if not keys:
        raise ConfigError("the JWKS holds no usable signing key (RS256, PS256, ES256, EdDSA)")


async def _sweep_revocations(node: Node) -> None:
    """Re-check live connections against the revocation list, for events a node missed; keep
    this node's claims on the rooms whose media it hosts."""
    last_claim = 0.0
    while True:
        await asyncio.sleep(node.settings.revocation_sweep_s)
        try:
            await node.rooms.sweep_revoked()
            if time.monotonic() - last_claim > 10.0:
                last_claim = time.monotonic()
                await node.rooms.refresh_media_claims()
        except Exception:
            log.exception("periodic sweep failed")


async def _shut_down(app: web.Application) -> None:
    """SIGTERM: recordings end as `server_shutdown` first. aiohttp cancels the WebSocket handlers
    after this and runs `_lifecycle`'s clean-up later; without it their rooms would empty first
    and each recording be audited as `room_ended`."""
    node = app[NODE]
    node.ready = False
    if node.rooms.recorder is not None:
        try:
            await node.rooms.recorder.shut_down()
        except Exception:
            log.exception("recordings did not stop cleanly at shutdown")


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    await _load_trusted_keys(node)
    await node.store.start()
    if node.rooms.media is not None:
        await node.rooms.media.start()
    purged = await node.store.purge_node(node.settings.node_id)
    node.audit.append(
        "config_loaded",
        "info",
        node=node.settings.node_id,
        dev_mode=node.settings.dev_mode,
        policy_sha256=hashlib.sha256(node.policy.describe().encode()).hexdigest(),
        settings_sha256=hashlib.sha256(
            json.dumps(node.settings.summary(), sort_keys=True, default=str).encode()
        ).hexdigest(),
        stale_entries_purged=purged,
    )
    sweeper = asyncio.get_running_loop().create_task(_sweep_revocations(node))
    image_sweeper = asyncio.get_running_loop().create_task(_sweep_retention(node, app[ARCHIVE]))
    node.ready = True
    yield
    node.ready = False
    sweeper.cancel()
    image_sweeper.cancel()
    try:
        if node.rooms.recorder is not None:
            # Recordings end cleanly (complete, final segments sealed) before the media goes.
            with contextlib.suppress(Exception):
                await node.rooms.recorder.close()
        with contextlib.suppress(Exception):
            await node.rooms.close_all()
        if node.rooms.media is not None:
            with contextlib.suppress(Exception):
                await node.rooms.media.close()
        with contextlib.suppress(Exception):
            await node.store.purge_node(node.settings.node_id)
        with contextlib.suppress(Exception):
            await node.store.close()
        await asyncio.to_thread(node.image_workers.close)
    finally:
        # Whatever failed above, the audit log gets its final signed checkpoint.
        node.audit.append("server_stopped", "info", node=node.settings.node_id)
        node.audit.close()


def create_app(settings: Settings, node: Node | None = None) -> web.Application:
    """The whole HTTP surface of one node."""
    node = node or build_node(settings)
    app = web.Application(
        middlewares=[errors_and_headers], client_max_size=settings.max_request_bytes
    )
    app[NODE] = node
    app.on_response_prepare.append(security_headers)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_shut_down)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/ws", signalling)
    app.router.add_get("/api/info", api_info)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/rooms", create_room)
    app.router.add_get("/api/rooms/{room}", get_room)
    app.router.add_get("/api/rooms/{room}/admission", room_admission)
    app.router.add_post("/api/rooms/{room}/images", share_image)
    app.router.add_get("/api/rooms/{room}/images", list_images)
    app.router.add_get("/api/rooms/{room}/images/{image_id}", get_image)
    app.router.add_post("/api/rooms/{room}/images/{image_id}/release", release_image)
    app.router.add_post("/api/revocations", create_revocation)
    app.router.add_get("/api/revocations", list_revocations)
    app.router.add_get("/api/audit", read_audit)
    app[ARCHIVE] = ArchiveService(
        settings.data_dir / "recordings",
        node.room_keys.keyring,
        node.audit_key,
        node.audit,
        retention_settings(settings.retention_classes()),
        kek_location(settings),
        settings.data_dir / "audit",
        settings.export_scratch(),
        node.watermark_key,
    )
    register_archive(app, _authenticate, _json_body, node.policy)
    add_dev_routes(app)
    app.router.add_route("*", "/api/{tail:.*}", api_not_found)
    app.router.add_get("/join/{room}", join_page)
    app.router.add_get("/archive", archive_page)
    app.router.add_get("/{path:.*}", static_file)
    return app
