"""The SFU of one node: its media rooms, and who in each receives what.

`MediaServer` is what signalling talks to (it never imports signalling: it is handed each
participant's permissions at join and a `notify` callback to send them `sfu.events`
notifications). A recording reaches the media through `attach_sink` / `detach_sink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from annotations.log import AnnotationLog, LogError, log_path
from annotations.room import RoomAnnotations
from core.imageref import ImageRef
from sfu.aiortc_hooks import codec_guard
from sfu.downlink import estimate_buckets
from sfu.events import Notification
from sfu.ice import IceSettings, install, server_ice_servers, socket_buffers, uninstall
from sfu.probing import probe_counts
from sfu.retransmit import Refusal, RetransmitBudget
from sfu.room import MediaRoom, RoomFigures
from sfu.round_trip import round_trip_buckets
from sfu.session import ParticipantMedia, bundle_configuration
from sfu.sinks import MediaSink
from sfu.socket_receive import queue_delay
from sfu.types import MediaError

log = logging.getLogger("consilium.sfu")

Notify = Callable[[str, Notification], None]
"""Sends one notification to a participant, by participant id."""


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """The SFU's settings (signalling builds them from its own settings object)."""

    video_codecs: tuple[str, ...] = ("VP8", "H264")
    """Video codecs in order of preference; a room uses the first its first publisher offers."""
    twcc: bool = True
    """Answer publishers' transport-cc offers and send them its feedback (`sfu.twcc`); offer it
    to subscribers and estimate their downlink from theirs (`sfu.downlink`)."""
    ice: IceSettings = field(default_factory=IceSettings)
    """Host addresses, UDP port range, STUN/TURN."""
    max_sdp_bytes: int = 64 * 1024
    """Largest SDP accepted from a client."""
    data_dir: Path | None = None
    """Where each room's annotation and chat log is kept (`<data_dir>/rooms/<room>/`); None:
    nothing is persisted (tests of forwarding alone)."""
    room_key: Callable[[str], bytes] | None = None
    """The room's data key (encrypts its annotation log at rest), from the node's keyring."""
    image_info: Callable[[str, str], ImageRef | None] | None = None
    """Looks up a shared image of a room (`room_id, image_id`): annotations refer to it. None:
    no image store, every image id is unknown (`unknown_image`)."""
    annotation_mirror: Callable[[str, int, bytes], None] | None = None
    """Told every stamped annotation and chat event (`room_id, seq, JSON`) as it is stamped,
    for the node a room's media may move to (`seed_annotations` there). None: not copied."""
    annotation_max_bytes: int = 32 * 1024
    """Largest message on the reliable data channel (an op, a chat message), in UTF-8 bytes;
    larger ones are refused with `too_large`."""
    annotation_max_points: int = 2000
    """Most points in one freehand stroke."""
    annotation_max_text_chars: int = 1000
    """Longest text of a text shape."""
    annotation_ops_per_s: float = 50.0
    """Messages (ops, chat, receipts, syncs) per second per participant on the reliable channel, on
    average (a token bucket); more are refused with `rate_limited`."""
    annotation_burst: int = 100
    """How many of those may come at once (the bucket's size)."""
    annotation_max_shapes_per_image: int = 1000
    """Most shapes on one shared image (all frames); more are refused with `too_many_shapes`."""
    chat_max_chars: int = 4000
    """Longest chat message."""
    pointer_per_s: float = 30.0
    """Pointer positions per second per participant relayed on the lossy channel; extra ones
    are dropped silently."""
    retransmit_share: float = 0.25
    """Most bytes resent to a subscriber (answering its NACKs), as a share of the bytes
    forwarded to it over the last second (`sfu.retransmit`)."""
    retransmit_max_age_s: float = 0.4
    """Playout budget: a lost packet older than this (since it reached the SFU) is not resent,
    it could no longer be played."""
    max_delay_s: float = 0.25
    """A packet that waited longer than this between reaching the SFU and being forwarded is
    kept from live subscribers (and a keyframe asked for) instead of delivered late; the sinks
    (a recording) still get it. 0: no bound."""


