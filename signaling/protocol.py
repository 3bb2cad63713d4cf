"""The signalling protocol: every WebSocket message, declared once.

Each message is a msgspec Struct tagged by its `type` field. The same declarations validate what
clients send, encode what the server sends, and generate `docs/protocol.md` (a test checks that
the document matches). Close codes live in `CloseCode` and `CLOSE_CODES`, next to the messages
they end; which error closes with which is `signaling.errors`' table.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Literal

import msgspec

from core.codes import ErrorCode


class CloseCode(IntEnum):
    """Every close code the server sends, by name; `CLOSE_CODES` says when it sends each."""

    NORMAL = 1000
    GOING_AWAY = 1001
    BAD_MESSAGE = 4400
    NOT_AUTHENTICATED = 4401
    NOT_ALLOWED = 4403
    NOT_FOUND = 4404
    TIMED_OUT = 4408
    REPLACED = 4409
    RESUME_REFUSED = 4410
    MEETING_ENDED = 4411
    RATE_LIMITED = 4429
    SERVER_ERROR = 4500


CLOSE_CODES: dict[CloseCode, str] = {
    CloseCode.NORMAL: "normal: the client left (`leave`)",
    CloseCode.GOING_AWAY: "going away: the server is shutting down; reconnect to another node "
    "or later (also: this node was taken for dead by the others, a stalled process, and the "
    "participant let go meanwhile: join again)",
    CloseCode.BAD_MESSAGE: "bad message: not JSON, not a known message, a binary frame, or larger "
    "than the bound",
    CloseCode.NOT_AUTHENTICATED: "not authenticated: first message was not `join` or `resume`, "
    "or the token is invalid, expired or revoked (also sent to live connections when their token "
    "or identity is revoked)",
    CloseCode.NOT_ALLOWED: "not allowed: the policy refuses the join, the room is locked, the "
    "chair denied entry from the lobby, or the chair removed the participant",
    CloseCode.TIMED_OUT: "timed out: no `join` within the join timeout, no message within the "
    "keepalive timeout, or too slow to read what the server sends",
    CloseCode.NOT_FOUND: "not found: the room was closed while the connection was joining",
    CloseCode.REPLACED: "replaced: a newer connection of the same identity joined the same room, "
    "or a `resume` took this participant over on a new connection (on this node, or on another "
    "while this one was taken for dead)",
    CloseCode.RESUME_REFUSED: "resume refused: the first message was `resume` but no participant "
    "is held for it here (`unknown_participant`: never joined, already gone, or held by another "
    "node), the grace period is over (`grace_period_over`), the resume token is wrong "
    "(`bad_resume_token`), the bearer token names another identity (`other_identity`), or the "
    "messages missed are no longer kept (`messages_lost`); the reason says which. The client "
    "joins again (an admitted participant skips the lobby)",
    CloseCode.MEETING_ENDED: "meeting ended: the chair ended the meeting for everyone (reason "
    "`ended by the chair`; sent to everyone joined and waiting in the lobby), or the scheduled "
    "meeting is over (`meeting ended`, also the answer to a join after its end). The client does "
    "not reconnect",
    CloseCode.RATE_LIMITED: "rate-limited: too many messages per second, room or lobby full, or "
    "too many rooms",
    CloseCode.SERVER_ERROR: "server error: an unexpected failure; the client may retry",
}
"""Every close code the server sends, with when it sends it."""

JOIN_REFUSED = "not allowed to join this room"
"""Close reason of a 4403 the policy decides, followed by `: ` and the refusal's code (see
"Refusal reasons"), e.g. `not allowed to join this room: mfa_required`."""


class Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Base of every message; `type` names it."""


# -- client to server -------------------------------------------------------------------------


class Join(Message, tag="join"):
    """First message on every connection: who I am (a signed token) and which room."""

    token: str
    room: str
    dpop: str = ""
    """A DPoP proof (RFC 9449) for `GET` on this socket's `ws(s)://` URL, signed by the device
    key the session or token is bound to (with `ath` for a token); required only then (or when
    the node's `dpop_required` is on). A browser cannot set the upgrade's headers, so it goes
    here; a missing or failing one closes the socket 4401 `invalid_dpop_proof: <reason>`."""


