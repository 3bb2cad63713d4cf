"""One participant's media with the SFU: a publish session and a subscribe session.

Why two peer connections: the client is always the offerer on `publish` (its camera, microphone,
screen and data channels) and the SFU always the offerer on `subscribe` (everyone else's media).
Neither side ever has to answer an offer while its own is outstanding, so there is no glare to
resolve, and people joining or leaving only renegotiate the subscribe session — which reuses idle
transceivers, so it renegotiates only when it needs more of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from aiortc.sdp import candidate_from_sdp

from annotations.messages import LOSSY, RELIABLE, error_text
from core.actions import Action
from sfu import aiortc_hooks as hooks
from sfu.forwarder import OutboundSlot, PublishedTrack, receiver_report_packet, remb_packet
from sfu.rtp import ExtensionIds, parse_header, unwrap_rtx
from sfu.sinks import TrackInfo

if TYPE_CHECKING:
    from sfu.room import MediaRoom

log = logging.getLogger("consilium.sfu.session")

Notify = Callable[[dict[str, Any]], None]
"""Sends one signalling message (a dict with `type`) to this participant."""

PERMISSION_OF_SOURCE = {
    "microphone": Action.PUBLISH_AUDIO,
    "camera": Action.PUBLISH_VIDEO,
    "screen": Action.SHARE_SCREEN,
}
"""The policy action each kind of published media needs."""


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


DATA_LABELS = {RELIABLE: True, LOSSY: False}
"""Data-channel labels the SFU serves, and whether each is reliable and ordered: annotations
and chat on the reliable one (`annotations.authority`), pointer positions on the lossy one."""


class MediaError(Exception):
    """A media request that cannot be honoured (bad SDP, wrong state); the client is told."""


class ParticipantMedia:
    """The SFU side of one participant: what they publish and what they receive."""

    def __init__(
        self,
        room: MediaRoom,
        participant_id: str,
        permissions: frozenset[str],
        notify: Notify,
        configuration: RTCConfiguration,
    ) -> None:
        self.room = room
        self.participant_id = participant_id
        self.permissions = permissions
        self.notify = notify
        self.configuration = configuration
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        self.tracks: dict[str, PublishedTrack] = {}
        """Published tracks by the publish session's mid."""
        self.inbound: dict[int, tuple[PublishedTrack, bool]] = {}
        """Publisher SSRC → (track, is RTX)."""
        self.slots: list[OutboundSlot] = []
        self.slot_by_ssrc: dict[int, OutboundSlot] = {}
        self.channels: dict[str, RTCDataChannel] = {}
        self.muted: dict[str, bool] = {"audio": False, "video": False}
        self.closed = False
        self.synced = False
        """Asked for its annotation snapshot (`sync`): stamped events are sent from then on."""
        self._configured_mids: set[str] = set()
        self._transceivers: dict[int, RTCRtpTransceiver] = {}
        """Each slot's transceiver on the subscribe session, by id(slot)."""
        self._receive_params: dict[str, RTCRtpReceiveParameters] = {}
        """What was negotiated for each publish media id (to publish it again after a pause)."""
        self._screen_mids: set[str] = set()
        """Publish media ids the client declared as screen shares."""
        self._negotiating = False
        self._renegotiate = False
        self._negotiation_task: asyncio.Task[None] | None = None
        self._publish_hooked = False
        self._subscribe_hooked = False
        self.dropped = 0
        """Packets refused as malformed or unroutable (a misbehaving peer shows here)."""

    # -- publish session (the client offers) ---------------------------------------------------

    async def publish_offer(self, sdp: str, *, screen: Sequence[str] = ()) -> str:
        """Apply the client's publish offer; returns the SFU's answer. Video on the media ids in
        `screen` is a screen share (`share_screen`), other video the camera (`publish_video`)."""
        self._screen_mids.update(screen)
        pc = self.publish_pc
        if pc is None:
            pc = self.publish_pc = RTCPeerConnection(self.configuration)
            pc.on("datachannel", self._on_datachannel)
            pc.on("connectionstatechange", lambda: self._on_state(pc, "publish"))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, AttributeError) as exc:
            raise MediaError(f"unusable publish offer: {exc}") from None
        for transceiver in pc.getTransceivers():
            if transceiver.mid is None:
                continue
            if transceiver.mid in self._configured_mids:
                self._follow_direction(transceiver)
                continue
            self._configured_mids.add(transceiver.mid)
            self._configure_inbound(transceiver)
        if not self._publish_hooked:
            dtls = self._publish_transport(pc)
            if dtls is not None:
                hooks.hook_transport(dtls, self._on_publisher_rtp, self._on_publisher_rtcp)
                self._publish_hooked = True
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return pc.localDescription.sdp

    def _publish_transport(self, pc: RTCPeerConnection) -> Any:
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
            reason = "not_allowed" if codec else "codec_unsupported"
            self._error(reason, f"{source} cannot be published here ({reason})", "offer")
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
        track = self.tracks.pop(mid, None)
        if track is None:
            return
        for ssrc, (known, _) in list(self.inbound.items()):
            if known is track:
                del self.inbound[ssrc]
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
        )
        dtls = hooks.transport_of(transceiver)
        track = PublishedTrack(
            info,
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            rtx_payload_type=rtx.payloadType if rtx else None,
            ext_ids=ExtensionIds.from_uris({e.uri: e.id for e in params.headerExtensions}),
            rtcp_ssrc=hooks.sender_ssrcs(transceiver.sender)[0],
            send_rtcp=lambda data: hooks.send_rtcp(dtls, data),
            sinks=self.room.sinks,
        )
        track.muted = self.muted[transceiver.kind]
        self.tracks[mid] = track
        if ssrc:
            self.inbound[ssrc] = (track, False)
        if rtx_ssrc:
            self.inbound[rtx_ssrc] = (track, True)
        self.room.track_published(track)

    def _on_publisher_rtp(self, data: bytes, arrival_ms: int) -> None:
        # Hot path, per received packet: watched by bench/forwarding.py.
        entry = self.inbound.get(int.from_bytes(data[8:12], "big"))
        try:
            if entry is None:
                entry = self._learn_ssrc(data)
                if entry is None:
                    self.dropped += 1
                    return
            track, is_rtx = entry
            header = parse_header(data)
            if is_rtx:
                if header.payload_end - header.payload_start <= 2:
                    return  # padding-only probe
                assert track.rtx_payload_type is not None
                data = unwrap_rtx(data, header, ssrc=track.ssrc,
                                  payload_type=track.info.payload_type)  # fmt: skip
                header = parse_header(data)
            elif header.payload_type != track.info.payload_type:
                self.dropped += 1
                return
        except ValueError:
            self.dropped += 1
            return
        track.forward(data, header, arrival_ms)

    def _learn_ssrc(self, data: bytes) -> tuple[PublishedTrack, bool] | None:
        """An SSRC the SDP did not announce: find its track by the MID header extension."""
        header = parse_header(data)
        for mid, track in self.tracks.items():
            if track.ext_ids.mid is None:
                continue
            value = header.extensions.get(track.ext_ids.mid)
            if value is None or value.decode(errors="replace") != mid:
                continue
            is_rtx = header.payload_type == track.rtx_payload_type
            if not is_rtx and header.payload_type != track.info.payload_type:
                return None
            if not is_rtx and not track.ssrc:
                track.ssrc = header.ssrc
            elif is_rtx:
                track.rtx_ssrc = header.ssrc
            self.inbound[header.ssrc] = (track, is_rtx)
            return track, is_rtx
        return None

    def _on_publisher_rtcp(self, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self.dropped += 1
            return
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                entry = self.inbound.get(packet.ssrc)
                if entry is not None and not entry[1]:
                    info = packet.sender_info
                    entry[0].on_sender_report(info.ntp_timestamp, info.rtp_timestamp)

    # -- subscribe session (the SFU offers) ----------------------------------------------------

    def subscribe(self, track: PublishedTrack) -> None:
        """Receive `track`: on an idle slot of its kind, or on a new one (renegotiating)."""
        if self.closed or any(slot.source is track for slot in self.slots):
            return
        slot = next((s for s in self.slots if s.source is None and s.kind == track.info.kind), None)
        if slot is None:
            slot = self._new_slot(track.info.kind)
        transceiver = self._transceiver_of(slot)
        if transceiver is not None:
            hooks.set_stream_id(transceiver.sender, track.info.participant_id, track.info.track_id)
        slot.assign(track)
        self._negotiation_needed()

    def unsubscribe(self, track: PublishedTrack) -> None:
        """Stop receiving `track`; its slot stays, idle, for the next publisher."""
        for slot in self.slots:
            if slot.source is track:
                slot.assign(None)
        self._announce_tracks()

    def _subscribe_session(self) -> RTCPeerConnection:
        if self.subscribe_pc is None:
            pc = self.subscribe_pc = RTCPeerConnection(self.configuration)
            pc.on("connectionstatechange", lambda: self._on_state(pc, "subscribe"))
        return self.subscribe_pc

    def _new_slot(self, kind: str) -> OutboundSlot:
        pc = self._subscribe_session()
        transceiver = pc.addTransceiver(kind, direction="sendonly")
        codec = self.room.codec_capability(kind)
        if codec:
            transceiver.setCodecPreferences(codec)
        dtls = hooks.transport_of(transceiver)
        slot = OutboundSlot(
            subscriber_id=self.participant_id,
            kind=kind,
            send_rtp=hooks.rtp_sender(dtls),
            send_rtcp=functools.partial(hooks.send_rtcp, dtls),
        )
        hooks.bypass_sender(
            transceiver.sender,
            lambda params: self._on_send_parameters(slot, transceiver, params),
        )
        if not self._subscribe_hooked:
            hooks.hook_transport(dtls, None, self._on_subscriber_rtcp)
            self._subscribe_hooked = True
        self.slots.append(slot)
        self._transceivers[id(slot)] = transceiver
        return slot

    def _transceiver_of(self, slot: OutboundSlot) -> RTCRtpTransceiver | None:
        return self._transceivers.get(id(slot))

    def _on_send_parameters(
        self, slot: OutboundSlot, transceiver: RTCRtpTransceiver, params: RTCRtpSendParameters
    ) -> None:
        negotiated = media_and_rtx(params.codecs)
        if negotiated is None:
            return
        codec, rtx = negotiated
        ssrc, rtx_ssrc = hooks.sender_ssrcs(transceiver.sender)
        slot.ssrc, slot.rtx_ssrc = ssrc, rtx_ssrc
        slot.payload_type = codec.payloadType or 0
        slot.rtx_payload_type = rtx.payloadType if rtx else None
        slot.set_extensions(
            ExtensionIds.from_uris({e.uri: e.id for e in params.headerExtensions}),
            str(transceiver.mid).encode(),
        )
        self.slot_by_ssrc[ssrc] = slot
        self.slot_by_ssrc[rtx_ssrc] = slot
        slot.ready = True
        if slot.source is not None:
            slot.source.request_keyframe(time.monotonic())

    def _negotiation_needed(self) -> None:
        """Offer again soon; several changes in one loop turn make one offer."""
        if self._negotiation_task is None or self._negotiation_task.done():
            self._negotiation_task = asyncio.get_running_loop().create_task(self._negotiate())
        else:
            self._renegotiate = True

    async def _negotiate(self) -> None:
        await asyncio.sleep(0)
        if self._negotiating:
            self._renegotiate = True
            return
        pc = self.subscribe_pc
        if pc is None or self.closed:
            return
        self._negotiating = True
        self._renegotiate = False
        try:
            offer = await pc.createOffer()
            await pc.setLocalDescription(offer)
        except Exception:
            self._negotiating = False
            log.exception("subscribe offer failed", extra={"participant": self.participant_id})
            return
        self.notify({"type": "offer", "pc": "subscribe", "sdp": pc.localDescription.sdp})

    async def subscribe_answer(self, sdp: str) -> None:
        """Apply the client's answer to our subscribe offer."""
        pc = self.subscribe_pc
        if pc is None or not self._negotiating:
            raise MediaError("no subscribe offer is waiting for an answer")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, KeyError, AttributeError) as exc:
            raise MediaError(f"unusable subscribe answer: {exc}") from None
        self._negotiating = False
        self._announce_tracks()
        if self._renegotiate:
            self._renegotiate = False
            self._negotiation_needed()

    def _announce_tracks(self) -> None:
        """Tell the client which participant each of its subscribe transceivers carries."""
        tracks = []
        for slot in self.slots:
            transceiver = self._transceiver_of(slot)
            if slot.source is None or transceiver is None or transceiver.mid is None:
                continue
            info = slot.source.info
            tracks.append({"mid": transceiver.mid, "participant_id": info.participant_id,
                           "kind": info.kind, "track_id": info.track_id,
                           "source": info.source})  # fmt: skip
        self.notify({"type": "tracks", "tracks": tracks})

    def _on_subscriber_rtcp(self, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self.dropped += 1
            return
        now = time.monotonic()
        for packet in packets:
            if isinstance(packet, RtcpPsfbPacket):
                if packet.fmt == RTCP_PSFB_PLI:
                    self._keyframe_for(packet.media_ssrc, now)
                elif packet.fmt == RTCP_PSFB_FIR:
                    fci = packet.fci
                    for pos in range(0, len(fci) - 7, 8):
                        self._keyframe_for(int.from_bytes(fci[pos : pos + 4], "big"), now)
                elif packet.fmt == RTCP_PSFB_APP:
                    try:
                        bitrate, ssrcs = unpack_remb_fci(packet.fci)
                    except ValueError:
                        continue
                    for ssrc in ssrcs:
                        slot = self.slot_by_ssrc.get(ssrc)
                        if slot is not None:
                            slot.remb_bps = bitrate
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                slot = self.slot_by_ssrc.get(packet.media_ssrc)
                if slot is not None and slot.source is not None:
                    missed = slot.retransmit(list(packet.lost))
                    if missed:
                        slot.source.nack_upstream(missed, now)
            elif isinstance(packet, RtcpRrPacket):
                for report in packet.reports:
                    slot = self.slot_by_ssrc.get(report.ssrc)
                    if slot is not None:
                        slot.fraction_lost = report.fraction_lost

    def _keyframe_for(self, ssrc: int, now: float) -> None:
        slot = self.slot_by_ssrc.get(ssrc)
        if slot is not None and slot.source is not None:
            slot.source.request_keyframe(now)

    # -- both sessions -------------------------------------------------------------------------

    async def add_candidate(
        self, which: str, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        """A trickled ICE candidate from the client (empty: end of candidates)."""
        pc = self.publish_pc if which == "publish" else self.subscribe_pc
        if pc is None:
            raise MediaError(f"no {which} session to add a candidate to")
        text = candidate.strip()
        if text.startswith("candidate:"):
            text = text[len("candidate:") :]
        if not text:
            return  # end of candidates: aioice checks what it has
        try:
            # aiortc's parser asserts on too few fields; addIceCandidate raises ValueError
            # without sdpMid and sdpMLineIndex: the client's mistake, answered, not a crash.
            ice = candidate_from_sdp(text)
            ice.sdpMid = sdp_mid
            ice.sdpMLineIndex = sdp_mline_index
            await pc.addIceCandidate(ice)
        except (ValueError, IndexError, AssertionError) as exc:
            raise MediaError(f"unusable ICE candidate: {str(exc)[:100] or 'malformed'}") from None

    def set_muted(self, kind: str, muted: bool) -> None:
        """Stop (or resume) forwarding this participant's audio or video."""
        self.muted[kind] = muted
        for track in self.tracks.values():
            if track.info.kind == kind:
                track.set_muted(muted)

    def tick(self, now: float, report: bool) -> None:
        """Periodic RTCP: deferred keyframe requests; receiver reports and REMB each second."""
        for track in self.tracks.values():
            track.tick(now)
        if not report or not self.tracks:
            return
        first = next(iter(self.tracks.values()))
        reports = [r for r in (t.receiver_report() for t in self.tracks.values()) if r]
        if reports:
            first.send_to_publisher(receiver_report_packet(first.rtcp_ssrc, reports))
        for track in self.tracks.values():
            hint = track.bitrate_hint() if track.video else None
            if hint is not None and track.ssrc:
                track.send_to_publisher(remb_packet(track.rtcp_ssrc, hint, [track.ssrc]))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label not in DATA_LABELS:
            log.info("data channel with an unknown label refused", extra={"label": channel.label})
            channel.close()
            return
        self.channels[channel.label] = channel
        if DATA_LABELS[channel.label]:
            self.synced = False  # a new reliable channel: events again after its `sync`

        @channel.on("close")
        def on_close() -> None:
            if self.channels.get(channel.label) is not channel:
                return  # replaced by a newer channel, or the session is closing
            del self.channels[channel.label]
            if self.closed or not DATA_LABELS[channel.label]:
                return
            # No more events can reach this participant: it is out of step until it opens a new
            # channel and asks `sync` again. Tell it (over signalling, which still works).
            self.synced = False
            log.warning("reliable data channel closed", extra={"participant": self.participant_id})
            self._error(
                "data_channel_closed",
                "the annotations and chat channel closed: open a new one and sync",
                "data",
            )

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            # Hot path, per annotation op: watched by bench/annotations.py.
            if isinstance(message, bytes):
                self.send_data(RELIABLE, error_text("bad_message", "messages are JSON text"))
                return
            self.room.relay_data(self, channel.label, message)

    def send_data(self, label: str, message: str) -> None:
        """Send one message (JSON text) on this participant's data channel `label`, if open."""
        channel = self.channels.get(label)
        if channel is not None and channel.readyState == "open":
            channel.send(message)

    def _on_state(self, pc: RTCPeerConnection, which: str) -> None:
        # A session whose network died may never say "failed": when consent freshness (RFC 7675)
        # runs out, aioice closes the ICE connection, the DTLS transport closes on the read error,
        # and aiortc closes the peer connection ("closed"). Only close() closes ours on purpose.
        if pc.connectionState in ("failed", "closed") and not self.closed:
            log.info("media session failed", extra={"participant": self.participant_id})
            self._error("media_failed", f"the {which} media session failed", which)
            asyncio.get_running_loop().create_task(self.room.remove(self.participant_id))

    def _error(self, code: str, message: str, request: str) -> None:
        self.notify({"type": "error", "code": code, "message": message, "request": request})

    async def close(self) -> None:
        """End both sessions and stop every track and slot."""
        if self.closed:
            return
        self.closed = True
        for track in self.tracks.values():
            self.room.track_ended(track)
        self.tracks.clear()
        for slot in self.slots:
            slot.assign(None)
            slot.ready = False
        if self._negotiation_task is not None:
            self._negotiation_task.cancel()
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                try:
                    await pc.close()
                except Exception:
                    log.exception("closing a peer connection failed")


def bundle_configuration(ice_servers: list[Any]) -> RTCConfiguration:
    """Peer-connection settings for SFU sessions: everything on one transport (max-bundle)."""
    return RTCConfiguration(iceServers=ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
