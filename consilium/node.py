"""The composition root: one node's parts (state, audit, rooms, SFU, recorder, images, archive)
wired once, from its settings, and the HTTP app that serves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from core.errors import ConfigError
from imaging.sniff import ImageLimits
from imaging.store import ImageStore
from imaging.watermark import load_or_create_watermark_key
from recorder.diskspace import MIB, DiskSpace
from recorder.objectstore import ObjectStoreSettings
from recorder.recovery import recover_interrupted
from recorder.roomkeys import KEK_FILE_NAME, RoomKeys, open_keyring
from recorder.sink import RecordingSettings
from sfu.ice import IceSettings, client_ice_servers
from sfu.server import MediaServer, MediaSettings
from signaling.annotation_mirror import AnnotationMirror, mirror_key
from signaling.audit import HEADS_FILE, AuditLog, generate_audit_key
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER, DevelopmentIdP
from signaling.directory import Directory, DirectoryVerifier
from signaling.http import app as http_app
from signaling.http.archive_service import ArchiveService, retention_settings
from signaling.http.archive_store import ArchiveStore
from signaling.http.door import Door
from signaling.http.forwarding import Forwarder, load_cluster_key
from signaling.http.node import ImageWork, Node
from signaling.keysources import JwksFile, JwksUrl, OidcDiscovery
from signaling.messenger import Messenger
from signaling.oidc_client import OidcClient
from signaling.policy import ROLES, Policy
from signaling.recording_control import Recorder, recorder_audit
from signaling.rooms import Rooms
from signaling.settings import Settings, is_loopback
from signaling.state.opening import open_store
from signaling.tokens import KeySource
from signaling.webhooks import WebhookDispatcher, load_subscribers
from signaling.witness import SyslogWitness


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
            socket_buffer_bytes=settings.media_socket_buffer_bytes,
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
    """The syslog-over-TLS witness of the audit checkpoints (and the SIEM's copy of the
    entries), if one is configured."""
    address = settings.witness_address()
    if address is None:
        return None
    return SyslogWitness(
        *address,
        node=settings.node_id,
        cafile=settings.audit_witness_ca,
        entries=settings.audit_siem_entries,
        app_name=settings.audit_siem_app_name,
    )


def build_node(settings: Settings) -> Node:
    """Load keys, policy and state for one node (nothing listens yet)."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    key_dir = settings.keys_directory()
    audit_key = generate_audit_key(key_dir)
    webhooks = WebhookDispatcher(
        load_subscribers(settings.webhooks), settings.node_id, data_dir / "webhooks"
    )
    witness = audit_witness(settings)
    audit = AuditLog(
        data_dir / "audit",
        audit_key,
        checkpoint_every=settings.audit_checkpoint_every,
        fsync=settings.audit_fsync,
        heads_file=key_dir / HEADS_FILE,
        witness=witness,
        on_entry=webhooks.observe,
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

    store = open_store(settings.redis, data_dir, settings.node_id)
    # Every verified identity passes through the SCIM directory (leavers refused, departments).
    directory = Directory(
        store.directory,
        enabled=settings.scim_token_file is not None,
        department_prefix=settings.scim_department_prefix,
    )
    verifier = DirectoryVerifier(
        source,
        directory=directory,
        issuer=issuer,
        audience=audience,
        leeway_s=settings.jwt_leeway_s,
        on_key_refresh=on_key_refresh,
    )
    ice = ice_settings(settings)
    room_keys = RoomKeys(open_keyring(data_dir, kek_location(settings)))
    images = ImageStore(
        data_dir,
        room_keys.key_for,
        max_images_per_room=settings.max_images_per_room,
        limits=ImageLimits(max_bytes=settings.max_image_bytes),
    )
    recordings_dir = data_dir / "recordings"
    recover_interrupted(recordings_dir, audit_key, recorder_audit(audit))
    # Built before the SFU, the recorder and the rooms, which all send through it.
    messenger = Messenger(store)
    cluster_key = (
        None if settings.cluster_key_file is None else load_cluster_key(settings.cluster_key_file)
    )
    # A cluster's rooms hand their annotations and chat to the node their media moves to.
    mirror = None if cluster_key is None else AnnotationMirror(store, mirror_key(cluster_key))
    media: MediaServer | None = None
    recorder: Recorder | None = None
    if settings.media:
        media = MediaServer(
            MediaSettings(
                video_codecs=tuple(settings.video_codecs),
                twcc=settings.twcc,
                ice=ice,
                data_dir=data_dir,
                room_key=room_keys.key_for,
                image_info=images.lookup,
                retransmit_share=settings.retransmit_share,
                retransmit_max_age_s=settings.retransmit_max_age_s,
                max_delay_s=settings.media_max_delay_s,
                annotation_mirror=None if mirror is None else mirror.record,
            ),
            messenger.notify,
        )
        recorder = Recorder(
            recordings_dir,
            room_keys.keyring,
            audit_key,
            audit,
            media,
            notice_version=settings.recording_notice_version,
            settings=RecordingSettings(segment_seconds=settings.recording_segment_seconds),
            broadcast=messenger.announce,
            notify=messenger.notify_message,
            images=lambda room_id, image_id: _image_frames(images, room_id, image_id),
            disk=DiskSpace(settings.disk_reserve_mb * MIB),
            store=store,
            node_id=settings.node_id,
        )
    rooms = Rooms(
        settings,
        store,
        policy,
        verifier,
        audit,
        messenger,
        media=media,
        recorder=recorder,
        ice_servers=lambda identity: client_ice_servers(ice, identity.sub),
    )
    rooms.relay.annotations = mirror
    if recorder is not None:
        recorder.draining = lambda: rooms.draining  # what it keeps says why the media moved
    watermark_key = load_or_create_watermark_key(data_dir)
    archive = ArchiveService(
        recordings_dir,
        room_keys.keyring,
        audit_key,
        audit,
        retention_settings(settings.retention_classes()),
        kek_location(settings),
        data_dir / "audit",
        settings.export_scratch(),
        watermark_key,
    )
    archive_store = None
    if settings.archive_store_url is not None:
        archive_store = copies = ArchiveStore(
            object_store_settings(settings),
            archive,
            room_keys.keyring,
            audit_key.public_key(),
            audit,
            data_dir / "archive-store",
        )
        if recorder is not None:
            recorder.on_closed = lambda recording_id: copies.nudge()
    forwarder = Forwarder(
        settings.node_id,
        settings.node_url,
        cluster_key,
        store,
        archive.held_ids,
    )
    if archive_store is not None:
        archive_store.restored = forwarder.announce
    return Node(
        settings=settings,
        store=store,
        policy=policy,
        verifier=verifier,
        directory=directory,
        audit=audit,
        rooms=rooms,
        key_source=source,
        dev_idp=dev_idp,
        door=Door(
            allowed_origins=settings.allowed_origins,
            own_origin=settings.own_origin,
            join_attempts_per_min=settings.join_attempts_per_ip_per_min,
            max_pending=settings.max_pending_connections,
        ),
        room_keys=room_keys,
        images=images,
        image_work=ImageWork(settings.image_workers),
        watermark_key=watermark_key,
        audit_key=audit_key,
        archive=archive,
        forwarder=forwarder,
        archive_store=archive_store,
        annotation_mirror=mirror,
        webhooks=webhooks,
        witness=witness,
        signin=OidcClient(settings, ROLES) if settings.oidc_client_id is not None else None,
    )


def object_store_settings(settings: Settings) -> ObjectStoreSettings:
    """Where the object store of `archive_store_url` is, with its secret key read from its file."""
    assert settings.archive_store_url is not None
    assert settings.archive_store_access_key_id is not None
    assert settings.archive_store_secret_key_file is not None
    try:
        secret = settings.archive_store_secret_key_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"archive_store_secret_key_file: cannot read it ({exc})") from None
    if not secret:
        raise ConfigError("archive_store_secret_key_file is empty")
    return ObjectStoreSettings(
        endpoint_url=settings.archive_store_url,
        bucket=settings.archive_store_bucket,
        region=settings.archive_store_region,
        access_key_id=settings.archive_store_access_key_id,
        secret_access_key=secret,
        prefix=settings.archive_store_prefix,
        # Above a segment's size (8 MiB of media and its sealing): one request per segment.
        part_size=16 * MIB,
    )


def create_app(settings: Settings, node: Node | None = None) -> web.Application:
    """The whole HTTP surface of one node: `node`, or one wired here from `settings`."""
    return http_app.create_app(node or build_node(settings))