class Resume(Message, tag="resume"):
    """First message on a new connection that takes over a participant whose connection dropped
    without `leave` (instead of `join`): the server held them for `resume_grace_s`. The bearer
    token is checked as for a join (a revoked or expired one closes with 4401), and must name the
    same identity. The server answers `resumed`, then sends again every message numbered after
    `last_seq`, in order; refused, it closes with 4410 and the client joins again."""

    token: str
    """The bearer token, as in `join` (it may be a renewed one of the same identity)."""
    participant_id: str
    """The participant to take over (`joined.participant_id`)."""
    resume_token: str
    """The secret `joined.resume_token` gave this participant."""
    last_seq: Annotated[int, msgspec.Meta(ge=0)]
    """How many server messages the client processed after `joined` (on every connection of
    this participant): every server message after `joined` counts 1, 2, 3... in the order
    received, `resumed` excepted. The number is not carried on the messages (WebSocket delivery
    is ordered): the client counts."""
    dpop: str = ""
    """A DPoP proof, as in `join` (a fresh one: each proof is accepted once)."""


class Ping(Message, tag="ping"):
    """Keepalive; the server answers `pong` with the same id. Send one every 15 s."""

    id: int | None = None


class Leave(Message, tag="leave"):
    """Leave the room (or the lobby); the server closes with 1000."""


class Admit(Message, tag="admit"):
    """Chair: let a participant in from the lobby (`admit` permission)."""

    participant_id: str


class Deny(Message, tag="deny"):
    """Chair: refuse a participant waiting in the lobby; they are closed with 4403."""

    participant_id: str
    reason: str = ""


class Mute(Message, tag="mute"):
    """Chair: mute a participant's audio or video (`mute_others`). Everyone sees the new state;
    the SFU (issue 4) stops forwarding the muted track."""

    participant_id: str
    kind: Literal["audio", "video", "both"] = "audio"


class Remove(Message, tag="remove"):
    """Chair: remove a participant from the room (`remove_participant`); closed with 4403."""

    participant_id: str
    reason: str = ""


class SetMedia(Message, tag="set_media"):
    """Tell the room my own microphone/camera state (anyone may unmute themselves)."""

    audio_muted: bool | None = None
    video_muted: bool | None = None


class UpdateRoom(Message, tag="update_room"):
    """Chair: turn the lobby on or off, lock or unlock the room (`admit` permission)."""

    lobby: bool | None = None
    locked: bool | None = None


class EndMeeting(Message, tag="end_meeting"):
    """Chair: end the meeting for everyone (`remove_participant` permission: it removes
    everyone). A running recording is stopped first; everyone joined or waiting in the lobby,
    on every node, is closed with 4411 `ended by the chair`; a scheduled meeting turns `ended`
    and admits no one after."""


class Offer(Message, tag="offer"):
    """SDP offer. Each participant has two media sessions with the SFU: `publish` (the client
    offers its camera, microphone and data channels) and `subscribe` (the SFU offers everyone
    else's media, and offers again whenever that changes)."""

    sdp: str
    pc: Literal["publish", "subscribe"] = "publish"
    screen: list[str] = msgspec.field(default_factory=list)
    """Media ids (`a=mid`) of the publish offer that carry a screen share (needs the
    `share_screen` permission; other video is the camera, `publish_video`)."""


class Answer(Message, tag="answer"):
    """SDP answer to an `offer` on the same `pc`."""

    sdp: str
    pc: Literal["publish", "subscribe"] = "publish"


class Candidate(Message, tag="candidate"):
    """Trickle ICE candidate for one `pc` (client to server; the server's candidates are in its
    SDP). An empty `candidate` ends the client's gathering."""

    candidate: str
    pc: Literal["publish", "subscribe"] = "publish"
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


class RestartIce(Message, tag="restart_ice"):
    """My network changed (ICE on a session went `disconnected` or `failed`, or the browser
    went online again): restart ICE on the `subscribe` session, where the SFU is the offerer.
    The SFU offers again (`offer`) with new ICE credentials; the client answers as usual, and
    media moves to the new path with the same DTLS association, membership, consent and
    annotations. The client restarts the `publish` session itself: an `offer` with new ICE
    credentials (`RTCPeerConnection.restartIce()`) is answered with the SFU's new ones."""

    pc: Literal["subscribe"] = "subscribe"


