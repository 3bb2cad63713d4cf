"""The publish session: the peer connection on which a participant sends its media to the SFU.

The client is always the offerer here (its camera, microphone, screen and data channels); the
SFU answers, accepting each kind of media the participant may publish in the room's codec.
Arriving packets go from the transport hook (`sfu.aiortc_hooks`) through the demux
(`sfu.demux`) to the track's forwarder (`sfu.forwarder`): the media packet's straight line.
Each packet's transport-wide sequence number is recorded on the way (`sfu.twcc`), and the
transport-cc feedback built from them goes back to the publisher, whose browser estimates its
own uplink from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters

from core.actions import Action
from core.codes import ErrorCode
from core.media.rtp import ExtensionIds, parse_header
from core.media.track import TrackInfo
from sfu import aiortc_hooks as hooks
from sfu import ice_restart, srtp_send
from sfu.demux import Demux
from sfu.feedback import SenderReport, read_feedback
from sfu.forwarder import PublishedTrack, receiver_report_packet, remb_packet
from sfu.layered import LayeredTrack
from sfu.simulcast import SimulcastOffer, answer_simulcast, read_simulcast_offers
from sfu.twcc import (
    MAX_PENDING,
    TransportCcOffer,
    TransportFeedback,
    read_transport_cc_offers,
)
from sfu.types import MediaError, ParticipantRoom, SessionOwner

log = logging.getLogger("consilium.sfu.session")  # one log for a participant's media parts

PERMISSION_OF_SOURCE = {
    "microphone": Action.PUBLISH_AUDIO,
    "camera": Action.PUBLISH_VIDEO,
    "screen": Action.SHARE_SCREEN,
}
"""The policy action each kind of published media needs."""

LAYERED_CODECS = frozenset({"vp8", "h264"})
"""Video codecs whose simulcast layers the SFU switches between (`sfu.layers` spots their
keyframes); a room in another codec gets its cameras as one stream."""

NO_MIDS: frozenset[str] = frozenset()
"""Where a publisher's sets of media ids start: one shared empty set, replaced at its first offer.

