"""The aiohttp application of one node: its routes, middleware (errors as JSON, security
headers), and its start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from core.errors import ConfigError, ConsiliumError, IntegrityError, ServerError
from signaling.dpop import InvalidDpopProof
from signaling.dpop import challenge as dpop_challenge
from signaling.errors import http_status_of
from signaling.http import ws
from signaling.http.drain import drain
from signaling.http.node import NODE, Node
from signaling.http.node_metrics import METRICS_REGISTRY, node_registry
from signaling.http.routes import audit, images, metrics, pages, revocations, rooms, signin
from signaling.http.routes.archive import add_archive_routes, forward_to_holder
from signaling.http.routes.dev import add_dev_routes
from signaling.http.routes.meetings import add_meeting_routes
from signaling.http.routes.pacs import add_pacs_routes
from signaling.http.routes.pacs_store import add_pacs_store_routes
from signaling.http.routes.scim import add_scim_routes
from signaling.http.tasks import (
    media_load,
    sweep_lost_participants,
    sweep_meeting_ends,
    sweep_retention,
    sweep_revocations,
    watch_nodes,
)
from signaling.keysources import JwksFile
from signaling.logs import scrub
from signaling.oidc import StepUpRequired, step_up_challenge

log = logging.getLogger("consilium.server")


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


@web.middleware
async def errors_and_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Map every error to a JSON body (the security headers are added by `security_headers`)."""
    try:
        response = await handler(request)
    except ConsiliumError as exc:
        response = web.json_response(exc.to_json(), status=http_status_of(exc))
        if isinstance(exc, StepUpRequired):
            response.headers["WWW-Authenticate"] = step_up_challenge(exc.details["max_age"])
        elif isinstance(exc, InvalidDpopProof):
            response.headers["WWW-Authenticate"] = dpop_challenge(exc.code, exc.message)
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
        # Its headers (Allow for a 405) without its text/plain Content-Type: the body is JSON.
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        response = web.json_response(
            {"error": code, "message": exc.reason}, status=exc.status, headers=headers
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        response = web.json_response(ServerError("internal error").to_json(), status=500)
    return response


STORE_AT_STOP_S = 30.0
"""How long a stopping node spends copying its last recordings to the object store."""

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


async def _shut_down(app: web.Application) -> None:
    """SIGTERM: first the drain (`signaling.http.drain`: unready, the rooms' media moved to other
    nodes, this node's SFU emptied); then the recordings still here end as `server_shutdown`.
    aiohttp cancels the WebSocket handlers after this and runs `_lifecycle`'s clean-up later;
    without it their rooms would empty first and each recording be audited as `room_ended`.
    Then every connection is closed (1001) while the handlers still run, so each client hears
    why."""
    node = app[NODE]
    # The rooms' media moved to other nodes first (`drain`: already done when SIGTERM went
    # through `drain.begin`, as under `consilium serve`).
    await drain(node)
    node.ready = False
    if node.rooms.recorder is not None:
        try:
            await node.rooms.recorder.shut_down()
        except Exception:
            log.exception("recordings did not stop cleanly at shutdown")
    await node.rooms.close_all()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    await _load_trusted_keys(node)
    await node.store.start()
    if node.rooms.media is not None:
        await node.rooms.media.start()
    purged = await node.store.purge_node(node.settings.node_id)
    # Alive before taking anyone in: a node that joined someone without ever heartbeating
    # would not be cleaned up after if it died at once.
    await node.store.heartbeat(
        node.settings.node_id, node.settings.node_dead_after_s, media_load(node)
    )
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
    await node.webhooks.start(node.audit.append)
    sweeper = asyncio.get_running_loop().create_task(sweep_revocations(node))
    image_sweeper = asyncio.get_running_loop().create_task(sweep_retention(node))
    meeting_sweeper = asyncio.get_running_loop().create_task(sweep_meeting_ends(node))
    lost_sweeper = asyncio.get_running_loop().create_task(sweep_lost_participants(node))
    node_watch = asyncio.get_running_loop().create_task(watch_nodes(node))
    announcer = asyncio.get_running_loop().create_task(node.forwarder.keep_announcing())
    mirrored = None
    if node.annotation_mirror is not None:
        mirrored = asyncio.get_running_loop().create_task(node.annotation_mirror.run())
    stored = None
    if node.archive_store is not None:
        stored = asyncio.get_running_loop().create_task(node.archive_store.keep_in_step())
    node.ready = True
    yield
    node.ready = False
    sweeper.cancel()
    image_sweeper.cancel()
    meeting_sweeper.cancel()
    lost_sweeper.cancel()
    node_watch.cancel()
    announcer.cancel()
    if stored is not None:
        stored.cancel()
    if mirrored is not None:
        mirrored.cancel()
    try:
        if node.rooms.recorder is not None:
            # Recordings end cleanly (complete, final segments sealed) before the media goes.
            with contextlib.suppress(Exception):
                await node.rooms.recorder.close()
        if node.archive_store is not None:
            # What just closed goes to the object store before the node goes (a planned stop),
            # within bounds: what does not make it goes at the next start.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.archive_store.sync(), STORE_AT_STOP_S)
        with contextlib.suppress(Exception):
            await node.rooms.close_all()
        if node.annotation_mirror is not None:
            # The last events copied before the node goes (the drain moved the rooms already).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.annotation_mirror.flush(), 5.0)
        if node.rooms.media is not None:
            with contextlib.suppress(Exception):
                await node.rooms.media.close()
        with contextlib.suppress(Exception):
            await node.store.purge_node(node.settings.node_id)
        with contextlib.suppress(Exception):  # stopped cleanly: nothing left to clean up after
            await node.store.forget_node(node.settings.node_id)
        with contextlib.suppress(Exception):
            await node.forwarder.retire()
        with contextlib.suppress(Exception):
            await node.store.close()
        with contextlib.suppress(Exception):
            await node.webhooks.close()
        with contextlib.suppress(Exception):
            await node.forwarder.close()
        await asyncio.to_thread(node.image_work.close)
    finally:
        # Whatever failed above, the audit log gets its final signed checkpoint.
        node.audit.append("server_stopped", "info", node=node.settings.node_id)
        node.audit.close()


def create_app(node: Node) -> web.Application:
    """The whole HTTP surface of one node (wired by `consilium.node.build_node`)."""
    app = web.Application(
        middlewares=[errors_and_headers, forward_to_holder],
        client_max_size=node.settings.max_request_bytes,
    )
    app[NODE] = node
    app.on_response_prepare.append(security_headers)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_shut_down)
    app.router.add_get("/healthz", metrics.healthz)
    app.router.add_get("/readyz", metrics.readyz)
    app.router.add_post("/api/node/drain", metrics.drain)
    app.router.add_get("/ws", ws.signalling)
    app.router.add_get("/api/info", pages.api_info)
    app[METRICS_REGISTRY] = node_registry(node)
    app.router.add_get("/metrics", metrics.metrics)
    app.router.add_post("/api/rooms", rooms.create_room)
    app.router.add_get("/api/rooms/{room}", rooms.get_room)
    app.router.add_get("/api/rooms/{room}/admission", rooms.room_admission)
    app.router.add_post("/api/rooms/{room}/images", images.share_image)
    app.router.add_get("/api/rooms/{room}/images", images.list_images)
    app.router.add_get("/api/rooms/{room}/images/{image_id}", images.get_image)
    app.router.add_post("/api/rooms/{room}/images/{image_id}/release", images.release_image)
    app.router.add_post("/api/revocations", revocations.create_revocation)
    app.router.add_get("/api/revocations", revocations.list_revocations)
    app.router.add_get("/api/audit", audit.read_audit)
    add_archive_routes(app)
    add_dev_routes(app)
    add_scim_routes(app)
    add_pacs_routes(app)
    add_pacs_store_routes(app)
    add_meeting_routes(app)
    app.router.add_route("*", "/api/{tail:.*}", pages.api_not_found)
    signin.add_signin_routes(app)
    app.router.add_get("/join/{room}", pages.join_page)
    app.router.add_get("/archive", pages.archive_page)
    app.router.add_get("/{path:.*}", pages.static_file)
    return app
