"""One media room: its participants, their published tracks, the room's codecs and sinks.

The node's rooms are kept by `sfu.server.MediaServer`; a participant's media sees its room only as
a `sfu.types.ParticipantRoom`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from annotations.room import RoomAnnotations
from sfu.datachannels import AnnotationRelay
from sfu.events import ActiveSpeaker, MediaReconnecting
from sfu.forwarder import OutboundSlot, PublishedTrack
from sfu.session import ParticipantMedia
from sfu.sinks import MediaSink
from sfu.speaker import DominantSpeaker


@dataclass(slots=True)
class RoomFigures:
    """One media room's figures for the node's metrics (`MediaRoom.figures`): counters since the
    room began on this node (those of participants who left included), and gauges now. Read
    when the metrics are scraped, from counters the forwarding keeps anyway: nothing per packet."""

    participants: int = 0
    """Participants whose media this node hosts in the room now."""
    published_tracks: int = 0
    """Tracks published in the room now."""
    received_packets: int = 0
    """RTP packets received from the room's publishers."""
    received_lost_packets: int = 0
    """Packets the publishers sent that never arrived (by sequence number, RFC 3550 A.3)."""
    forwarded_packets: int = 0
    """RTP packets forwarded to the room's subscribers."""
    forwarded_bytes: int = 0
    """RTP payload bytes forwarded to the room's subscribers."""
    retransmitted_packets: int = 0
    """Packets resent to subscribers that reported them lost (answers to their NACKs)."""
    late_dropped_packets: int = 0
    """Packets kept from subscribers for waiting past the real-time bound (`max_delay_s`)."""
    keyframe_requests: int = 0
    """Keyframe requests (PLI) sent to the room's publishers."""
    camera_pauses: int = 0
    """Times cameras were paused for a subscriber's link (`sfu.pausing`)."""
    subscriber_loss: float | None = None
    """Mean share of packets lost, as the subscribers' latest receiver reports say, over the
    slots carrying a track (None: no report yet)."""
    round_trip_s: float | None = None
    """Mean round trip of the participants measured so far, in seconds (None: none yet)."""
    video_layers: dict[str, int] = field(default_factory=dict)
    """Video subscriptions by what they receive now: a simulcast layer (`0` lowest), `single`
    (a camera sent as one stream), `hidden` (the tile is not shown), `none` (waiting for a
    keyframe, or paused)."""
    sinks: int = 0
    """Sinks (recordings) attached to the room."""


@dataclass(slots=True)
class _LeftTotals:
    """The counters of participants who left the room, so the room's counters never go back."""

    received: int = 0
    lost: int = 0
    forwarded: int = 0
    forwarded_bytes: int = 0
    retransmitted: int = 0
    late: int = 0
    keyframe_requests: int = 0
    pauses: int = 0


