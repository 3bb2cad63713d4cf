"""The node as the HTTP edge sees it: what the handlers use, wired once by `consilium.node`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imaging.store import ImageStore
from imaging.worker import ImageWorkers
from recorder.roomkeys import RoomKeys
from signaling.audit import AuditLog
from signaling.devidp import DevelopmentIdP
from signaling.http.archive_service import ArchiveService
from signaling.http.door import Door
from signaling.policy import Policy
from signaling.rooms import Rooms
from signaling.settings import Settings
from signaling.state.store import StateStore
from signaling.tokens import KeySource, TokenVerifier


@dataclass
class Node:
    """Everything one running node holds; stored in the app under `NODE`.

    Built whole by `consilium.node.build_node` (nothing is attached later); the last three fields
    are the running node's own state.
    """

    settings: Settings
    store: StateStore
    policy: Policy
    verifier: TokenVerifier
    audit: AuditLog
    rooms: Rooms
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
    watermark_key: bytes
    """Key of the invisible mark every served image carries."""
    image_slots: asyncio.Semaphore
    """Bounds the image work (de-identify, render, watermark) running at once."""
    image_workers: ImageWorkers
    """The memory-capped processes that decode uploads (a decompression bomb fails there)."""
    audit_key: Ed25519PrivateKey
    """The node's Ed25519 key: signs the audit log's checkpoints and recording manifests."""
    archive: ArchiveService
    """The recordings, as the archive's API serves them."""
    image_queue: int = 0
    """Image requests waiting for or holding a slot."""
    ready: bool = False
    retention_swept: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the retention sweep that runs at start has finished."""


NODE = web.AppKey("node", Node)