CaseLabel = Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
"""What the chair calls a case of the agenda ("case 3"). Prefer agenda numbers to patient names:
labels are kept with the recording (its manifest) for as long as it is."""


class RequestConsent(Message, tag="request_consent"):
    """Ask everyone present to agree to be recorded (needs `start_recording`). Each client shows
    the recording notice and answers with `consent`."""


class Consent(Message, tag="consent"):
    """Your own answer to the recording notice (any joined participant, any time; a new
    answer replaces the old one from now on: declining while recording stops recording you)."""

    decision: Literal["granted", "declined"]
    notice_version: str = ""
    """The notice text version the client showed (the server's, from `consent_requested`)."""


class VerbalConsent(Message, tag="verbal_consent"):
    """The chair records a participant's spoken answer (needs `start_recording`); audited as
    verbal consent given through the chair."""

    participant_id: str
    decision: Literal["granted", "declined"] = "granted"


class StartRecording(Message, tag="start_recording"):
    """Start recording (needs `start_recording`). Refused with `consent_missing` until everyone
    present has answered; those who declined are left out of the recording."""

    recording_class: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "mdt"
    """Retention class (settings say how long each class is kept)."""


class StopRecording(Message, tag="stop_recording"):
    """Stop recording (needs `stop_recording`)."""


class MarkCase(Message, tag="mark_case"):
    """Start the next case of the agenda while recording (needs `start_recording`): a segment
    boundary in the recording, so one case can be retrieved and exported alone."""

    label: CaseLabel


MEDIA_FAILURE_CAUSES = ("ice_failed", "no_media")
"""Why a client's media session did not connect (`media_failed`); counted per cause on /metrics."""


class MediaFailed(Message, tag="media_failed"):
    """My media session with the SFU did not connect: the page says so to the person (what IT
    should check), and the server counts it (`consilium_media_failures_total` on /metrics) and
    logs it without names. Sent at most once per session and cause."""

    cause: Literal["ice_failed", "no_media"]
    """`ice_failed`: ICE tried every candidate pair and none worked (UDP blocked between the
    browser and the SFU, and no TURN relay); `no_media`: the session did not connect within
    a few seconds of joining."""
    pc: Literal["publish", "subscribe"] = "publish"
    candidates: Annotated[
        list[Literal["host", "srflx", "prflx", "relay"]], msgspec.Meta(max_length=4)
    ] = msgspec.field(default_factory=list)
    """The kinds of local ICE candidate the browser gathered (no addresses): no `relay` means
    the browser had no usable TURN server."""


DevicePixels = Annotated[int, msgspec.Meta(ge=0, le=8192)]
"""One side of a tile, in device pixels (CSS pixels times `devicePixelRatio`)."""
MAX_RENDER_SIZES = 64
"""Most tiles one `render_sizes` message may report."""


class RenderSizes(Message, tag="render_sizes"):
    """The size at which my page shows each video track I receive, by the subscribe session's
    media id: the SFU forwards each simulcast camera in the smallest layer that covers its tile
    (within my bandwidth), and nothing at all for a tile that is hidden or off screen. A media
    id never reported is taken as shown at an unknown size (it gets what the bandwidth allows).
    Send it when the layout changes, not per frame; each message replaces the sizes it names."""

    sizes: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=32)],
             Annotated[list[DevicePixels], msgspec.Meta(min_length=2, max_length=2)]],
        msgspec.Meta(max_length=MAX_RENDER_SIZES),
    ]  # fmt: skip
    """`{"<mid>": [width, height]}`; `[0, 0]`: hidden or off screen (nothing is forwarded; a
    keyframe is asked for when it shows again)."""


ClientMessage = (
    Join
    | Resume
    | Ping
    | Leave
    | Admit
    | Deny
    | Mute
    | Remove
    | SetMedia
    | UpdateRoom
    | EndMeeting
    | Offer
    | Answer
    | Candidate
    | RestartIce
    | RequestConsent
    | Consent
    | VerbalConsent
    | StartRecording
    | StopRecording
    | MarkCase
    | MediaFailed
    | RenderSizes
)
"""Everything a client may send."""


# -- server to client -------------------------------------------------------------------------


