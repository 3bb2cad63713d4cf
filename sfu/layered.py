"""A camera published in simulcast layers, forwarded to each subscriber in the layer chosen for it.

The browser sends up to three encodings of one camera (`sfu.simulcast`: rid `q`, `h`, `f`,
lowest first), each its own RTP stream; the demux (`sfu.demux`) routes every packet with its
layer. `LayeredTrack` keeps each layer's retransmission history and keyframe requests, measures
the layers (`sfu.layer_choice.LayerMeter`), and gives every slot carrying it a `LayerSwitch`
(`sfu.layers`): one layer at a time, switched at that layer's keyframes, renumbered into one
continuous stream. Which layer a slot wants is decided by its subscriber (`sfu.subscriber`: tile
size and bandwidth budget) through `choose`; a recording (the room's sinks) gets the highest
layer being sent, through a switch of its own, so it keeps decodable video across switches.

Sans-IO as `sfu.forwarder`: `now` is passed in, sending goes through the callables given.
"""

from __future__ import annotations

import struct

from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from core.media.keyframes import KeyframeRequests, keyframe_start
from core.media.rtp import ExtensionIds, RtpHeader, abs_send_time
from core.media.track import TrackInfo
from sfu.forwarder import (
    LATE_ARRIVAL,
    OutboundSlot,
    PublishedTrack,
    RetransmissionBuffer,
    SendFn,
    layer_copy,
)
from sfu.layer_choice import LayerMeter, choose_layer
from sfu.layers import LayerSwitch
from sfu.reception import StreamReception
from sfu.sinks import MediaSink

UNKNOWN_TILE = (1 << 16, 1 << 16)
"""The tile of a track whose page never said its size: larger than any layer, so the budget
alone decides."""
_RTP_HEADER = struct.Struct("!BBHII")


