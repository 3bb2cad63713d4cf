"""The node as the HTTP edge sees it: what the handlers use, wired once by `consilium.node`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import RateLimited
from imaging.store import ImageStore
from imaging.worker import ImageWorkers
from recorder.roomkeys import RoomKeys
from signaling.annotation_mirror import AnnotationMirror
from signaling.audit import AuditLog
from signaling.devidp import DevelopmentIdP
from signaling.directory import Directory
from signaling.dpop import SeenProofs
from signaling.http.archive_service import ArchiveService
from signaling.http.archive_store import ArchiveStore
from signaling.http.door import Door
from signaling.http.forwarding import Forwarder
from signaling.oidc_client import OidcClient
from signaling.policy import Policy
from signaling.rooms import Rooms
from signaling.settings import Settings
from signaling.state.store import StateStore
from signaling.tokens import KeySource, TokenVerifier
from signaling.webhooks import WebhookDispatcher
from signaling.witness import SyslogWitness

IMAGE_QUEUE_PER_WORKER = 8
"""Image requests that may wait per worker; the next is refused with 429 (docs/operations.md,
"Bounds": image work waiting)."""


class ImageWork:
    """The node's CPU-heavy image work (de-identify, render, watermark), bounded: at most
    `image_workers` at once, in threads so the event loop (signalling) stays responsive, and a
    bounded number of requests waiting (429 beyond)."""

    def __init__(self, workers: int) -> None:
        self.workers = ImageWorkers(workers)
        """The memory-capped processes that decode uploads (a decompression bomb fails there)."""
        self.slots = asyncio.Semaphore(workers)
        """Bounds the image work running at once."""
        self.max_queued = workers * IMAGE_QUEUE_PER_WORKER
        """Image requests that may wait for or hold a slot."""
        self.queued = 0
        """Image requests waiting for or holding a slot."""

    async def run(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`work(*args, **kwargs)` in a thread once a slot is free (`RateLimited` when too many
        requests already wait)."""
        if self.queued >= self.max_queued:
            raise RateLimited("the server is busy with other images; try again shortly")
        self.queued += 1
        try:
            async with self.slots:
                return await asyncio.to_thread(work, *args, **kwargs)
        finally:
            self.queued -= 1

    def close(self) -> None:
        """Stop the worker processes (the node is stopping; blocks)."""
        self.workers.close()


@dataclass
class Node:
    """Everything one running node holds; stored in the app under `NODE`.

    Built whole by `consilium.node.build_node` (nothing is attached later); the last two fields
    are the running node's own state.
    """

    settings: Settings
    """The node's settings and bounds, as loaded at start."""
    store: StateStore
    """The state shared by every node (rooms, participants, lobby, revocations, events)."""
    policy: Policy
    """Who may do what, where (the role × action table, departments, grants)."""
    verifier: TokenVerifier
    """Turns a bearer token into an `Identity`, or refuses it."""
    directory: Directory
    """The SCIM directory as the gate reads it (`Directory.admit`: leavers, departments); the
    verifier already applies it to every token."""
    audit: AuditLog
    """The node's hash-chained, signed audit log."""
    rooms: Rooms
    """The rooms this node serves, its connections in them, its SFU and recorder."""
    key_source: KeySource
    """The IdP's signing keys, loaded at start so a wrong JWKS fails the start."""
    dev_idp: DevelopmentIdP | None
    """The development IdP (development mode only): the `/dev` page mints its tokens."""
    door: Door
    """Who may open a signalling WebSocket (origin, join rate, pending connections)."""
    room_keys: RoomKeys
    """Each room's data key (shared images, the annotation log), wrapped in the keyring."""
    images: ImageStore
    """Each room's shared images, de-identified and encrypted at rest."""
    image_work: ImageWork
    """Runs the image work (decode, de-identify, render, watermark) within its bounds."""
    watermark_key: bytes
    """Key of the invisible mark every served image carries."""
    audit_key: Ed25519PrivateKey
    """The node's Ed25519 key: signs the audit log's checkpoints and recording manifests."""
    archive: ArchiveService
    """The recordings, as the archive's API serves them."""
    webhooks: WebhookDispatcher
    """Signed webhook events to the hospital's systems (none without subscribers)."""
    witness: SyslogWitness | None
    """The audit log's syslog-over-TLS witness and SIEM stream, if configured (its counters)."""
    forwarder: Forwarder
    """Archive requests to and from the other nodes (`signaling.http.forwarding`)."""
    archive_store: ArchiveStore | None
    """The recordings' copies in the object store (`archive_store_url`), else None."""
    annotation_mirror: AnnotationMirror | None
    """The rooms' annotation and chat events copied to the shared state (a cluster), else None."""
    signin: OidcClient | None = None
    """Sign-in at the hospital's OpenID provider (`oidc_client_id` set), else None."""
    seen_proofs: SeenProofs = field(default_factory=SeenProofs)
    """The DPoP proofs this node accepted within their window (a replay is refused)."""
    ready: bool = False
    """Serving: set once started, cleared as the node stops (`/readyz`, `/healthz`)."""
    retention_swept: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the retention sweep that runs at start has finished."""


NODE = web.AppKey("node", Node)
