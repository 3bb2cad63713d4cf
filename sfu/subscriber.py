"""The subscribe session: the peer connection on which the SFU sends a participant everyone
else's media.

The SFU is always the offerer here, so neither side ever answers an offer while its own is
outstanding (no glare). Each transceiver is an `OutboundSlot`: a slot whose publisher left stays,
idle, and carries the next publisher of its kind, so people joining or leaving renegotiate only
when more slots are needed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import replace

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpSendParameters

from core.codes import ErrorCode
from core.media.rtp import TRANSPORT_CC_URI, ExtensionIds
from sfu import aiortc_hooks as hooks
from sfu import ice_restart, srtp_send
from sfu.downlink import DownlinkEstimator, SentPackets
from sfu.events import SubscribedTrack, SubscribeOffer, Tracks
from sfu.feedback import BitrateEstimate, KeyframeRequest, Loss, Retransmit, read_feedback
from sfu.forwarder import OutboundSlot, PublishedTrack
from sfu.layer_choice import (
    SPEAKER_WEIGHT,
    audio_reserve,
    budget_to_climb,
    choose_layer,
    confirm_down,
    needed_bps,
    split_budget,
)
from sfu.layered import UNKNOWN_TILE, LayeredTrack
from sfu.pausing import Candidate, PauseControl
from sfu.probe_send import ProbeSender, probe_slot
from sfu.probing import DROP_CLEAN_LOSS, START_BPS, ProbeController, RembClimb
from sfu.publisher import media_and_rtx
from sfu.rejected import accept_rejections, rejected_mids
from sfu.retransmit import Refusal, RetransmitBudget
from sfu.round_trip import RoundTrip
from sfu.twcc import accepted_transport_cc, offer_transport_cc, split_transport_feedback
from sfu.types import MediaError, Notify, ParticipantRoom, SessionOwner

log = logging.getLogger("consilium.sfu.session")  # one log for a participant's media parts

CHOOSE_EVERY_S = 0.5
"""How often each subscriber's simulcast layers are chosen again (at the SFU's tick, never per
packet): often enough to follow its link within ~2 s, and each switch costs a keyframe."""


class Subscriber:
    """One participant's subscribe session: its slots, what each carries, their negotiation."""

    __slots__ = (
        "_chosen_at",
        "_confirming",
        "_held_down",
        "_hooked",
        "_logged_layers",
        "_needed_bps",
        "_negotiating",
        "_negotiation_task",
        "_renegotiate",
        "_restart",
        "_speaker",
        "_transceivers",
        "_wanting",
        "closed",
        "configuration",
        "declined",
        "downlink",
        "dropped",
        "notify",
        "owner",
        "participant_id",
        "pausing",
        "pc",
        "probe_control",
        "prober",
        "remb_climb",
        "retransmits",
        "room",
        "round_trip",
        "slot_by_ssrc",
        "slots",
        "transport_cc",
    )

    def __init__(
        self,
        room: ParticipantRoom,
        participant_id: str,
        configuration: RTCConfiguration,
        notify: Notify,
        owner: SessionOwner,
    ) -> None:
        self.room = room
        self.participant_id = participant_id
        self.configuration = configuration
        self.notify = notify
        self.owner = owner
        """The participant: handed the peer connection when it is created
        (`session_opened`: it watches its state)."""
        self.pc: RTCPeerConnection | None = None
        self.slots: list[OutboundSlot] = []
        self.slot_by_ssrc: dict[int, OutboundSlot] = {}
        self.closed = False
        self.dropped = 0
        """RTCP compound packets refused as malformed."""
        self.retransmits = RetransmitBudget()
        """Which lost packets this participant is sent again (the server sets it from its
        settings); its round trip is `round_trip`'s, kept up to date at each receiver report."""
        self.round_trip = RoundTrip()
        """This participant's round trip, from the echo of the sender reports its slots send
        in its receiver reports (RFC 3550 6.4.1)."""
        self._transceivers: dict[int, RTCRtpTransceiver] = {}
        """Each slot's transceiver, by id(slot)."""
        self._negotiating = False
        self._renegotiate = False
        self._negotiation_task: asyncio.Task[None] | None = None
        self._hooked = False
        self.transport_cc = True
        """Offer transport-cc and estimate the downlink from its feedback (the node's `twcc`)."""
        self.downlink = DownlinkEstimator(SentPackets(), start_bps=START_BPS)
        """This participant's downlink estimate, from the transport feedback on what the
        transport numbered (`downlink.sent`, one numbering for every slot); `START_BPS` until
        the feedback and the start probes say more (its lowest layers: a narrow link is not
        flooded at join)."""
        self.probe_control = ProbeController(START_BPS)
        """When this participant's downlink is probed (`sfu.probing`)."""
        self.prober = ProbeSender(self.downlink.sent, self.downlink.probes)
        """Sends the probe clusters (`sfu.probe_send`)."""
        self.remb_climb = RembClimb()
        """Climbs for a subscriber that sends only REMB (`sfu.probing.RembClimb`)."""
        self.pausing = PauseControl()
        """Which cameras are paused for this participant's link (`sfu.pausing`)."""
        self._chosen_at = 0.0
        """When the layers were last chosen."""
        self._speaker: str | None = None
        """The room's active speaker at the last choice."""
        self._needed_bps: int | None = None
        """What the shown tracks need for the layers their tiles want (None: not known)."""
        self._held_down: dict[int, float] = {}
        """By id(slot): since when a step down the budget asks for has been held
        (`layer_choice.confirm_down`)."""
        self._confirming = False
        """A step down is held: the downlink is probed to confirm it."""
        self._wanting = False
        """Layer choice holds some track below what its tile wants, for lack of budget."""
        self._logged_layers: list[tuple[int | None, int | None] | None] = []
        """The layers last logged at debug level."""
        self._restart: ice_restart.IceRestart | None = None
        """An ICE restart whose offer awaits the client's answer (`restart_ice`)."""
        self.declined: set[str] = set()
        """Kinds of media this participant's browser rejected in an answer (it cannot decode
        the room's codec: `sfu.rejected`): no track of that kind is offered to it again."""

    @property
    def rtt_s(self) -> float | None:
        """This participant's round-trip time in seconds (None: not measured yet)."""
        return self.round_trip.rtt_s

    @property
    def downlink_bps(self) -> int | None:
        """Bits per second this participant's link can take now (None: no estimate yet)."""
        return self.downlink.estimate_bps

    @property
    def measured_downlink_bps(self) -> int | None:
        """`downlink_bps` once it comes from this participant's feedback or REMB (None before:
        the start value is no measurement; the node's metric counts only these)."""
        return self.downlink.estimate_bps if self.downlink.measured else None

    def subscribe(self, track: PublishedTrack) -> None:
        """Receive `track`: on an idle slot of its kind, or on a new one (renegotiating)."""
        if self.closed or track.info.kind in self.declined:
            return
        if any(slot.source is track for slot in self.slots):
            return
        slot = next((s for s in self.slots if s.source is None and s.kind == track.info.kind), None)
        if slot is None:
            slot = self._new_slot(track.info.kind)
        transceiver = self._transceivers.get(id(slot))
        if transceiver is not None:
            hooks.set_stream_id(transceiver.sender, track.info.participant_id, track.info.track_id)
        now = time.monotonic()
        slot.assign(track, now)
        if isinstance(track, LayeredTrack):
            # Attaching chose a layer by the tile alone (the top one, for a tile of unknown
            # size); the budget applies now, before any of it is forwarded: a narrow link is
            # not sent a top layer's keyframe at join.
            self.choose_layers(now, self._speaker)
        self._negotiation_needed()

    def unsubscribe(self, track: PublishedTrack) -> None:
        """Stop receiving `track`; its slot stays, idle, for the next publisher."""
        for slot in self.slots:
            if slot.source is track:
                slot.assign(None)
        self._announce_tracks()

    def show(self, sizes: dict[str, tuple[int, int]], now: float, speaker: str | None) -> None:
        """The page shows the tracks of these media ids at these sizes (device pixels; 0 x 0:
        hidden, nothing is forwarded); the layers are chosen again at once."""
        for slot in self.slots:
            transceiver = self._transceivers.get(id(slot))
            if transceiver is None or slot.kind != "video" or transceiver.mid not in sizes:
                continue
            slot.show(sizes[transceiver.mid], now)
        self.choose_layers(now, speaker)

    def tick(self, now: float, speaker: str | None) -> None:
        """Periodic work: choose the simulcast layers again, every `CHOOSE_EVERY_S`; send the
        probe clusters the controller asks for."""
        if now - self._chosen_at >= CHOOSE_EVERY_S:
            self.choose_layers(now, speaker)
        self._probe(now)

    def _probe(self, now: float) -> None:
        """Probe the downlink when the controller says so (at start; when a track is held below
        its tile's layer), on a slot that can carry probes (RTX, transport-wide numbers); for a
        subscriber that sends only REMB, climb instead."""
        if self.closed:
            return
        if self.downlink.remb_only:
            sending = sum(slot.measure_rate(now) for slot in self.slots)
            granted = self.remb_climb.process(now, sending, self._needed_bps, self._wanting)
            if granted != self.downlink.remb_grant:
                self.downlink.grant(granted)
                self.choose_layers(now, self._speaker)
            return
        if not self.transport_cc:
            return
        slot = probe_slot(self.slots)
        transceiver = None if slot is None else self._transceivers.get(id(slot))
        if slot is None or transceiver is None:
            return
        if not srtp_send.send_ready(hooks.transport_of(transceiver)):
            return  # DTLS not up yet: the start probes wait for it
        clusters = self.probe_control.process(
            now, self.downlink.estimate_bps, self._needed_bps, self._wanting,
            self.downlink.loss_fraction, confirming=self._confirming,
        )  # fmt: skip
        if clusters:
            self.prober.media_bps = self.downlink.acked.bps() or 0
        for cluster in clusters:
            self.prober.send(cluster, slot)

    def choose_layers(self, now: float, speaker: str | None) -> None:
        """Each shown simulcast track's layer: the smallest covering its tile, within its share
        of the downlink (`speaker`'s camera gets the larger share)."""
        self._chosen_at = now
        self._speaker = speaker
        shown = [
            s for s in self.slots
            if s.kind == "video" and s.source is not None and not s.hidden
        ]  # fmt: skip
        if not any(isinstance(slot.source, LayeredTrack) for slot in shown):
            return
        audio = audio_reserve(
            slot.measure_wire_rate(now)
            for slot in self.slots
            if slot.kind == "audio" and slot.source is not None
        )
        weights = [
            SPEAKER_WEIGHT if s.source is not None and s.source.info.participant_id == speaker
            else 1
            for s in shown
        ]  # fmt: skip
        # What each track's tile wants: its layer's bitrate, over the climbing headroom.
        wanted_layers: list[int | None] = []
        wants: list[int | None] = []
        for slot in shown:
            track, switch = slot.source, slot.layer_switch
            if not isinstance(track, LayeredTrack) or switch is None:
                # One stream (a screen, a publisher without simulcast): the SFU cannot thin
                # it, so it takes what it sends, and the rest of the budget is the layers'.
                wanted_layers.append(None)
                wants.append(slot.measure_rate(now))
                continue
            wanted = None if track.muted else choose_layer(
                track.meter.layers, tile=slot.render_size or UNKNOWN_TILE, budget_bps=None,
                current=switch.current, now=now,
            )  # fmt: skip
            wanted_layers.append(wanted)
            if wanted is None or not track.meter.layers[wanted].active(now):
                wants.append(0)  # a camera turned off (nothing arrives): no share of the budget
                continue
            rate = track.meter.layers[wanted].bitrate
            wants.append(budget_to_climb(rate) if rate else None)  # None: not measured yet
        paused = self._pause(now, shown, wants, weights, audio)
        budgets = split_budget(
            self.downlink_bps, weights, audio,
            [0 if id(slot) in paused else want for slot, want in zip(shown, wants, strict=True)],
        )  # fmt: skip
        wanting = bool(paused)
        clean = self.downlink.loss_fraction < DROP_CLEAN_LOSS
        held: dict[int, float] = {}
        for slot, budget, wanted in zip(shown, budgets, wanted_layers, strict=True):
            track, switch = slot.source, slot.layer_switch
            if not isinstance(track, LayeredTrack) or switch is None:
                continue
            tile = slot.render_size or UNKNOWN_TILE
            layer = None if id(slot) in paused else choose_layer(
                track.meter.layers, tile=tile, budget_bps=budget, current=switch.current, now=now
            )  # fmt: skip
            current, target = switch.current, switch.target
            if (
                current is not None
                and target is not None
                and target >= current
                and track.meter.layers[current].active(now)
            ):  # fmt: skip  (not while a step down decided before waits for its keyframe)
                layer, since = confirm_down(
                    layer, current, wanted, self._held_down.get(id(slot)), now, clean=clean
                )  # fmt: skip
                if since is not None:
                    held[id(slot)] = since
            if budget is not None and layer is not None:
                wanting |= wanted is not None and wanted > layer
            track.choose(slot, layer, now)
        self._held_down = held
        self._confirming = bool(held)
        wanting |= self._confirming
        self._needed_bps = needed_bps(wants, audio)
        self._wanting = wanting  # the downlink is probed only then (and at start)
        if log.isEnabledFor(logging.DEBUG):
            self._log_layers(shown, budgets)

    def _pause(
        self, now: float, shown: list[OutboundSlot], wants: list[int | None], weights: list[int],
        audio_bps: int,
    ) -> set[int]:  # fmt: skip
        """The cameras paused for this link now (`sfu.pausing`: when even their lowest layers
        do not fit beside `audio_bps` of audio); the page is told when that changes."""
        video_bps = self.downlink_bps
        candidates = []
        for index, (slot, want, weight) in enumerate(zip(shown, wants, weights, strict=True)):
            track = slot.source
            if not isinstance(track, LayeredTrack) or slot.layer_switch is None:
                if video_bps is not None:  # one stream: it takes what it sends
                    video_bps -= want or 0
                continue
            lowest = next((layer for layer in track.meter.layers if layer.active(now)), None)
            if lowest is None or track.muted:
                continue  # nothing arrives: nothing to pause
            width, height = slot.render_size or UNKNOWN_TILE
            candidates.append(Candidate(id(slot), lowest.bitrate, (weight, width * height, -index)))
        if video_bps is not None:
            video_bps = max(video_bps - audio_bps, 0)
        before = set(self.pausing.paused)
        paused = self.pausing.decide(now, video_bps, candidates, self.downlink.smoothed_loss)
        if paused != before:
            log.info(
                "%d of %d cameras paused for the participant's link (estimate %s bps, loss %.2f)",
                len(paused), len(candidates), self.downlink_bps, self.downlink.smoothed_loss,
                extra={"participant": self.participant_id},
            )  # fmt: skip
            self._announce_tracks()
        return paused

    def _log_layers(self, shown: list[OutboundSlot], budgets: list[int | None]) -> None:
        """At debug level: the layers chosen, when they changed (what a bench's log reads)."""
        chosen = [
            (slot.layer_switch.current, slot.layer_switch.target)
            if slot.layer_switch is not None else None
            for slot in shown
        ]  # fmt: skip
        if chosen != self._logged_layers:
            self._logged_layers = chosen
            log.debug(
                "layers (current, target) %s, budgets %s, estimate %s, needed %s, wanting %s",
                chosen, budgets, self.downlink_bps, self._needed_bps, self._wanting,
                extra={"participant": self.participant_id},
            )  # fmt: skip

    def _session(self) -> RTCPeerConnection:
        if self.pc is None:
            self.pc = RTCPeerConnection(self.configuration)
            self.owner.session_opened(self.pc, "subscribe")
        return self.pc

    def _new_slot(self, kind: str) -> OutboundSlot:
        pc = self._session()
        transceiver = pc.addTransceiver(kind, direction="sendonly")
        codec = self.room.codec_capability(kind)
        if codec:
            transceiver.setCodecPreferences(codec)
        dtls = hooks.transport_of(transceiver)
        slot = OutboundSlot(
            subscriber_id=self.participant_id,
            kind=kind,
            send_rtp=srtp_send.rtp_sender(dtls, self.downlink.sent if self.transport_cc else None),
            send_rtcp=functools.partial(srtp_send.send_rtcp, dtls),
            round_trip=self.round_trip,
        )
        hooks.bypass_sender(
            transceiver.sender,
            lambda params: self._on_send_parameters(slot, transceiver, params),
        )
        if not self._hooked:
            hooks.hook_transport(dtls, None, self._on_rtcp)
            self._hooked = True
        self.slots.append(slot)
        self._transceivers[id(slot)] = transceiver
        return slot

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
        pc = self.pc
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
        sdp = pc.localDescription.sdp
        if self.transport_cc:
            sdp = offer_transport_cc(sdp, self.downlink.sent.extension_id)
        self.notify(SubscribeOffer(pc="subscribe", sdp=sdp))

    async def answer(self, sdp: str) -> None:
        """Apply the client's answer to our subscribe offer."""
        pc = self.pc
        if pc is None or not self._negotiating:
            raise MediaError("no subscribe offer is waiting for an answer")
        rejected = rejected_mids(sdp)
        if rejected:
            sdp = accept_rejections(pc.localDescription.sdp, sdp, rejected)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, KeyError, AttributeError) as exc:
            raise MediaError(f"unusable subscribe answer: {exc}") from None
        if rejected:
            self._decline(rejected)
        if self.transport_cc:
            self._accept_transport_cc(sdp)
        else:
            self.downlink.forget_start()  # no transport feedback will correct it
        self._negotiating = False
        restart = self._restart
        if restart is not None and restart.offered_in(pc.localDescription.sdp):
            self._restart = None  # the answer to the offer that carried the new credentials
            if ice_restart.restarts(restart.transport, sdp):
                restart.start(sdp, self._request_keyframes)
            else:  # answered without restarting: the old generation goes on
                restart.abandon()
        self._announce_tracks()
        if self._renegotiate:
            self._renegotiate = False
            self._negotiation_needed()

    def _decline(self, rejected: dict[str, str]) -> None:
        """The answer rejected these sections (mid -> kind): the browser cannot receive the
        room's codec for that kind. Their slots go idle for good (inactive: nothing is sent on
        them), no track of that kind is offered again, and the participant is told once."""
        for slot in self.slots:
            transceiver = self._transceivers.get(id(slot))
            if transceiver is None or str(transceiver.mid) not in rejected:
                continue
            slot.assign(None)
            slot.ready = False
            kind = rejected[str(transceiver.mid)]
            if kind not in self.declined:
                self.declined.add(kind)
                codec = self.room.codec_name(kind)
                log.warning(
                    "subscriber cannot receive the room's codec",
                    extra={"participant": self.participant_id, "kind": kind, "codec": codec},
                )
                self.owner.report_error(
                    ErrorCode.RECEIVE_CODEC_UNSUPPORTED,
                    f"this browser cannot receive the room's {kind} codec ({codec})",
                    "answer",
                )

    def _accept_transport_cc(self, answer: str) -> None:
        """Send the transport-wide sequence number on the sections whose answer took it: aiortc
        dropped the extension it does not know from what it negotiated, and is told again
        before its connect task hands the send parameters to the slots (`bypass_sender`)."""
        extension_id = self.downlink.sent.extension_id
        accepted = accepted_transport_cc(answer)
        if extension_id not in accepted.values():
            self.downlink.forget_start()  # no transport feedback will correct it
        slots = {id(slot): slot for slot in self.slots}
        for key, transceiver in self._transceivers.items():
            if accepted.get(str(transceiver.mid)) != extension_id:
                continue
            hooks.negotiate_extensions(transceiver, {TRANSPORT_CC_URI: extension_id})
            slot = slots.get(key)
            if slot is not None and slot.ready and slot.ext_ids.transport_cc != extension_id:
                # Its send parameters were taken while aiortc had the extension dropped (a
                # renegotiation's answer applied while the first connection was still being
                # made): the slot would send unnumbered, unseen by the estimate and unusable
                # for probes.
                slot.set_extensions(replace(slot.ext_ids, transport_cc=extension_id), slot.mid)

    async def restart_ice(self) -> None:
        """Offer again with new ICE credentials: the client's network changed (`restart_ice`)."""
        transceiver = next(iter(self._transceivers.values()), None)
        if transceiver is None or self.closed:
            raise MediaError("no subscribe session to restart")
        self._restart = ice_restart.IceRestart.begin(hooks.transport_of(transceiver).transport)
        self.owner.ice_restart_began(self._restart, "subscribe")
        await self._restart.gather()
        self._negotiation_needed()

    def _request_keyframes(self) -> None:
        """Ask each received video track for a keyframe (the path to this participant just
        changed: what was lost on the dead one left its decoders waiting)."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.source is not None and slot.kind == "video":
                slot.source.request_keyframe(now)

    def _announce_tracks(self) -> None:
        """Tell the client which participant each of its subscribe transceivers carries."""
        tracks = []
        for slot in self.slots:
            transceiver = self._transceivers.get(id(slot))
            if slot.source is None or transceiver is None or transceiver.mid is None:
                continue
            info = slot.source.info
            tracks.append(SubscribedTrack(
                mid=transceiver.mid, participant_id=info.participant_id, kind=info.kind,
                track_id=info.track_id, source=info.source,
                paused=id(slot) in self.pausing.paused,
            ))  # fmt: skip
        self.notify(Tracks(tracks=tracks))

    def _on_rtcp(self, data: bytes) -> None:
        try:
            reports, data = split_transport_feedback(data) if self.transport_cc else ([], data)
            decisions = read_feedback(data) if data else []
        except ValueError:
            self.dropped += 1
            return
        now = time.monotonic()
        if reports:
            before = self.downlink.estimate_bps
            for report in reports:
                self.downlink.on_feedback(report, now)
            self._probe_results(now)
            if self.downlink.estimate_bps != before:
                self._log_estimate(before)
        slot_by_ssrc = self.slot_by_ssrc
        # The forwarded bytes the retransmission share is measured against, sampled at each
        # RTCP packet (never on the forwarding path).
        forwarded = sum(slot.octets for slot in self.slots)
        self.retransmits.observe(forwarded, now)
        for decision in decisions:
            if isinstance(decision, KeyframeRequest):
                slot = slot_by_ssrc.get(decision.ssrc)
                if slot is not None and slot.source is not None:
                    switch = slot.layer_switch  # a simulcast source: the layer it carries
                    slot.source.request_keyframe(now, None if switch is None else switch.target)
            elif isinstance(decision, BitrateEstimate):
                self.remb_climb.on_remb(decision.bitrate, now)
                self.downlink.on_remb(decision.bitrate)
                if self.remb_climb.granted_bps != self.downlink.remb_grant:
                    self.downlink.grant(self.remb_climb.granted_bps)  # the climb ended
                for ssrc in decision.ssrcs:
                    slot = slot_by_ssrc.get(ssrc)
                    if slot is not None:
                        slot.remb_bps = decision.bitrate
            elif isinstance(decision, Retransmit):
                slot = slot_by_ssrc.get(decision.ssrc)
                if slot is not None and slot.source is not None:
                    late = self.retransmits.refused[Refusal.TOO_LATE]
                    missed = slot.retransmit(
                        list(decision.sequences), now, self.retransmits, forwarded
                    )
                    if missed:
                        slot.source.nack_upstream(missed, now)
                    if slot.kind == "video" and self.retransmits.refused[Refusal.TOO_LATE] > late:
                        # A lost packet too old to resend: the subscriber's decoder would wait
                        # for it (a browser asks for a keyframe only after seconds of that).
                        # A keyframe lets it go on (rate-limited per publisher, as any request).
                        switch = slot.layer_switch
                        slot.source.request_keyframe(now, None if switch is None else switch.target)
            elif isinstance(decision, Loss):
                slot = slot_by_ssrc.get(decision.ssrc)
                if slot is not None:
                    slot.fraction_lost = decision.fraction_lost
                # Whether a resend can still arrive in time depends on it (`sfu.retransmit`).
                self.retransmits.rtt_s = self.round_trip.on_report(
                    decision.ssrc, decision.lsr, decision.dlsr, now
                )

    def _log_estimate(self, before: int | None) -> None:
        """At debug level: the downlink estimate moved (what a bench's log reads)."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        downlink = self.downlink
        log.debug(
            "downlink estimate %s -> %s bps (acknowledged %s, loss %.3f, overuses %d, "
            "probe raises %d, remb %s)", before, downlink.estimate_bps, downlink.acked.bps(),
            downlink.loss_fraction, downlink.overuses, downlink.probe_raises, downlink.remb_bps,
            extra={"participant": self.participant_id},
        )  # fmt: skip

    def _probe_results(self, now: float) -> None:
        """Hand the probe results to the estimate and the controller; a probe that raised the
        estimate has the layers chosen again at once (the switch up at the next keyframe)."""
        raised = False
        for result in self.downlink.probes.take_results():
            raised |= self.downlink.on_probe(result)
            self.probe_control.on_result(result, now)
            log.debug(
                "probe %d at %d bps: %s (sent at %s bps, received at %s, %d of %d arrived)",
                result.cluster.cluster_id, result.cluster.target_bps, result.bps,
                result.send_bps, result.receive_bps, result.received, result.packets,
                extra={"participant": self.participant_id},
            )  # fmt: skip
        if raised:
            self.choose_layers(now, self._speaker)

    def stop(self) -> None:
        """Stop every slot and any negotiation (the participant is leaving)."""
        self.closed = True
        self.prober.stop()
        for slot in self.slots:
            slot.assign(None)
            slot.ready = False
        if self._negotiation_task is not None:
            self._negotiation_task.cancel()

    async def close(self) -> None:
        """Close the peer connection (after `stop`)."""
        if self.pc is not None:
            try:
                await self.pc.close()
            except Exception:
                log.exception("closing a peer connection failed")