class LayeredTrack(PublishedTrack):
    """One camera published in simulcast layers, and the slots it is forwarded to."""

    layered = True

    def __init__(
        self,
        info: TrackInfo,
        *,
        ssrc: int,
        rtx_ssrc: int | None,
        rtx_payload_type: int | None,
        ext_ids: ExtensionIds,
        rtcp_ssrc: int,
        send_rtcp: SendFn,
        sinks: list[MediaSink],
    ) -> None:
        super().__init__(
            info, ssrc=ssrc, rtx_ssrc=rtx_ssrc, rtx_payload_type=rtx_payload_type,
            ext_ids=ext_ids, rtcp_ssrc=rtcp_ssrc, send_rtcp=send_rtcp, sinks=sinks,
        )  # fmt: skip
        count = len(info.layers)
        self.histories = [self.history, *(RetransmissionBuffer() for _ in range(count - 1))]
        self.receptions += [StreamReception() for _ in range(count - 1)]
        self.meter = LayerMeter(count)
        """Each layer's bitrate, picture size and whether it is being sent."""
        self.layer_keyframes = [self.keyframes, *(KeyframeRequests() for _ in range(count - 1))]
        """Each layer's keyframe requests, rate-limited one by one (a PLI names one stream)."""
        self.layer_ssrcs = [0] * count
        """Each layer's media SSRC, learned from its first packet (0: not seen yet)."""
        self.by_layer: list[list[OutboundSlot]] = [[] for _ in range(count)]
        """The slots that may take each layer's packets: those forwarded it, and those waiting
        for its keyframe (a slot between two layers is in both). Regrouped at every choice and
        tick, so a packet is offered only to the slots it can go to (bench/layer_forwarding.py:
        with every slot offered every layer's packets, a third of the forwarding time was
        spent refusing them)."""
        self.recording = LayerSwitch(self.codec_name, info.clock_rate, first_sequence=0,
                                     first_timestamp=0)  # fmt: skip
        """What the room's sinks get: the highest layer sent, one stream, from keyframes."""

    # -- the hot path --------------------------------------------------------------------------

    def forward_layer(
        self, data: bytes, header: RtpHeader, arrival_ms: int, layer: int, late: bool = False
    ) -> None:
        """Send one packet of `layer` to every slot that carries that layer now (and to the
        sinks, if it is theirs). `arrival_ms`, `late`: as in `PublishedTrack.forward` (a late
        packet is recorded, kept from the slots, and its layer asked for a keyframe)."""
        # Hot path, per received packet of a simulcast track: watched by bench/forwarding.py.
        now = self.now = arrival_ms * 0.001
        sequence = header.sequence
        history = self.histories[layer]
        if self.is_duplicate(history, sequence):
            return
        history.put(sequence, data, LATE_ARRIVAL if late else now)
        self.receptions[layer].count(sequence)  # a block of our receiver reports per layer
        if layer and not self.layer_ssrcs[layer] and header.ssrc != self.ssrc:
            # (an RTX packet unwrapped before its layer's media was seen carries the track's)
            self.layer_ssrcs[layer] = header.ssrc
        payload = data[header.payload_start : header.payload_end]
        meter = self.meter
        meter.on_packet(layer, len(payload), now)
        keyframe = self.video and keyframe_start(self.codec_name, payload)
        if keyframe:
            self.layer_keyframes[layer].keyframe_seen()
            meter.on_keyframe(layer, payload, self.codec_name)
        if self.sinks:
            self._record(layer, data, header, payload, keyframe, arrival_ms)
        if self.muted or not self.by_layer[layer]:
            return
        if late:
            self.late += 1
            self.request_keyframe(now, layer)  # rate-limited per layer
            return
        values = {b"ast": abs_send_time(now), b"level": b""}
        marker = data[1] & 0x80
        first_byte = 0x80 | (data[0] & 0x20)
        body = memoryview(data)[header.payload_start :]
        payload_size = len(payload)
        pack = _RTP_HEADER.pack
        join = b"".join
        sent = 0
        rewrites: dict[tuple[int, int], tuple[bytes, int]] = {}
        for slot in self.by_layer[layer]:
            switch = slot.layer_switch
            if not slot.ready or switch is None:
                continue
            out = switch.forward(layer, header, payload, now, rewrites)
            if out is None:
                continue
            out_seq, out_ts, prefix, skip = out
            ext = slot.ext_templates[0] % values
            packet = join((
                pack(first_byte | 0x10 if ext else first_byte, marker | slot.payload_type,
                     out_seq, out_ts, slot.ssrc),
                ext, prefix, body[skip:] if skip else body,
            ))  # fmt: skip
            if slot.send_rtp(packet):
                sent += 1
                slot.packets += 1
                slot.octets += payload_size
        self.forwarded += sent

    def _record(
        self, layer: int, data: bytes, header: RtpHeader, payload: bytes, keyframe: bool,
        arrival_ms: int,
    ) -> None:  # fmt: skip
        """Hand the recording's layer to the sinks as one stream (the lowest layer's SSRC)."""
        switch = self.recording
        if switch.target is None:  # the first packet: the tick corrects it to the highest sent
            switch.want(len(self.histories) - 1)
        out = switch.forward(layer, header, payload, self.now)
        if out is None:
            if switch.current is None and switch.target is not None:
                self.request_keyframe(self.now, switch.target)
            return
        out_seq, out_ts, prefix, skip = out
        packet = layer_copy(
            data, header, payload_type=self.info.payload_type, sequence=out_seq,
            timestamp=out_ts, ssrc=self.ssrc, extensions=b"", prefix=prefix, skip=skip,
        )  # fmt: skip
        waiting = False
        for sink in self.sinks:
            waiting |= sink.on_rtp(self.info, packet, arrival_ms, keyframe)
        if waiting:
            self.request_keyframe(self.now, layer)

    # -- slots ---------------------------------------------------------------------------------

    def attach(self, slot: OutboundSlot, now: float | None = None) -> None:
        """Start forwarding to a slot: a layer chosen at once for the size its page shows (the
        budget comes with the subscriber's next choice), from that layer's next keyframe."""
        now = self.now if now is None else now
        if slot not in self.slots:
            self.slots.append(slot)
        switch = slot.layer_switch
        if switch is None:
            if slot.last_seq is None:
                first_sequence = slot.rng.randint(0, 0x7FFF)
                first_timestamp = slot.rng.randint(0, 0xFFFFFFFF)
            else:  # a reused slot: its numbers continue
                first_sequence = (slot.last_seq + 1) & 0xFFFF
                elapsed = max(now - slot.last_sent_at, 0.02)
                first_timestamp = (slot.last_ts + int(elapsed * self.info.clock_rate)) & 0xFFFFFFFF
            switch = slot.layer_switch = LayerSwitch(
                self.codec_name, self.info.clock_rate, first_sequence=first_sequence,
                first_timestamp=first_timestamp,
            )  # fmt: skip
        layer = choose_layer(self.meter.layers, tile=slot.render_size or UNKNOWN_TILE,
                             budget_bps=None, current=switch.current, now=now)  # fmt: skip
        self.choose(slot, 0 if layer is None else layer, now)

    def choose(self, slot: OutboundSlot, layer: int | None, now: float) -> None:
        """Forward `layer` to `slot` from that layer's next keyframe (asked for at once,
        rate-limited), the current one until then; None: nothing."""
        switch = slot.layer_switch
        if switch is not None and switch.want(layer) and layer is not None:
            self.request_keyframe(now, layer)
        self.regroup()

    def detach(self, slot: OutboundSlot) -> None:
        """Stop forwarding to a slot."""
        super().detach(slot)
        self.regroup()

    def regroup(self) -> None:
        """Sort the slots by the layers they take (`by_layer`)."""
        for layer, group in enumerate(self.by_layer):
            group[:] = [
                slot for slot in self.slots
                if slot.layer_switch is not None
                and layer in (slot.layer_switch.current, slot.layer_switch.target)
            ]  # fmt: skip

    def set_muted(self, muted: bool, now: float | None = None) -> None:
        """Stop (or resume) forwarding; resumed, every slot restarts at a keyframe of its
        layer."""
        if self.muted and not muted:
            now = self.now if now is None else now
            for slot in self.slots:
                switch = slot.layer_switch
                if switch is not None:
                    layer = switch.target
                    switch.want(None)
                    self.choose(slot, layer, now)
        self.muted = muted

    # -- RTCP towards the publisher ------------------------------------------------------------

    def layer_ssrc(self, layer: int) -> int:
        """The publisher's SSRC for a layer's stream (0: not seen yet)."""
        return self.ssrc if layer == 0 else self.layer_ssrcs[layer]

    def request_keyframe(self, now: float, layer: int | None = None) -> None:
        """Ask for a keyframe of `layer` (None: of each layer a slot or the recording waits
        for, else the lowest), at most once per interval per layer (deferred otherwise)."""
        self.now = max(self.now, now)
        if layer is None:
            wanted = {s.layer_switch.target for s in self.slots if s.layer_switch is not None}
            wanted.add(self.recording.target if self.sinks else None)
            wanted.discard(None)
            for each in sorted(w for w in wanted if w is not None) or [0]:
                self.request_keyframe(now, each)
            return
        if self.layer_keyframes[layer].request(now):
            self._send_layer_pli(layer)

    def tick(self, now: float) -> None:
        """Periodic work: deferred keyframe requests, and the recording's layer (the highest
        being sent)."""
        self.now = max(self.now, now)
        self.regroup()  # slots whose switch completed leave their old layer's group
        for layer, requests in enumerate(self.layer_keyframes):
            if requests.due(now):
                self._send_layer_pli(layer)
        if self.sinks:
            sent = [i for i, state in enumerate(self.meter.layers) if state.active(now)]
            if sent and sent[-1] != self.recording.target:
                if self.recording.want(sent[-1]):
                    self.request_keyframe(now, sent[-1])

    def _send_layer_pli(self, layer: int) -> None:
        media_ssrc = self.layer_ssrc(layer)
        if media_ssrc:
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self.rtcp_ssrc, media_ssrc=media_ssrc)
            self.keyframe_requests += 1
            self.send_to_publisher(bytes(packet))

    def bitrate_hint(self) -> None:
        """None: no REMB for a simulcast camera. The browser applies one to everything it
        sends, so a hint from the subscribers of the low layer would switch its upper layers
        off for everyone; each subscriber gets a layer that fits it instead."""
        return None