class ParticipantInfo(msgspec.Struct, omit_defaults=True):
    """A participant as others see them."""

    participant_id: str
    sub: str
    name: str
    role: str
    depts: list[str]
    org: str = ""
    audio_muted: bool = False
    video_muted: bool = False
    waiting: bool = False
    reconnecting: bool = False
    """Held for a resume since their node was lost (`participant_reconnecting` says when it
    changes)."""


class RoomCase(msgspec.Struct):
    """One case on a scheduled meeting's list: the HIS's reference and a non-identifying label."""

    case_id: str
    label: str = ""


class RoomState(msgspec.Struct, omit_defaults=True):
    """The room's settings as participants see them."""

    room_id: str
    departments: list[str]
    lobby: bool = False
    locked: bool = False
    title: str = ""
    recording: bool = False
    cases: list[RoomCase] = msgspec.field(default_factory=list)
    """The case list of a meeting the HIS scheduled (absent for other rooms)."""


class Joined(Message, tag="joined"):
    """Answer to a successful join (or to admission from the lobby). `ice_servers` and
    `ice_transport_policy` are the configuration of the client's peer connections: the STUN and
    TURN servers (TURN with credentials valid for `turn_ttl_s`), and `relay` when the node's
    `ice_transport_policy` setting says media must go through TURN only."""

    participant_id: str
    you: ParticipantInfo
    permissions: list[str]
    room: RoomState
    participants: list[ParticipantInfo]
    lobby: list[ParticipantInfo] = msgspec.field(default_factory=list)
    ice_servers: list[dict[str, Any]] = msgspec.field(default_factory=list)
    ice_transport_policy: Literal["all", "relay"] = "all"
    resume_token: str = ""
    """The secret a `resume` of this participant must carry (empty: the node does not hold
    participants, `resume_grace_s` is 0). Messages are counted from after this one."""


class Resumed(Message, tag="resumed"):
    """Answer to a `resume` that took the participant over: the same participant id, room
    membership, permissions and media sessions. The messages numbered after the `resume`'s
    `last_seq` follow, in order, then the room goes on; `resumed` itself is not counted."""

    participant_id: str
    last_seq: int
    """The number of the last message sent before this answer (the replay ends there)."""
    replayed: bool = True
    """False when the participant's node was lost and another node took them over (issue 13):
    nothing is replayed, their media sessions are gone. A `joined` follows at once (the same
    participant id, the room as it is now, a new resume token; messages are counted from after
    it), and the client opens new media sessions, as after `media_moved`."""


class ParticipantReconnecting(Message, tag="participant_reconnecting"):
    """Someone's connection dropped and the server holds them for a resume (`reconnecting`
    true: show their tile as reconnecting; their media stays as it is), or they resumed
    (`reconnecting` false). Not resumed within `resume_grace_s`, they leave
    (`participant_left`, reason `connection_lost`). Not repeated to a later joiner. With
    `media` true, the same news from the SFU while their connection stays up: their media is
    looking for a new network path (an ICE restart: `reconnecting` true), or has one again, or
    gave up looking and kept the old one, or they left (false); a later joiner is told of each
    ICE restart still under way (`reconnecting` true) when it sends its first publish `offer`,
    so after its `joined`. The two sources are independent: show the tile as reconnecting
    while either says so (a resume does not end an ICE restart, nor the other way round)."""

    participant_id: str
    reconnecting: bool
    media: bool = False
    """True when the SFU says it (an ICE restart), false (left out) when signalling does."""


class MediaMoved(Message, tag="media_moved"):
    """The room's media moved to another node (the node that hosted it was lost, or is being
    stopped): my media sessions lead nowhere now. Close both and open new ones as after
    `joined` (a publish `offer` with my camera, microphone, screen share and data channels; the
    SFU offers the subscribe session); membership, permissions and the signalling connection
    stay, and nothing goes through the lobby again. Messages about the media sessions before
    this one are about the old ones."""

    reason: Literal["node_lost", "drain"]
    """Why: `node_lost`, the node hosting the media stopped answering; `drain`, it is being
    stopped (a planned restart) and moved its rooms first."""


class Lobby(Message, tag="lobby"):
    """You are waiting: the room has a lobby (`lobby_enabled`) or is not open yet
    (`room_not_open`); you will get `joined` when admitted or when the room opens."""

    room: str
    reason: Literal["lobby_enabled", "room_not_open"]
    participant_id: str