Every participant has a publisher, media or not, and an empty `set()` takes 216 bytes
(bench/signaling.py's `kib_per_participant` counts idle participants). The sets are rebuilt only
at offers, a few times per session.
"""


def source_of(kind: str, screen: bool) -> str:
    """What a published track is: microphone, camera or screen share."""
    if kind == "audio":
        return "microphone"
    return "screen" if screen else "camera"


def media_and_rtx(
    codecs: Sequence[RTCRtpCodecParameters],
) -> tuple[RTCRtpCodecParameters, RTCRtpCodecParameters | None] | None:
    """The negotiated media codec and its RTX codec (if any); None without a media codec."""
    media = [c for c in codecs if not c.mimeType.lower().endswith("/rtx")]
    if not media:
        return None
    rtx = next(
        (c for c in codecs if c.mimeType.lower().endswith("/rtx")
         and c.parameters.get("apt") == media[0].payloadType),
        None,
    )  # fmt: skip
    return media[0], rtx


class Publisher:
    """One participant's publish session: its offers answered, its tracks published."""

    __slots__ = (
        "_configured_mids",
        "_hooked",
        "_receive_params",
        "_rtcp_dropped",
        "_screen_mids",
        "_simulcast",
        "_twcc",
        "_twcc_id",
        "configuration",
        "demux",
        "muted",
        "owner",
        "participant_id",
        "pc",
        "permissions",
        "room",
        "transport_cc",
    )

    def __init__(
        self,
        room: ParticipantRoom,
        participant_id: str,
        permissions: frozenset[str],
        configuration: RTCConfiguration,
        owner: SessionOwner,
    ) -> None:
        self.room = room
        self.participant_id = participant_id
        self.permissions = permissions
        self.configuration = configuration
        self.owner = owner
        """The participant: told a request failed (`report_error`), and handed the peer
        connection when it is created (`session_opened`: it watches its state and takes its
        data channels)."""
        self.pc: RTCPeerConnection | None = None
        self.demux = Demux()
        """Arriving streams → published tracks (`demux.by_mid`: the tracks by media id)."""
        self.muted: dict[str, bool] = {"audio": False, "video": False}
        self._configured_mids = NO_MIDS
        """Publish media ids already configured (a later offer only follows their direction)."""
        self._receive_params: dict[str, RTCRtpReceiveParameters] = {}
        """What was negotiated for each publish media id (to publish it again after a pause)."""
        self._screen_mids = NO_MIDS
        """Publish media ids the client declared as screen shares."""
        self._simulcast: dict[str, SimulcastOffer] = {}
        """Camera media ids whose simulcast offer was accepted (`sfu.simulcast`)."""
        self._hooked = False
        self._rtcp_dropped = 0
        self.transport_cc = True
        """Answer offers that propose transport-cc with it (the node's `twcc` setting)."""
        self._twcc: TransportFeedback | None = None
        """The transport-cc receiver, once an offer negotiated it (None: REMB only)."""
        self._twcc_id = 0
        """The transport-wide sequence number's header-extension id (the offer's; 0, never a
        valid id: not negotiated)."""

    @property
    def dropped(self) -> int:
        """Packets refused as malformed or unroutable: RTP (the demux's count) and RTCP."""
        return self.demux.dropped + self._rtcp_dropped

    @property
    def feedback_sent(self) -> int:
        """Transport-cc feedback packets sent to this publisher."""
        return self._twcc.sent if self._twcc is not None else 0

    @property
    def tracks(self) -> dict[str, PublishedTrack]:
        """Published tracks by the publish session's mid."""
        return self.demux.by_mid

    async def offer(self, sdp: str, *, screen: Sequence[str] = ()) -> str:
        """Apply the client's publish offer; returns the SFU's answer. Video on the media ids in
        `screen` is a screen share (`share_screen`), other video the camera (`publish_video`)."""
        if screen:
            self._screen_mids = self._screen_mids.union(screen)
        pc = self.pc
        if pc is None:
            pc = self.pc = RTCPeerConnection(self.configuration)
            self.owner.session_opened(pc, "publish")
        dtls = self._transport(pc) if self._hooked else None
        restart = ice_restart.restart_for(dtls.transport if dtls is not None else None, sdp)
        if restart is not None:
            self.owner.ice_restart_began(restart, "publish")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, AttributeError) as exc:
            if restart is not None:
                restart.abandon()
            raise MediaError(f"unusable publish offer: {exc}") from None
        simulcast = read_simulcast_offers(sdp)
        transport_cc = read_transport_cc_offers(sdp) if self.transport_cc else {}
        for transceiver in pc.getTransceivers():
            if transceiver.mid is None:
                continue
            self._accept_simulcast(transceiver, simulcast.get(transceiver.mid))
            self._accept_transport_cc(transceiver, transport_cc.get(transceiver.mid))
            if transceiver.mid in self._configured_mids:
                self._follow_direction(transceiver)
                continue
            self._configured_mids = self._configured_mids | {transceiver.mid}
            self._configure_inbound(transceiver)
        if not self._hooked:
            dtls = self._transport(pc)
            if dtls is not None:
                hooks.hook_transport(dtls, self._on_rtp, self._on_rtcp)
                self._hooked = True
        if restart is not None:  # new ICE credentials: the client's network changed
            await restart.gather()
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        if restart is not None:
            restart.start(sdp, self._request_keyframes)
        return answer_simulcast(pc.localDescription.sdp, self._simulcast)

    def _accept_simulcast(
        self, transceiver: RTCRtpTransceiver, offer: SimulcastOffer | None
    ) -> None:
        """Accept the layers a camera is offered in (with their RID extensions); a screen share
        stays one layer (its text must stay sharp), as does an offer without the RID extension
        or in a codec whose layers the SFU cannot switch."""
        mid = str(transceiver.mid)
        if (
            offer is None
            or offer.rid_extension is None
            or transceiver.kind != "video"
            or mid in self._screen_mids
            or not self._layered_codec(transceiver)
        ):
            self._simulcast.pop(mid, None)
            return
        hooks.negotiate_extensions(transceiver, offer.extensions)
        self._simulcast[mid] = offer

    def _layered_codec(self, transceiver: RTCRtpTransceiver) -> bool:
        """Whether the room's video codec, as this offer gets it, is one of `LAYERED_CODECS`."""
        codec = self.room.choose_codec("video", hooks.negotiated_codecs(transceiver))
        return codec is not None and codec.split("/")[-1].lower() in LAYERED_CODECS

    def _accept_transport_cc(
        self, transceiver: RTCRtpTransceiver, offer: TransportCcOffer | None
    ) -> None:
        """Answer transport-cc where the offer proposes both its extension and its feedback (at
        every offer: aiortc negotiates each transceiver again at each offer)."""
        if offer is None or offer.extension_id is None or not offer.payload_types:
            return
        hooks.negotiate_transport_cc(transceiver, offer.extension_id, offer.offers_feedback)
        self._twcc_id = offer.extension_id  # one id for the whole bundle (it numbers all)
        if self._twcc is None:
            self._twcc = TransportFeedback()

    def _transport(self, pc: RTCPeerConnection) -> Any:
        for transceiver in pc.getTransceivers():
            return hooks.transport_of(transceiver)
        sctp = pc.sctp
        return sctp.transport if sctp is not None else None

    def _configure_inbound(self, transceiver: RTCRtpTransceiver) -> None:
        kind = transceiver.kind
        source = source_of(kind, str(transceiver.mid) in self._screen_mids)
        permission = PERMISSION_OF_SOURCE[source]
        codec = self.room.choose_codec(kind, hooks.negotiated_codecs(transceiver))
        if permission not in self.permissions or codec is None:
            transceiver.direction = "inactive"
            reason = ErrorCode.NOT_ALLOWED if codec else ErrorCode.CODEC_UNSUPPORTED
            why = (f"this browser offered none of the room's {kind} codecs "
                   f"({self.room.codec_name(kind)})" if codec is None else reason)  # fmt: skip
            self.owner.report_error(reason, f"{source} cannot be published here ({why})", "offer")
            return
        hooks.restrict_codecs(transceiver, codec)
        transceiver.direction = "recvonly"
        mid = str(transceiver.mid)
        hooks.bypass_receiver(
            transceiver.receiver,
            lambda params: self._on_receive_parameters(transceiver, mid, params),
        )

    def _follow_direction(self, transceiver: RTCRtpTransceiver) -> None:
        """A renegotiated publish transceiver: a stopped screen share (or any track the client
        stops sending) is unpublished for everyone; sending again publishes it again."""
        mid = str(transceiver.mid)
        sending = hooks.remote_sends(transceiver)
        track = self.tracks.get(mid)
        if track is not None and not sending:
            self._unpublish(mid)
        elif track is None and sending and mid in self._receive_params:
            self._on_receive_parameters(transceiver, mid, self._receive_params[mid])

    def _unpublish(self, mid: str) -> None:
        track = self.demux.remove(mid)
        if track is not None:
            self.room.track_ended(track)

    def _on_receive_parameters(
        self, transceiver: RTCRtpTransceiver, mid: str, params: RTCRtpReceiveParameters
    ) -> None:
        self._receive_params[mid] = params
        if not hooks.remote_sends(transceiver):
            return  # offered inactive: published when the client starts sending
        negotiated = media_and_rtx(params.codecs)
        if negotiated is None:
            return
        codec, rtx = negotiated
        ssrc = params.encodings[0].ssrc if params.encodings else 0
        rtx_ssrc = (
            params.encodings[0].rtx.ssrc if params.encodings and params.encodings[0].rtx else None
        )
        info = TrackInfo(
            room_id=self.room.room_id,
            participant_id=self.participant_id,
            track_id=f"{self.participant_id}:{mid}",
            kind=transceiver.kind,
            codec=codec.mimeType,
            clock_rate=codec.clockRate,
            payload_type=codec.payloadType or 0,
            source=source_of(transceiver.kind, mid in self._screen_mids),
            layers=self._simulcast[mid].layers if mid in self._simulcast else (),
        )
        dtls = hooks.transport_of(transceiver)
        track = (LayeredTrack if info.layers else PublishedTrack)(
            info,
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            rtx_payload_type=rtx.payloadType if rtx else None,
            ext_ids=ExtensionIds.from_uris({e.uri: e.id for e in params.headerExtensions}),
            rtcp_ssrc=hooks.sender_ssrcs(transceiver.sender)[0],
            send_rtcp=lambda data: srtp_send.send_rtcp(dtls, data),
            sinks=self.room.sinks,
        )
        track.muted = self.muted[transceiver.kind]
        self.demux.add(mid, track)
        self.room.track_published(track)

    def _request_keyframes(self) -> None:
        """Ask for a keyframe of each published video track (its media path just changed)."""
        now = time.monotonic()
        for track in self.tracks.values():
            if track.video:
                track.request_keyframe(now)

    def _on_rtp(self, data: bytes, arrival_ms: int, late: bool = False) -> None:
        # Hot path, per received packet: watched by bench/forwarding.py.
        routed = self.demux.route(data)
        twcc = self._twcc
        if routed is None:
            if twcc is not None:  # probes and unknown streams are numbered too
                self._record_unrouted(twcc, data, arrival_ms)
            return
        track, packet, header, layer = routed
        if twcc is not None:  # an RTX packet's header keeps the extensions it came with
            number = header.extensions.get(self._twcc_id)
            if number is not None and twcc.record(int.from_bytes(number[:2], "big"), arrival_ms):
                self._send_feedback(twcc, arrival_ms)
        if track.layered:  # a simulcast camera: each slot gets its own layer (sfu.layered)
            assert isinstance(track, LayeredTrack)
            track.forward_layer(packet, header, arrival_ms, layer, late)
        else:
            track.forward(packet, header, arrival_ms, late)
        level_id = track.ext_ids.audio_level
        if level_id is not None and not track.video:  # the room's speaker: one byte read
            level = header.extensions.get(level_id)
            if level:
                self.room.hear_audio(self.participant_id, level[0], track.muted, track.now)

    def _record_unrouted(self, twcc: TransportFeedback, data: bytes, arrival_ms: int) -> None:
        """A packet the demux does not forward (a padding probe, a stream not yet known) still
        counts for the sender's estimate: unreported, it would look lost."""
        try:
            number = parse_header(data).extensions.get(self._twcc_id)
        except ValueError:
            return
        if number is not None and twcc.record(int.from_bytes(number[:2], "big"), arrival_ms):
            self._send_feedback(twcc, arrival_ms)

    def _send_feedback(self, twcc: TransportFeedback, now_ms: int) -> None:
        """Send the transport-cc feedback due (from the first track's RTCP sender, which shares
        the publish transport with all of them)."""
        first = next(iter(self.demux.by_mid.values()), None)
        if first is None:  # no track yet to send through: kept a while (a probe's result)
            if twcc.pending > MAX_PENDING:
                twcc.build(0, 0, now_ms)  # let go
            return
        for packet in twcc.build(first.rtcp_ssrc, first.ssrc, now_ms):
            first.send_to_publisher(packet)

    def _on_rtcp(self, data: bytes) -> None:
        try:
            decisions = read_feedback(data)
        except ValueError:
            self._rtcp_dropped += 1
            return
        now = time.monotonic()
        for decision in decisions:
            if isinstance(decision, SenderReport):
                stream = self.demux.media_stream(decision.ssrc)
                if stream is not None:  # a simulcast layer's SR goes to the slots on it
                    stream.track.on_sender_report(
                        decision.ntp_timestamp, decision.rtp_timestamp, now, stream.layer
                    )

    def set_muted(self, kind: str, muted: bool) -> None:
        """Stop (or resume) forwarding this participant's audio or video."""
        self.muted[kind] = muted
        now = time.monotonic()
        for track in self.tracks.values():
            if track.info.kind == kind:
                track.set_muted(muted, now)

    def tick(self, now: float, report: bool) -> None:
        """Periodic RTCP: deferred keyframe requests and transport-cc feedback still due;
        receiver reports and REMB each second.

        REMB stays on with transport-cc: libwebrtc's estimator takes a REMB as a ceiling on its
        own, transport-cc driven, estimate (`SendSideBandwidthEstimation`'s receiver limit), so
        the subscribers' downlink hint still caps what the publisher sends, while transport-cc
        finds the publisher's own uplink.
        """
        # Every participant, every 0.2 s (`MediaServer`): the demux's dict read once, not
        # through the `tracks` property each time.
        tracks = self.demux.by_mid
        if not tracks:
            return
        for track in tracks.values():
            track.tick(now)
        if self._twcc is not None:  # what arrived since the last feedback, if media stopped
            self._send_feedback(self._twcc, int(now * 1000))
        if not report:
            return
        first = next(iter(tracks.values()))
        # One block per stream received, each simulcast layer's too (at most 31 fit an RR: a
        # participant publishes a microphone, a camera in three layers and a screen).
        reports = [block for track in tracks.values() for block in track.receiver_reports(now)][:31]
        if reports:
            first.send_to_publisher(receiver_report_packet(first.rtcp_ssrc, reports))
        for track in tracks.values():
            hint = track.bitrate_hint() if track.video else None
            if hint is not None and track.ssrc:
                track.send_to_publisher(remb_packet(track.rtcp_ssrc, hint, [track.ssrc]))

    def end_tracks(self) -> None:
        """Unpublish every track (the participant is leaving)."""
        for track in self.tracks.values():
            self.room.track_ended(track)
        self.tracks.clear()

    async def close(self) -> None:
        """Close the peer connection."""
        if self.pc is not None:
            try:
                await self.pc.close()
            except Exception:
                log.exception("closing a peer connection failed")