class MediaRoom:
    """One room's media: its participants, their published tracks, the room's codecs, and who
    among them is speaking."""

    def __init__(
        self,
        room_id: str,
        annotations: RoomAnnotations,
        video_codecs: tuple[str, ...],
        leave: Callable[[str], Awaitable[None]],
    ) -> None:
        self.room_id = room_id
        self.video_codecs = video_codecs
        """Video codecs in order of preference (`MediaSettings.video_codecs`)."""
        self._leave = leave
        """The server's `leave` (a participant's media dropped from the whole node)."""
        self.participants: dict[str, ParticipantMedia] = {}
        self.video_codec: str | None = None
        self.audio_codec = "opus"
        self.sinks: list[MediaSink] = []
        self.annotations = annotations
        """The room's annotations (shapes on shared images, chat) and their log."""
        self.relay = AnnotationRelay(room_id, annotations, self.sinks)
        """The room's data-channel traffic and its annotations."""
        self.speakers = DominantSpeaker()
        """Who is speaking (`speakers.speaker`): what a layer selector reads to give the speaker
        the high layer, and what the room tells its participants (`events.ActiveSpeaker`)."""
        self._told: set[str] = set()
        """Participants who have been told the current speaker."""
        self._left = _LeftTotals()
        """The counters of participants who left (`keep_totals`)."""
        self._lost_shown = 0
        """The highest loss `figures` gave: a late packet lowers RFC 3550's count of those lost,
        a counter must not go back."""

    def choose_codec(self, kind: str, offered: list[RTCRtpCodecParameters]) -> str | None:
        """The codec this room uses for `kind` if the publisher offers it (else None).

        The room's video codec is fixed by its first video publisher, from the preference
        list, so every subscriber receives the same codec and can decode it.
        """
        names = {c.mimeType.split("/")[-1].lower() for c in offered}
        if kind == "audio":
            return f"audio/{self.audio_codec}" if self.audio_codec in names else None
        if self.video_codec is None:
            for name in self.video_codecs:
                if name.lower() in names:
                    self.video_codec = name
                    break
        if self.video_codec is not None and self.video_codec.lower() in names:
            return f"video/{self.video_codec}"
        return None

    def codec_name(self, kind: str) -> str:
        """The codec this room uses for `kind`, for a message (the choices, in order, while no
        publisher has fixed it)."""
        if kind == "audio":
            return self.audio_codec
        return self.video_codec or " or ".join(self.video_codecs)

    def codec_capability(self, kind: str) -> list[RTCRtpCodecCapability]:
        """Codec preferences for a subscribe transceiver: the room's codec and its RTX."""
        name = self.audio_codec if kind == "audio" else (self.video_codec or "VP8")
        caps = RTCRtpSender.getCapabilities(kind).codecs
        chosen = [c for c in caps if c.mimeType.split("/")[-1].lower() == name.lower()]
        chosen += [c for c in caps if c.mimeType.lower().endswith("/rtx")]
        return chosen

    def track_published(self, track: PublishedTrack) -> None:
        """A new track: everyone else in the room receives it."""
        for sink in self.sinks:
            sink.on_track(track.info)
        for participant in self.participants.values():
            if participant.participant_id != track.info.participant_id:
                participant.subscribe(track)

    def track_ended(self, track: PublishedTrack) -> None:
        """A track is gone: the slots carrying it go idle; a microphone's end may hand the
        speaker over."""
        for participant in self.participants.values():
            participant.unsubscribe(track)
        for sink in self.sinks:
            sink.on_track_ended(track.info)
        if track.info.kind == "audio" and self.speakers.forget(track.info.participant_id):
            self._announce_speaker()

    def hear_audio(self, participant_id: str, level: int, muted: bool, now: float) -> None:
        """One audio packet's level byte (RFC 6464) from a publisher. The detector decides at
        the end of each of its intervals (~300 ms), timed by the packets themselves: while
        nobody sends audio there is nothing to decide (a silent room keeps its speaker), and a
        speaker who stops publishing is handed over at once (`track_ended`)."""
        # Hot path, per received audio packet: watched by bench/forwarding.py.
        speakers = self.speakers
        if muted:  # a muted microphone still sends packets: they are not speech
            if speakers.forget(participant_id):
                self._announce_speaker()
            return
        if speakers.hear(participant_id, level, now):
            if speakers.tick(now):
                self._announce_speaker()
            elif speakers.speaker is not None and not self._told.issuperset(self.participants):
                self._announce_speaker(only_newcomers=True)

    def _announce_speaker(self, *, only_newcomers: bool = False) -> None:
        """Tell the room (or those who joined since it was last told) who speaks now."""
        event = ActiveSpeaker(participant_id=self.speakers.speaker)
        for participant_id, participant in self.participants.items():
            if not only_newcomers or participant_id not in self._told:
                participant.notify(event)
        self._told = set(self.participants)

    def media_reconnecting(self, participant_id: str, reconnecting: bool) -> None:
        """Tell everyone else in the room that a participant's media is looking for a new
        network path (an ICE restart), or has one again (`events.MediaReconnecting`)."""
        event = MediaReconnecting(participant_id=participant_id, reconnecting=reconnecting)
        for other_id, other in self.participants.items():
            if other_id != participant_id:
                other.notify(event)

    def tell_newcomer(self, participant_id: str) -> None:
        """Tell a participant who just joined whose media is reconnecting now (an ICE restart
        under way): they missed its start, and their roster would show the tile as normal."""
        newcomer = self.participants.get(participant_id)
        if newcomer is None:
            return
        for other_id, other in self.participants.items():
            if other_id != participant_id and other.restarting:
                newcomer.notify(MediaReconnecting(participant_id=other_id, reconnecting=True))

    def tracks(self) -> list[PublishedTrack]:
        """Every published track in the room."""
        return [t for p in self.participants.values() for t in p.tracks.values()]

    def keep_totals(self, media: ParticipantMedia) -> None:
        """A participant leaves: their counters stay in the room's (`figures`)."""
        left = self._left
        for track in media.tracks.values():
            left.received += track.received
            left.lost += sum(reception.lost for reception in track.receptions)
            left.forwarded += track.forwarded
            left.retransmitted += track.retransmitted
            left.late += track.late
            left.keyframe_requests += track.keyframe_requests
        left.forwarded_bytes += sum(slot.octets for slot in media.subscriber.slots)
        left.pauses += media.subscriber.pausing.pauses

    def figures(self) -> RoomFigures:
        """The room's figures now, for the node's metrics (called when they are scraped; the
        loss shown never goes back)."""
        left = self._left
        tracks = self.tracks()
        subscribers = [p.subscriber for p in self.participants.values()]
        slots = [slot for s in subscribers for slot in s.slots if slot.source is not None]
        reported = [slot.fraction_lost / 256 for slot in slots if slot.ready]
        round_trips = [rtt for s in subscribers if (rtt := s.rtt_s) is not None]
        lost = left.lost + sum(r.lost for t in tracks for r in t.receptions)
        self._lost_shown = max(self._lost_shown, lost)
        layers: dict[str, int] = {}
        for slot in slots:
            if slot.kind == "video":
                layer = _layer_received(slot)
                layers[layer] = layers.get(layer, 0) + 1
        return RoomFigures(
            participants=len(self.participants),
            published_tracks=len(tracks),
            received_packets=left.received + sum(t.received for t in tracks),
            received_lost_packets=self._lost_shown,
            forwarded_packets=left.forwarded + sum(t.forwarded for t in tracks),
            forwarded_bytes=left.forwarded_bytes
            + sum(slot.octets for s in subscribers for slot in s.slots),
            retransmitted_packets=left.retransmitted + sum(t.retransmitted for t in tracks),
            late_dropped_packets=left.late + sum(t.late for t in tracks),
            keyframe_requests=left.keyframe_requests + sum(t.keyframe_requests for t in tracks),
            camera_pauses=left.pauses + sum(s.pausing.pauses for s in subscribers),
            subscriber_loss=sum(reported) / len(reported) if reported else None,
            round_trip_s=sum(round_trips) / len(round_trips) if round_trips else None,
            video_layers=layers,
            sinks=len(self.sinks),
        )

    async def remove(self, participant_id: str) -> None:
        """Drop a participant's media (left, removed, revoked, or their session failed)."""
        await self._leave(participant_id)


def _layer_received(slot: OutboundSlot) -> str:
    """What a video slot receives now (`RoomFigures.video_layers`)."""
    if slot.hidden:
        return "hidden"
    switch = slot.layer_switch
    if switch is not None:
        return "none" if switch.current is None else str(switch.current)
    return "single" if slot.started else "none"