class Knock(Message, tag="knock"):
    """To those who may admit: someone is waiting in the lobby."""

    participant: ParticipantInfo


class LobbyLeft(Message, tag="lobby_left"):
    """To those who may admit: someone left the lobby (admitted, denied or gone)."""

    participant_id: str
    outcome: Literal["admitted", "denied", "left"]


class ParticipantJoined(Message, tag="participant_joined"):
    """Someone joined the room."""

    participant: ParticipantInfo


class ParticipantLeft(Message, tag="participant_left"):
    """Someone left the room: `left`, `removed`, `revoked`, `replaced`, `timed_out`,
    `connection_lost` (no close: a crashed tab, a reset), `slow_consumer` (dropped: it did not
    read what the server sent, 4408), `node_lost` (the server node holding their connection
    died, and they did not resume on another node within `resume_grace_s`), `node_stopped` (it
    stopped for an upgrade and handed them over, and they did not resume elsewhere)..."""

    participant_id: str
    reason: str = "left"


class ParticipantUpdated(Message, tag="participant_updated"):
    """A participant's state changed (muted, unmuted)."""

    participant: ParticipantInfo
    by: str = ""


class RoomUpdated(Message, tag="room_updated"):
    """The room's settings changed (lobby, lock; or its meeting's title and cases, changed by
    the HIS)."""

    room: RoomState


class Pong(Message, tag="pong"):
    """Answer to `ping`."""

    id: int | None = None
    server_time: float = 0.0


class TrackInfo(msgspec.Struct):
    """Which participant's media one subscribe transceiver carries."""

    mid: str
    participant_id: str
    kind: Literal["audio", "video"]
    track_id: str
    source: Literal["microphone", "camera", "screen"] = "camera"
    paused: bool = False
    """The SFU sends nothing on it for now: this participant's link cannot carry it beside the
    rest (least important cameras first); it resumes by itself when the link allows. The page
    shows the tile as paused for the viewer's own connection."""


class Tracks(Message, tag="tracks"):
    """The subscribe session's transceivers and whose media each carries now (sent after
    every change; a transceiver missing from the list is idle)."""

    tracks: list[TrackInfo]


class ActiveSpeaker(Message, tag="active_speaker"):
    """The room's dominant speaker changed (the SFU decides from the audio level each
    microphone's packets carry, with hysteresis: about a second of speech before a switch, and a
    silent room keeps its speaker). Sent to everyone in the room, and once to each newcomer."""

    participant_id: str | None
    """Who speaks now, or null when the speaker stopped publishing audio and nobody else spoke."""


class ImageShared(Message, tag="image_shared"):
    """Someone shared an image into the room (`POST /api/rooms/{room}/images`): the same fields
    as that request's answer. Fetch its frames with `GET /api/rooms/{room}/images/{image_id}`.
    Sent again with the same `image_id` when the image changes: a held image released, or a
    series from the PACS growing as its slices arrive (`frames`, `slice_order` and
    `frames_pending` updated, a few times a second at most); the latest one wins."""

    image_id: str
    kind: Literal["dicom", "png", "jpeg"]
    frames: int
    width: int
    height: int
    shared_by: str
    """Participant id of whoever shared it."""
    title: str
    """Modality and series description (after de-identification), or "Image" for a photo."""
    pixel_spacing_mm: list[float] | None = None
    """[row_mm, column_mm] for measurements, or null when the image has no calibrated spacing."""
    burned_in_confirmed: bool = False
    """The DICOM declares identifiers burned into its pixels and the uploader confirmed."""
    slice_order: list[int] = []
    """A series shared from the PACS as one stacked image: its frame indexes in anatomical
    order, to scroll through (a frame index, the `frame` of fetches and annotations, never
    changes meaning; a slice arriving later may sort before it). Empty: frames in index order."""
    frames_pending: int = 0
    """Slices of that series still on their way (0: complete, or not a series)."""