class MediaServer:
    """The node's SFU: media rooms and every participant's sessions."""

    def __init__(self, settings: MediaSettings, notify: Notify) -> None:
        self.settings = settings
        self.notify = notify
        self.rooms: dict[str, MediaRoom] = {}
        self.participants: dict[str, ParticipantMedia] = {}
        self._room_of: dict[str, MediaRoom] = {}
        """Each participant's room (theirs knows it only as a `ParticipantRoom`)."""
        self._ticker: asyncio.Task[None] | None = None
        self._ended = {
            "forwarded": 0, "received": 0, "retransmitted": 0, "twcc_feedback": 0, "duplicates": 0
        }  # fmt: skip
        self._ended_refused: dict[Refusal, int] = dict.fromkeys(Refusal, 0)
        """Retransmissions refused to participants who left, by reason."""
        self._seeds: dict[str, list[tuple[int, bytes]]] = {}
        """Events another node stamped in a room whose media comes here (`seed_annotations`),
        taken over when the room is created on this SFU."""
        install(settings.ice)
        codec_guard.install()
        queue_delay.max_ms = round(settings.max_delay_s * 1000)

    async def start(self) -> None:
        """Start the periodic RTCP work."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def close(self) -> None:
        """End every session."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for participant_id in list(self.participants):
            await self.leave(participant_id)
        uninstall()

    def room(self, room_id: str) -> MediaRoom:
        """The media room, created on first use."""
        room = self.rooms.get(room_id)
        if room is None:
            room = MediaRoom(
                room_id, self._annotations(room_id), self.settings.video_codecs, self.leave
            )
            self.rooms[room_id] = room
        return room

    def attach_sink(self, room_id: str, sink: MediaSink) -> None:
        """Hand the room's media to a sink (a recording) from now on: every track published
        later, and the annotation events. The room is created if nobody is in it yet."""
        sinks = self.room(room_id).sinks
        if sink not in sinks:
            sinks.append(sink)

    def detach_sink(self, room_id: str, sink: MediaSink) -> None:
        """Stop handing the room's media to a sink (the recording stopped or failed)."""
        room = self.rooms.get(room_id)
        if room is not None and sink in room.sinks:
            room.sinks.remove(sink)

    def seed_annotations(self, room_id: str, records: list[tuple[int, bytes]]) -> None:
        """Events (seq, JSON) other nodes stamped in `room_id` (its media was theirs): the room,
        when it is created here, takes over those past its own log's last."""
        if room_id not in self.rooms and records:
            self._seeds[room_id] = records

    def _annotations(self, room_id: str) -> RoomAnnotations:
        """A room's annotations, rebuilt from its log when it has one (a restart, or the room
        emptied and entered again), then brought up to date with what other nodes stamped
        while they hosted it (`seed_annotations`)."""
        settings = self.settings
        log_file = None
        if settings.data_dir is not None and settings.room_key is not None:
            try:
                path = log_path(settings.data_dir, room_id)
                log_file = AnnotationLog(path, room_id, settings.room_key(room_id))
            except (OSError, ValueError, LogError) as exc:
                log.exception("annotation log unusable", extra={"room": room_id})
                raise MediaError(f"the room's annotation log cannot be opened: {exc}") from None
        elif settings.data_dir is not None:
            log.warning("no room key: annotations kept in memory only", extra={"room": room_id})
        mirror = settings.annotation_mirror
        annotations = RoomAnnotations(
            room_id, settings, settings.image_info, log_file,
            mirror=None if mirror is None else functools.partial(mirror, room_id),
        )  # fmt: skip
        seed = self._seeds.pop(room_id, None)
        if seed:
            adopted = annotations.adopt(seed)
            if adopted:
                log.info("annotations taken over", extra={"room": room_id, "events": adopted})
        return annotations

    async def join(
        self,
        room_id: str,
        participant_id: str,
        permissions: frozenset[str],
        *,
        audio_muted: bool = False,
        video_muted: bool = False,
        user: str = "",
    ) -> None:
        """A participant entered the room: they start receiving everyone's tracks."""
        room = self.room(room_id)
        configuration = bundle_configuration(server_ice_servers(self.settings.ice, user))
        media = ParticipantMedia(
            room, room.relay, participant_id, permissions,
            lambda message: self.notify(participant_id, message), configuration,
            muted={"audio": audio_muted, "video": video_muted},
        )  # fmt: skip
        media.subscriber.retransmits = RetransmitBudget(
            share=self.settings.retransmit_share, max_age_s=self.settings.retransmit_max_age_s
        )
        media.publisher.transport_cc = self.settings.twcc
        media.subscriber.transport_cc = self.settings.twcc
        room.relay.join(media.data, user)
        room.participants[participant_id] = media
        self._room_of[participant_id] = room
        self.participants[participant_id] = media
        for track in room.tracks():
            if track.info.participant_id != participant_id:
                media.subscribe(track)

    async def leave(self, participant_id: str) -> None:
        """A participant left: close their sessions, stop forwarding their tracks."""
        media = self.participants.pop(participant_id, None)
        if media is None:
            return
        for track in media.tracks.values():
            self._ended["forwarded"] += track.forwarded
            self._ended["received"] += track.received
            self._ended["retransmitted"] += track.retransmitted
            self._ended["duplicates"] += track.duplicates
        for reason, count in media.subscriber.retransmits.refused.items():
            self._ended_refused[reason] += count
        self._ended["twcc_feedback"] += media.publisher.feedback_sent
        room = self._room_of.pop(participant_id)
        room.keep_totals(media)
        room.participants.pop(participant_id, None)
        room.relay.leave(participant_id)
        await media.close()
        room.relay.forget(participant_id)
        if not room.participants and self.rooms.get(room.room_id) is room:
            self.rooms.pop(room.room_id, None)
            room.relay.close()

    def _media(self, participant_id: str) -> ParticipantMedia:
        media = self.participants.get(participant_id)
        if media is None:
            raise MediaError("no media session: join the room first")
        return media

    async def offer(
        self, participant_id: str, which: str, sdp: str, *, screen: Sequence[str] = ()
    ) -> str:
        """A client's offer (only `publish` is client-offered); returns the answer. `screen`
        names the media ids that carry a screen share."""
        if which != "publish":
            raise MediaError("only the publish session is offered by the client")
        self._check_sdp(sdp)
        return await self._media(participant_id).publish_offer(sdp, screen=screen)

    async def answer(self, participant_id: str, which: str, sdp: str) -> None:
        """A client's answer (only `subscribe` is SFU-offered)."""
        if which != "subscribe":
            raise MediaError("only the subscribe session is answered by the client")
        self._check_sdp(sdp)
        await self._media(participant_id).subscribe_answer(sdp)

    async def restart_ice(self, participant_id: str, which: str) -> None:
        """A client's network changed: restart ICE on its `subscribe` session (the client
        restarts `publish` itself, offering new credentials)."""
        if which != "subscribe":
            raise MediaError("only the subscribe session is restarted on request")
        await self._media(participant_id).restart_ice()

    async def candidate(
        self, participant_id: str, which: str, candidate: str, sdp_mid: str | None,
        sdp_mline_index: int | None,
    ) -> None:  # fmt: skip
        """A trickled ICE candidate from a client."""
        await self._media(participant_id).add_candidate(which, candidate, sdp_mid, sdp_mline_index)

    def set_muted(self, participant_id: str, kind: str, muted: bool) -> None:
        """Stop or resume forwarding a participant's audio or video (within this call)."""
        media = self.participants.get(participant_id)
        if media is not None:
            media.set_muted(kind, muted)

    def show(self, participant_id: str, sizes: dict[str, tuple[int, int]]) -> None:
        """The sizes a participant's page shows its received tracks at (`render_sizes`: device
        pixels by subscribe media id; 0 x 0: hidden, nothing is forwarded to it)."""
        media = self.participants.get(participant_id)
        room = self._room_of.get(participant_id)
        if media is not None:
            speaker = room.speakers.speaker if room is not None else None
            media.show(sizes, time.monotonic(), speaker)

    def stats(self) -> dict[str, int]:
        """Counters for the node's metrics (totals since start)."""
        tracks = [t for m in self.participants.values() for t in m.tracks.values()]
        refused = dict(self._ended_refused)
        for media in self.participants.values():
            for reason, count in media.subscriber.retransmits.refused.items():
                refused[reason] += count
        return {
            "rooms": len(self.rooms),
            "participants": len(self.participants),
            "published_tracks": len(tracks),
            "received_packets": self._ended["received"] + sum(t.received for t in tracks),
            "forwarded_packets": self._ended["forwarded"] + sum(t.forwarded for t in tracks),
            "retransmitted_packets": self._ended["retransmitted"]
            + sum(t.retransmitted for t in tracks),
            "dropped_packets": sum(m.dropped for m in self.participants.values()),
            "duplicate_packets": self._ended["duplicates"] + sum(t.duplicates for t in tracks),
            **{
                f'retransmissions_refused{{reason="{reason}"}}': count
                for reason, count in refused.items()
            },
            "late_dropped_packets": queue_delay.dropped,
            **{
                f'queue_delay_ms_bucket{{le="{bound}"}}': count
                for bound, count in queue_delay.cumulative()
            },
            "socket_receive_buffer_bytes": socket_buffers.receive,
            "socket_send_buffer_bytes": socket_buffers.send,
            "twcc_feedback_packets": self._ended["twcc_feedback"]
            + sum(m.publisher.feedback_sent for m in self.participants.values()),
            **estimate_buckets(
                m.subscriber.measured_downlink_bps for m in self.participants.values()
            ),
            **probe_counts(m.subscriber.probe_control for m in self.participants.values()),
            **round_trip_buckets(m.subscriber.rtt_s for m in self.participants.values()),
            "codec_encoders_created": codec_guard.encoders,
            "codec_decoders_created": codec_guard.decoders,
        }

    def room_figures(self) -> dict[str, RoomFigures]:
        """Each media room's figures now, by room id (the node's per-room metrics; the room id
        is for the caller to hide: it may name a patient)."""
        return {room_id: room.figures() for room_id, room in self.rooms.items()}

    def _check_sdp(self, sdp: str) -> None:
        if len(sdp.encode()) > self.settings.max_sdp_bytes:
            raise MediaError("SDP larger than the bound")
        if not sdp.startswith("v=0") or "\nm=" not in sdp:
            raise MediaError("not an SDP description with media sections")

    async def _tick(self) -> None:
        count = 0
        while True:
            await asyncio.sleep(0.2)
            count += 1
            now = time.monotonic()
            for participant_id, media in list(self.participants.items()):
                room = self._room_of.get(participant_id)
                speaker = room.speakers.speaker if room is not None else None
                try:
                    media.tick(now, report=count % 5 == 0, speaker=speaker)
                except Exception:
                    log.exception("RTCP tick failed", extra={"participant": media.participant_id})
