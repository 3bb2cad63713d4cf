"""Every setting and bound of a Consilium node, in one object.

Precedence: command-line flags, then `CONSILIUM_*` environment variables, then an optional TOML
file (`--config` / `CONSILIUM_CONFIG`), then the defaults below. Each field's docstring is what
`docs/operations.md` shows hospital IT.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints
from urllib.parse import urlsplit

from core.errors import ConfigError
from signaling.state.sentinel import is_sentinel_url, parse_sentinel_url

ENV_PREFIX = "CONSILIUM_"

IceTransportPolicy = Literal["all", "relay"]
"""The browser's `RTCConfiguration.iceTransportPolicy`, as handed out in `joined`."""

ScimSubjectAttribute = Literal["userName", "externalId"]
"""The SCIM User attribute that is a token's `sub` (`scim_subject_attribute`)."""


@dataclass(slots=True)
class Settings:
    """One node's settings. Every bound the server enforces lives here."""

    host: str = "127.0.0.1"
    """Address to listen on. Plain HTTP is allowed only on a loopback address."""
    port: int = 8443
    """TCP port for HTTPS (or loopback HTTP) and the signalling WebSocket."""
    data_dir: Path = Path("./consilium-data")
    """Folder for the audit log, keys, revocations and (later) recordings."""
    redis: str | None = None
    """Redis URL (`redis://host:6379/0`), or its Sentinels
    (`sentinel://host1:26379,host2:26379,host3:26379/<service>`); shared state for several
    nodes. None: in memory."""
    tls_cert: Path | None = None
    """PEM certificate chain for HTTPS."""
    tls_key: Path | None = None
    """PEM private key for HTTPS."""
    public_url: str | None = None
    """The URL users open (e.g. `https://mdt.hospital.local`); default derived from host/port."""
    allowed_origins: list[str] = field(default_factory=list)
    """Browser origins allowed to open `/ws`; empty means only the server's own origin."""
    node_id: str = ""
    """Stable name of this node in a cluster; default `<hostname>:<port>`."""
    node_url: str | None = None
    """The URL the other nodes of a cluster reach this one at (e.g.
    `https://node-a.hospital.local:8443`): they forward to it the archive requests for the
    recordings held here. Unset: none are forwarded to this node."""
    cluster_key_file: Path | None = None
    """A file holding a secret shared by every node of a cluster (at least 32 random bytes, e.g.
    `head -c 32 /dev/urandom`, mode 0600): it authenticates what one node forwards to another.
    Unset: nothing is forwarded."""

    jwks: str | None = None
    """Trusted signing keys: a JWKS file path or an https URL. None with no OIDC issuer: dev IdP."""
    oidc_issuer: str | None = None
    """OIDC issuer URL; its discovery document names the JWKS. Used when `jwks` is not set."""
    jwt_issuer: str | None = None
    """Required `iss` claim (default: the OIDC issuer, or the development IdP's)."""
    jwt_audience: str | None = None
    """Required `aud` claim (default `consilium`)."""
    jwt_leeway_s: int = 30
    """Clock skew tolerated on exp/nbf/iat, at most 60 s."""
    jwks_refetch_interval_s: float = 30.0
    """Least time between two JWKS fetches triggered by an unknown `kid`."""

    oidc_client_id: str | None = None
    """Sign-in at the hospital's OpenID provider (authorization code + PKCE): this node's client
    id there. None: no sign-in, join links only."""
    oidc_client_secret_file: Path | None = None
    """File holding the client secret (a confidential client); None: a public client (PKCE)."""
    oidc_signin_issuer: str | None = None
    """Issuer people sign in at (discovery: `/.well-known/openid-configuration`); default
    `oidc_issuer`."""
    oidc_scopes: list[str] = field(default_factory=lambda: ["openid", "profile", "email"])
    """Scopes asked for at sign-in (`openid` is always asked for)."""
    oidc_redirect_url: str | None = None
    """Redirect URI registered at the provider; default `<public URL>/auth/callback`."""
    oidc_provider_name: str = ""
    """The name on the sign-in button ("Sign in with <name>"), e.g. the hospital's."""
    oidc_claims: str = "standard"
    """Claim map preset: `standard`, `entra` (oid, roles, groups) or `keycloak`
    (realm_access.roles, department); the `oidc_claim_*` settings override single claims."""
    oidc_claim_subject: str = ""
    """Claim path (dotted) of the stable person id; "" : the preset's."""
    oidc_claim_name: str = ""
    """Claim path of the display name; "" : the preset's."""
    oidc_claim_roles: str = ""
    """Claim path of the role values; "" : the preset's."""
    oidc_claim_departments: str = ""
    """Claim path of the departments; "" : the preset's."""
    oidc_role_map: list[str] = field(default_factory=list)
    """Provider role value -> Consilium role, `value=role`, first match wins (e.g.
    `MDT.Chair=chair`); values that are Consilium roles need no entry."""
    oidc_mfa_acr_values: list[str] = field(default_factory=list)
    """`acr` values that count as a second factor (they add `mfa` to `amr`), e.g. Keycloak's
    `2`; Entra ID says `mfa` in `amr` itself."""
    session_lifetime_min: int = 60
    """Minutes a sign-in session lasts (then the person signs in again); revocable at once."""
    step_up_max_age_min: int = 15
    """Minutes an authentication counts as recent for playing or exporting a recording
    (RFC 9470 step-up; the provider is asked again with `max_age`)."""
    dpop_required: bool = False
    """Device binding (DPoP, RFC 9449) required: a sign-in whose browser offers no key, and a
    bearer token without `cnf.jkt`, are refused. Off: bound sessions and tokens still need their
    key's proof, unbound ones are accepted as before."""

    policy_file: Path | None = None
    """Role × action policy table (TOML); default: the packaged `signaling/policy.toml`."""

    max_message_bytes: int = 64 * 1024
    """Largest WebSocket message accepted; larger ones close the connection (4400)."""
    messages_per_s: float = 20.0
    """Sustained WebSocket messages per second per connection (4429 beyond the burst)."""
    message_burst: int = 60
    """Messages a connection may send at once before the rate applies."""
    max_participants_per_room: int = 24
    """Joined participants per room (the lobby does not count)."""
    max_lobby_per_room: int = 50
    """People waiting in one room's lobby."""
    max_rooms_per_node: int = 200
    """Rooms with live connections on this node (4429 for a join that would add one more)."""
    max_scheduled_rooms: int = 10_000
    """Rooms scheduled or open across the whole service (`POST /api/rooms` answers 429 beyond)."""
    revocation_sweep_s: float = 1.0
    """How often each node re-checks its live connections against the revocation list."""
    join_attempts_per_ip_per_min: int = 60
    """WebSocket join attempts from one client address per minute (HTTP 429 beyond it)."""
    max_pending_connections: int = 1000
    """Connections that have not yet sent `join`, across the node."""
    join_timeout_s: float = 10.0
    """Time a new connection has to send `join` (4408 after)."""
    keepalive_timeout_s: float = 45.0
    """Silence allowed from a client before it is dropped (4408); clients ping every 15 s."""
    max_outbound_queue: int = 512
    """Messages queued for a slow client before it is dropped (4408)."""
    resume_grace_s: float = 20.0
    """How long a participant whose connection dropped without leaving is held for a `resume`
    (seen as reconnecting, media kept) before they leave; 0: they leave at once."""
    node_dead_after_s: float = 4.0
    """With a shared Redis: a node whose heartbeat (every second) has been missing this long is
    dead; the others remove its participants and lobby entries (everyone told) and move the
    media of the rooms it hosted to a live node (`signaling.liveness`)."""
    drain_timeout_s: float = 30.0
    """SIGTERM or `consilium drain`: after moving the media of the rooms it hosts to other
    nodes, how long a node waits for every participant to leave its SFU (their clients open
    new sessions on the new node) before it hands its own participants over and closes their
    connections (1001: their clients resume through another node) and stops
    (`signaling.http.drain`)."""
    max_request_bytes: int = 64 * 1024
    """Largest REST request body."""

    media: bool = True
    """Run the SFU in this node (audio/video and data channels); off: signalling only."""
    video_codecs: list[str] = field(default_factory=lambda: ["VP8", "H264"])
    """Video codecs in order of preference; a room uses the first its first publisher offers."""
    twcc: bool = True
    """Answer publishers that offer transport-wide congestion control (transport-cc) with it and
    send them its feedback, so their browser estimates its own uplink; offer it to subscribers
    and estimate each one's downlink from their feedback; off: REMB hints only."""
    ice_host_addresses: list[str] = field(default_factory=list)
    """Addresses the SFU gathers ICE host candidates on; empty: every non-loopback interface,
    and 127.0.0.1 too when `host` is a loopback address or the host has no other interface."""
    ice_port_min: int = 0
    """Lowest UDP port for media (0 with ice_port_max 0: any free port)."""
    ice_port_max: int = 0
    """Highest UDP port for media."""
    stun_urls: list[str] = field(default_factory=list)
    """STUN servers handed to clients (and the SFU), e.g. `stun:stun.hospital.local:3478`."""
    turn_urls: list[str] = field(default_factory=list)
    """TURN servers handed to clients, e.g. `turn:turn.hospital.local:3478?transport=udp`."""
    turn_secret: str | None = None
    """coturn `use-auth-secret` shared secret; clients get time-limited TURN credentials."""
    turn_ttl_s: int = 86400
    """Lifetime of the TURN credentials handed out."""
    ice_transport_policy: IceTransportPolicy = "all"
    """`relay`: clients send media only through the TURN servers (for networks that block UDP or
    allow only 443 out); `all`: direct paths too."""
    media_socket_buffer_bytes: int = 4 * 1024 * 1024
    """Receive and send buffer asked for each media UDP socket, in bytes; the kernel grants at
    most `net.core.rmem_max` / `wmem_max` (the granted size is in /metrics)."""
    retransmit_share: float = 0.25
    """Most bytes resent to a subscriber for its lost packets, as a share of the bytes forwarded
    to it over the last second (0: none beyond a few packets)."""
    retransmit_max_age_s: float = 0.4
    """A lost packet older than this (since it reached the node) is not resent: it could no
    longer be played."""
    media_max_delay_s: float = 0.25
    """A packet that waited longer than this between reaching the node and being forwarded is
    not forwarded to live subscribers (a keyframe is asked for instead) rather than delivered
    late; a running recording still stores it. 0: no bound."""

    kek_file: Path | None = None
    """Key-encryption key file wrapping every data key (rooms, recordings); unset:
    `kek.json` in `key_dir`, generated on first start. Keep it off the data volume."""

    max_image_bytes: int = 64 * 1024 * 1024
    """Largest shared image upload (DICOM, PNG or JPEG file), in bytes (HTTP 413 beyond)."""
    max_images_per_room: int = 100
    """Shared images one room may hold (HTTP 429 beyond)."""
    image_workers: int = 2
    """Shared-image uploads and watermarked fetches processed at once (the rest wait)."""
    image_retention_days: float = 30.0
    """Days a shared image is kept after it was shared; then it is deleted (audited)."""
    pacs_url: str | None = None
    """DICOMweb root of the hospital PACS (e.g. `https://pacs.hospital.local/dicom-web`): rooms
    search it (QIDO-RS) and share studies or series from it (WADO-RS). Unset: no PACS panel.
    Plain http only to a loopback address."""
    pacs_username: str | None = None
    """User name for HTTP basic authentication to the PACS (with `pacs_password_file`)."""
    pacs_password_file: Path | None = None
    """File holding the PACS password (basic authentication); keep it readable by Consilium only."""
    pacs_token_file: Path | None = None
    """File holding a bearer token for the PACS, instead of a user name and password."""
    pacs_ca_file: Path | None = None
    """CA certificate (PEM) the PACS's HTTPS certificate must chain to; unset: the system's CAs."""
    pacs_search_roles: list[str] = field(
        default_factory=lambda: ["chair", "radiologist", "specialist"]
    )
    """Roles that may search the PACS and share from it (with `share_image` in the room too)."""
    pacs_max_instances: int = 300
    """Most instances (slices) one share from the PACS may bring into a room (HTTP 413 beyond)."""
    pacs_concurrent_shares: int = 2
    """Shares from the PACS running at once on this node (HTTP 429 beyond)."""
    pacs_timeout_s: float = 30.0
    """Longest wait for the PACS to answer a search, or to send the next bytes of a retrieve."""
    annotation_retention_days: float = 30.0
    """Days a room's annotation and chat log is kept after its last entry; then it is deleted
    (audited). A room in session keeps its log."""
    meeting_retention_days: float = 30.0
    """Days a meeting the HIS scheduled is kept after its end (or its cancellation); then it
    and its room are deleted (audited). A room in session is kept until it empties."""
    meeting_end_grace_min: float = 5.0
    """Minutes a scheduled meeting's room must stay empty after its scheduled end before the
    meeting ends (status `ended`, links refused, `meeting.ended` sent); 0 ends it as the last
    person leaves after its end. A room that empties before its end stays open."""

    recording_notice_version: str = "2026-12"
    """Version of the recording notice text every client shows before asking for consent
    (stored with each consent answer); change it when the notice's wording changes."""
    recording_segment_seconds: float = 10.0
    """A recording's streams are cut into sealed segments this often: at most this much is
    lost when the server crashes while recording."""
    recording_retention_days: float = 3650.0
    """Days a recording is kept after it ended (class `mdt` and any class not named in
    `recording_class_retention`); then it is shredded, unless it is under legal hold."""
    recording_class_retention: list[str] = field(default_factory=list)
    """Other retention classes, `class=days` each (e.g. `teaching=365`)."""
    archive_store_url: str | None = None
    """An S3-compatible object store (e.g. `https://s3.hospital.local`) where this node copies
    every closed recording (its segments, its wrapped data key, its signed manifest), and from
    which a replacement node holding this node's keys reads them back; shreds reach it too.
    Unset: recordings stay on this node's disk only."""
    archive_store_bucket: str = "consilium-archive"
    """The object store's bucket (created beforehand by whoever runs the store)."""
    archive_store_region: str = "us-east-1"
    """The region requests are signed for (SigV4)."""
    archive_store_access_key_id: str | None = None
    """The object store's access key id (with `archive_store_secret_key_file`)."""
    archive_store_secret_key_file: Path | None = None
    """A file holding the object store's secret key."""
    archive_store_prefix: str = "consilium/"
    """Every object's key starts with this (empty, or ending with `/`)."""
    disk_reserve_mb: int = 1024
    """Free space (MiB) the data folder keeps in reserve: below it, the chair of each recording
    room is warned (`storage_low`); below a quarter of it, recordings stop, marked `failed`."""

    export_scratch_dir: Path | None = None
    """Where exports are assembled before they are streamed to the archivist, then deleted;
    unset: `/dev/shm/consilium-exports` (memory), or `<data_dir>/exports` where there is no
    /dev/shm. Plaintext media goes only there: keep it on memory or an encrypted volume."""

    audit_checkpoint_every: int = 1000
    """Audit entries between two signed checkpoints (one is also written at shutdown)."""
    audit_fsync: bool = False
    """fsync the audit log after every entry (slower; checkpoints are always fsynced)."""
    key_dir: Path | None = None
    """Folder for the node's keys (audit signing key, key-encryption key unless `kek_file` is
    set) and the audit log's signed heads (`audit-heads.jsonl`); unset: `<data_dir>/keys`. Put
    it on another volume than the data folder, with `audit-heads.jsonl` append-only."""
    audit_witness: str | None = None
    """`host:port` of a syslog receiver over TLS (RFC 5425, e.g. the SIEM's rsyslog) that gets
    every signed audit checkpoint; unset: no witness."""
    audit_witness_ca: Path | None = None
    """CA certificate (PEM) the witness's certificate must chain to; unset: the system's CAs."""
    audit_siem_entries: bool = True
    """Send every audit entry to `audit_witness` as well (RFC 5424 with structured data, no
    PHI: `signaling.siem`), interleaved with the checkpoints; false: the checkpoints alone."""
    audit_siem_app_name: str = "consilium"
    """The RFC 5424 APP-NAME of the witness's messages (what the SIEM filters on)."""
    webhooks: list[str] = field(default_factory=list)
    """Receivers of signed webhook events, `URL SECRET_FILE [EVENT ...]` each (all events when
    none is named); see "Webhooks" for the events, headers and the signature."""

    metrics_token: str | None = None
    """Bearer token for `GET /metrics` from other hosts and through a reverse proxy (a direct
    loopback client, with no forwarding header, needs none)."""

    scim_token_file: Path | None = None
    """File holding the SCIM provisioning client's bearer token, or only its SHA-256 as
    `sha256:<hex>`; unset: the `/scim/v2` endpoints answer 404 (no directory is kept)."""
    scim_subject_attribute: ScimSubjectAttribute = "userName"
    """Which attribute of a SCIM User is the token's `sub`: `userName` (e.g. the UPN) or
    `externalId` (e.g. Entra ID's objectId)."""
    scim_department_prefix: str = ""
    """A SCIM Group is a department when its displayName starts with this prefix (removed to
    give the department's name); empty: every group is a department."""

    log_level: str = "info"
    """debug, info, warning or error. Logs are JSON lines on stderr and never hold a token."""

    @property
    def dev_mode(self) -> bool:
        """True when no identity provider is configured: the development IdP signs tokens."""
        return self.jwks is None and self.oidc_issuer is None

    @property
    def tls(self) -> bool:
        """True when the server speaks HTTPS."""
        return self.tls_cert is not None

    @property
    def own_origin(self) -> str:
        """The origin browsers see for this server."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def signin_issuer(self) -> str | None:
        """The issuer people sign in at: `oidc_signin_issuer`, else `oidc_issuer`."""
        return self.oidc_signin_issuer or self.oidc_issuer

    @property
    def signin_redirect_url(self) -> str:
        """The redirect URI: `oidc_redirect_url`, else `<own origin>/auth/callback`."""
        return self.oidc_redirect_url or self.own_origin + "/auth/callback"

    def validate(self) -> None:
        """Refuse settings that cannot work or would be unsafe; raises ConfigError."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"port out of range: {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if not self.tls and not is_loopback(self.host):
            raise ConfigError(
                f"plain HTTP is allowed only on a loopback address, not {self.host!r}: "
                "give --tls-cert and --tls-key"
            )
        if not 0 <= self.jwt_leeway_s <= 60:
            raise ConfigError("jwt_leeway_s must be between 0 and 60 seconds")
        for name in (
            "max_message_bytes",
            "max_participants_per_room",
            "max_rooms_per_node",
            "join_attempts_per_ip_per_min",
            "max_pending_connections",
            "message_burst",
            "max_outbound_queue",
            "max_request_bytes",
            "audit_checkpoint_every",
            "max_lobby_per_room",
            "max_scheduled_rooms",
            "turn_ttl_s",
            "max_image_bytes",
            "max_images_per_room",
            "image_workers",
            "disk_reserve_mb",
            "pacs_max_instances",
            "pacs_concurrent_shares",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in (
            "messages_per_s",
            "join_timeout_s",
            "keepalive_timeout_s",
            "revocation_sweep_s",
            "jwks_refetch_interval_s",
            "image_retention_days",
            "annotation_retention_days",
            "meeting_retention_days",
            "recording_segment_seconds",
            "recording_retention_days",
            "pacs_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("session_lifetime_min", "step_up_max_age_min"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.oidc_client_id is not None and self.signin_issuer is None:
            raise ConfigError("oidc_client_id needs oidc_signin_issuer or oidc_issuer")
        if self.oidc_claims not in ("standard", "entra", "keycloak"):
            raise ConfigError(
                f"oidc_claims must be standard, entra or keycloak, not {self.oidc_claims!r}"
            )
        for item in self.oidc_role_map:
            value, sep, role = item.rpartition("=")
            if not sep or not value.strip() or not role.strip():
                raise ConfigError(f"oidc_role_map: {item!r} is not provider-value=role")
        if not 0 <= self.resume_grace_s <= 300:
            raise ConfigError("resume_grace_s must be between 0 and 300 seconds")
        if not 2 <= self.node_dead_after_s <= 120:
            raise ConfigError("node_dead_after_s must be between 2 and 120 seconds")
        if not 0 <= self.drain_timeout_s <= 600:
            raise ConfigError("drain_timeout_s must be between 0 and 600 seconds")
        self.retention_classes()  # raises on a malformed entry
        self.witness_address()  # raises on a malformed address
        if self.ice_transport_policy not in ("all", "relay"):
            raise ConfigError(
                f"ice_transport_policy must be all or relay, not {self.ice_transport_policy!r}"
            )
        if self.ice_transport_policy == "relay" and not self.turn_urls:
            # Relay-only with no TURN server would leave every client without a path.
            raise ConfigError("ice_transport_policy relay needs turn_urls (and turn_secret)")
        if self.media_socket_buffer_bytes < 0:
            raise ConfigError("media_socket_buffer_bytes must not be negative")
        if not 0 <= self.retransmit_share <= 1:
            raise ConfigError("retransmit_share must be between 0 and 1")
        if self.retransmit_max_age_s <= 0:
            raise ConfigError("retransmit_max_age_s must be positive")
        if self.media_max_delay_s < 0:
            raise ConfigError("media_max_delay_s must not be negative")
        if self.meeting_end_grace_min < 0:
            raise ConfigError("meeting_end_grace_min must not be negative")
        if self.scim_subject_attribute not in ("userName", "externalId"):
            raise ConfigError(
                f"scim_subject_attribute must be userName or externalId, "
                f"not {self.scim_subject_attribute!r}"
            )
        self._validate_pacs()
        self._validate_node_url()
        self._validate_archive_store()
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"unknown log_level {self.log_level!r}")
        if self.redis is not None and is_sentinel_url(self.redis):
            try:
                parse_sentinel_url(self.redis)
            except ValueError as exc:
                raise ConfigError(f"redis: {exc}") from None
        elif self.redis is not None and not self.redis.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(
                "redis must be a redis://, rediss://, unix:// or sentinel:// (sentinels://) URL"
            )

    def _validate_archive_store(self) -> None:
        """`archive_store_url`: an https:// URL (plain http only to a loopback address), with
        its access key id and secret key file."""
        if self.archive_store_url is None:
            return
        check_service_url("archive_store_url", self.archive_store_url, "the S3 endpoint")
        if self.archive_store_access_key_id is None or self.archive_store_secret_key_file is None:
            raise ConfigError(
                "archive_store_url needs archive_store_access_key_id and "
                "archive_store_secret_key_file"
            )
        prefix = self.archive_store_prefix
        if prefix.startswith("/") or (prefix and not prefix.endswith("/")):
            raise ConfigError("archive_store_prefix must be empty or end with '/'")

    def _validate_node_url(self) -> None:
        """`node_url`: an https:// URL (plain http only to a loopback address), no path."""
        if self.node_url is not None:
            check_service_url("node_url", self.node_url, "this node's root", with_path=False)

    def _validate_pacs(self) -> None:
        """The PACS settings: a URL the node may reach safely, one way to authenticate."""
        if self.pacs_url is None:
            return
        check_service_url("pacs_url", self.pacs_url, "the PACS's DICOMweb root")
        if self.pacs_token_file is not None and self.pacs_username is not None:
            raise ConfigError("give pacs_token_file or pacs_username, not both")
        if (self.pacs_username is None) != (self.pacs_password_file is None):
            raise ConfigError("pacs_username and pacs_password_file must be given together")

    def keys_directory(self) -> Path:
        """The folder `key_dir` names, or its default `<data_dir>/keys`."""
        return self.key_dir if self.key_dir is not None else self.data_dir / "keys"

    def witness_address(self) -> tuple[str, int] | None:
        """`audit_witness` as (host, port), None if unset; raises ConfigError if malformed."""
        if not self.audit_witness:
            return None
        host, sep, port = self.audit_witness.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"audit_witness must be host:port, not {self.audit_witness!r}")
        return host, int(port)

    def export_scratch(self) -> Path:
        """The folder `export_scratch_dir` names, or its default."""
        if self.export_scratch_dir is not None:
            return self.export_scratch_dir
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            return shm / "consilium-exports"
        return self.data_dir / "exports"

    def retention_classes(self) -> dict[str, float]:
        """Days each recording class is kept (`mdt` and unnamed classes: the default)."""
        classes: dict[str, float] = {"mdt": self.recording_retention_days}
        for item in self.recording_class_retention:
            name, sep, days = item.partition("=")
            try:
                value = float(days)
            except ValueError:
                value = -1.0
            if not sep or not name.strip() or value < 0:
                raise ConfigError(
                    f"recording_class_retention: {item!r} is not class=days with days >= 0"
                )
            classes[name.strip()] = value
        return classes

    def summary(self) -> dict[str, Any]:
        """Settings as plain JSON values, for the audit log's `config_loaded` entry."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("redis", "pacs_url", "archive_store_url", "node_url") and value:
                value = _redact_url(value)
            if f.name in ("turn_secret", "metrics_token") and value:
                value = "***"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def check_service_url(name: str, url: str, what: str, *, with_path: bool = True) -> None:
    """A URL the node sends requests to: https:// (plain http only to a loopback address), and
    with no path unless `with_path`; ConfigError naming the setting and `what` it is."""
    try:
        parts = urlsplit(url)
        scheme, host, path = parts.scheme, parts.hostname or "", parts.path
    except ValueError:
        scheme, host, path = "", "", ""
    if scheme not in ("http", "https") or not host:
        raise ConfigError(f"{name} must be an https:// URL ({what})")
    if not with_path and path not in ("", "/"):
        raise ConfigError(f"{name} must be an https:// URL with no path ({what})")
    if scheme == "http" and not is_loopback(host):
        raise ConfigError(f"{name} must be https:// (plain http only to a loopback address)")


def is_loopback(host: str) -> bool:
    """True for loopback addresses and for `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _redact_url(url: str) -> str:
    # A Redis URL may carry a password (a Sentinel URL a second one, in its query); the audit
    # log and logs get it without.
    if is_sentinel_url(url):
        url = url.partition("?")[0]
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    text = str(kind)
    try:
        if raw is None:
            return None
        if "list" in text:
            if isinstance(raw, str):
                return [item.strip() for item in raw.split(",") if item.strip()]
            return [str(item) for item in raw]
        if "Path" in text:
            return Path(str(raw))
        if "bool" in text:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "int" in text and "float" not in text:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if "float" in text:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot use {raw!r} ({exc})") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build the settings from flags, then environment, then a TOML file, then defaults.

    `flags` holds only the options the user actually gave (None values are ignored).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    hints = get_type_hints(Settings)
    names = {f.name for f in fields(Settings)}

    config_path = config_file or (
        Path(env["CONSILIUM_CONFIG"]) if "CONSILIUM_CONFIG" in env else None
    )
    file_values: dict[str, Any] = {}
    if config_path is not None:
        try:
            with open(config_path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_path} is not valid TOML: {exc}") from None
        section = raw.get("consilium", raw)
        if "consilium" in raw and len(raw) > 1:
            others = ", ".join(sorted(k for k in raw if k != "consilium"))
            raise ConfigError(f"config file {config_path}: settings outside [consilium]: {others}")
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
            file_values[name] = _coerce(name, hints[name], value)

    values: dict[str, Any] = dict(file_values)
    for name in names:
        env_name = ENV_PREFIX + name.upper()
        if env_name in env and env[env_name] != "":
            values[name] = _coerce(name, hints[name], env[env_name])
    for name, value in flags.items():
        if name not in names:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, hints[name], value)

    settings = Settings(**values)
    if not settings.node_id:
        settings.node_id = f"{socket.gethostname()}:{settings.port}"
    settings.validate()
    return settings


def settings_fields() -> list[dataclasses.Field[Any]]:
    """The fields of Settings, for documentation."""
    return list(fields(Settings))