class PacsShareProgress(Message, tag="pacs_share_progress"):
    """A series (or study) is being shared from the PACS (`POST /api/rooms/{room}/pacs/shares`):
    sent to everyone in the room when it starts, as instances arrive (a few times a second at
    most) and when it ends. Each series becomes ONE stacked image: its `image_shared` comes as
    soon as its first slice is ready and again as it grows."""

    share_id: str
    state: Literal["running", "done", "failed"]
    shared: int
    """Instances shared into the room so far."""
    total: int
    """Instances the PACS said the series has (0: not known)."""
    title: str = ""
    """Modality and series description (no patient data)."""
    shared_by: str = ""
    """Participant id of whoever shared it."""
    error: str = ""
    """When `failed`: the error code (e.g. `pacs_unavailable`, `too_many_images`); `cancelled`
    when the sharer or a chair stopped it. The slices that arrived stay shared."""
    skipped: int = 0
    """Instances left out (not an image, another size than the series, several frames of its
    own, burned-in annotation declared, beyond the frame limit)."""
    skipped_reasons: list[str] = []
    """Why, each reason code once: `unsupported_image`, `burned_in_annotation`,
    `image_too_large`, `slice_size_differs`, `slice_kind_differs`, `multi_frame_in_series`,
    `series_frame_limit`."""
    images: list[str] = []
    """The stacked images this share made (one per series), by `image_id`."""


class ConsentRequested(Message, tag="consent_requested"):
    """Please answer the recording notice (`consent`): sent to everyone when the chair asks,
    and to each late joiner while recording is requested or running. Until you agree your
    media is not recorded."""

    notice_version: str
    """Version of the notice text to show (the client's catalogue holds the text)."""
    requested_by: str = ""
    """Participant id of the chair who asked."""


class RecordingState(Message, tag="recording_state"):
    """The room's recording, to everyone on every change: whether it runs, and each present
    participant's consent (`granted`, `declined`, or `pending` for no answer yet)."""

    recording: bool
    recording_id: str = ""
    started_at: str = ""
    """UTC start time, ISO 8601."""
    requested: bool = False
    """Consent has been asked for (the chair may start once nobody is `pending`)."""
    consent: dict[str, Literal["granted", "declined", "pending"]] = msgspec.field(
        default_factory=dict
    )
    """By participant id."""
    cases: list[str] = msgspec.field(default_factory=list)
    """Case labels marked so far, in order."""
    notice_version: str = ""
    failure: Literal["", "disk_full", "write_failed"] = ""
    """Set (with `recording` false) when the recording has just stopped by itself:
    `disk_full` (the data folder ran out of space, or below its hard floor), `write_failed`
    (another storage error). What was stored up to then is kept, marked `failed`."""
    failed_recording_id: str = ""
    """The recording that failed (with `failure`)."""


class StorageLow(Message, tag="storage_low"):
    """To the chair of a room being recorded: the data folder's free space is below the
    reserve (`disk_reserve_mb`); below a quarter of it the recording stops as failed."""

    free_mb: int
    reserve_mb: int
    recording_id: str = ""


class Error(Message, tag="error"):
    """A recoverable bad request: the connection stays open. Also `data_channel_closed`
    (request `data`): the SFU saw my ordered data channel close; the client opens a new one
    (which asks `sync`), or joins again."""

    code: ErrorCode
    message: str
    request: str = ""


ServerMessage = (
    Joined
    | Resumed
    | ParticipantReconnecting
    | MediaMoved
    | Lobby
    | Knock
    | LobbyLeft
    | ParticipantJoined
    | ParticipantLeft
    | ParticipantUpdated
    | RoomUpdated
    | Pong
    | Tracks
    | ActiveSpeaker
    | ImageShared
    | PacsShareProgress
    | ConsentRequested
    | RecordingState
    | StorageLow
    | Error
    | Offer
    | Answer
    | Candidate
)
"""Everything the server may send."""


client_decoder = msgspec.json.Decoder(ClientMessage)
"""Validates one client message (raises msgspec.ValidationError / DecodeError)."""

_encoder = msgspec.json.Encoder()


def encode(message: Message) -> str:
    """One server message as JSON text."""
    return _encoder.encode(message).decode()


def client_schema() -> dict[str, Any]:
    """JSON Schema of the client messages."""
    return msgspec.json.schema(ClientMessage)


def server_schema() -> dict[str, Any]:
    """JSON Schema of the server messages."""
    return msgspec.json.schema(ServerMessage)
