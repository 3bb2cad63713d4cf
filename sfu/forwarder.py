"""The forwarding path: one published track's packets, rewritten and sent to each subscriber.

`PublishedTrack` is one stream arriving from a publisher; `OutboundSlot` is one sendonly
transceiver on a subscriber's session, fed by at most one published track at a time (a slot is
reused when its publisher leaves, so sequence numbers and timestamps continue across the switch).
Nothing here decodes or encodes: packets stay bytes, only their headers change.

Sans-IO: sending goes through the `send_rtp` / `send_rtcp` callables each slot and track are given;
time comes in as `now` (seconds of the monotonic clock: a packet's arrival, a tick) and randomness
from the `rng` each slot is given, so nothing here reads a clock or the global random generator
and the tests can be deterministic.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    pack_remb_fci,
)

from core.media.keyframes import KeyframeRequests, keyframe_start
from core.media.rtp import (
    ExtensionIds,
    RtpHeader,
    abs_send_time,
    extension_block,
    extension_template,
    parse_header,
    rewrite,
    wrap_rtx,
)
from core.media.track import TrackInfo
from sfu.layers import LayerSwitch, rewrite_vp8_descriptor
from sfu.reception import StreamReception
from sfu.retransmit import RetransmitBudget
from sfu.round_trip import RoundTrip
from sfu.sinks import MediaSink

WIRE_BYTES_PER_PACKET = 12 + 20 + 38
"""What a forwarded packet takes on the link beyond its payload: the RTP header, its
header-extension block (MID, transport-wide number, audio level or send time: ~20 bytes), and
what `sfu.downlink.PACKET_OVERHEAD_BYTES` counts (SRTP tag, UDP, IPv4)."""
HISTORY_SIZE = 1024
"""Packets kept per track to answer NACKs (about 1 s of 1 Mbps video)."""
LATE_ARRIVAL = float("-inf")
"""The arrival time a late packet is kept under in the `RetransmissionBuffer`: older than any
playout budget, so it is never resent (it already waited past the real-time bound)."""
_SEQ_AT = struct.Struct("!H")
_RTP_HEADER = struct.Struct("!BBHII")
SendFn = Callable[[bytes], bool]


class RetransmissionBuffer:
    """The last `HISTORY_SIZE` packets of a track, by sequence number, with when each arrived."""

    __slots__ = ("_arrivals", "_packets")

    def __init__(self) -> None:
        self._packets: list[bytes | None] = [None] * HISTORY_SIZE
        self._arrivals: list[float] = [0.0] * HISTORY_SIZE
        """When each kept packet reached the SFU (a resend must still arrive in time)."""

    def put(self, sequence: int, packet: bytes, arrived_at: float = 0.0) -> None:
        """Keep a packet that arrived at `arrived_at` (overwrites the one HISTORY_SIZE sequence
        numbers older)."""
        index = sequence % HISTORY_SIZE
        self._packets[index] = packet
        self._arrivals[index] = arrived_at

    def get(self, sequence: int) -> bytes | None:
        """The packet with this sequence number, if still kept."""
        packet = self._packets[sequence % HISTORY_SIZE]
        if packet is not None and _SEQ_AT.unpack_from(packet, 2)[0] == sequence:
            return packet
        return None

    def arrived_at(self, sequence: int) -> float:
        """When the kept packet with this sequence number arrived (after `get` found it)."""
        return self._arrivals[sequence % HISTORY_SIZE]


@dataclass(slots=True)
class OutboundSlot:
    """One sendonly transceiver of a subscriber, and the rewrite state of what it carries."""

    subscriber_id: str
    """The participant who receives this slot."""
    kind: str
    """`audio` or `video`."""
    send_rtp: SendFn
    """Protect and send one RTP packet to the subscriber."""
    send_rtcp: SendFn
    """Protect and send one RTCP packet to the subscriber."""
    mid: bytes = b""
    """The transceiver's media id, written into the MID header extension."""
    ssrc: int = 0
    rtx_ssrc: int = 0
    payload_type: int = 0
    rtx_payload_type: int | None = None
    ext_ids: ExtensionIds = field(default_factory=ExtensionIds)
    ext_templates: tuple[bytes, bytes] = (b"", b"")
    """This slot's header-extension block as %-templates (`rtp.extension_template`), without
    and with an audio level; derived from `ext_ids` and `mid`."""
    ready: bool = False
    """Negotiated and connected: packets may be sent."""
    source: PublishedTrack | None = None
    """The published track this slot carries now, if any."""
    started: bool = False
    """Sending has begun for the current source (video starts on a keyframe)."""
    seq_offset: int = 0
    ts_offset: int = 0
    last_seq: int | None = None
    last_ts: int = 0
    last_sent_at: float = 0.0
    rng: Random = field(default_factory=Random)
    """Where this slot's random starting numbers come from (RFC 3550: sequence numbers and
    timestamps start at random values); tests pass a seeded one."""
    rtx_seq: int = -1
    """Next sequence number of the RTX stream (random to begin with)."""
    packets: int = 0
    octets: int = 0
    remb_bps: int = 0
    """The subscriber's latest receiver-estimated maximum bitrate for this slot."""
    rate_mark: tuple[int, int, float] | None = None
    """(`octets`, `packets`, when) at the last `sending_bps` measure."""
    sending_bps: int = 0
    """What the slot sent per second between the last two measures (`measure_rate`)."""
    sending_pps: float = 0.0
    """Packets it sent per second over the same span."""
    fraction_lost: int = 0
    """From the subscriber's latest receiver report (out of 256)."""
    layer_switch: LayerSwitch | None = None
    """For a simulcast source (`sfu.layered`): which of its layers this slot carries, and the
    numbering that makes them one stream; None for a source sent as one stream."""
    render_size: tuple[int, int] | None = None
    """The size, in device pixels, the subscriber's page shows this track at (`render_sizes`;
    None: never told, shown at an unknown size)."""
    hidden: bool = False
    """The page shows this track nowhere (a `render_sizes` of 0 x 0): nothing is forwarded."""
    round_trip: RoundTrip | None = None
    """The subscriber's round trip (shared by its slots), told of each sender report sent
    here: its receiver reports echo them (`sfu.round_trip`)."""

    def measure_rate(self, now: float, every_s: float = 0.4) -> int:
        """`sending_bps` (payload bytes sent, per second), measured again when `every_s` has
        passed since the last measure (called at each layer choice, never per packet)."""
        mark = self.rate_mark
        if mark is None:
            self.rate_mark = (self.octets, self.packets, now)
        elif now - mark[2] >= every_s:
            elapsed = now - mark[2]
            self.sending_bps = int((self.octets - mark[0]) * 8 / elapsed)
            self.sending_pps = (self.packets - mark[1]) / elapsed
            self.rate_mark = (self.octets, self.packets, now)
        return self.sending_bps

    def measure_wire_rate(self, now: float) -> int:
        """What the slot takes on the subscriber's link per second (`measure_rate` with each
        packet's RTP header, header extensions, SRTP tag, UDP and IP: `WIRE_BYTES_PER_PACKET`);
        what the downlink estimate counts, so what a budget must subtract. For audio it is
        most of the difference: a 32 kbps Opus stream in 20 ms packets takes ~58 kbps."""
        payload = self.measure_rate(now)
        return payload + int(self.sending_pps * WIRE_BYTES_PER_PACKET * 8)

    def __post_init__(self) -> None:
        self.set_extensions(self.ext_ids, self.mid)
        if self.rtx_seq < 0:
            self.rtx_seq = self.rng.randint(0, 0x7FFF)

    def set_extensions(self, ext_ids: ExtensionIds, mid: bytes) -> None:
        """The header-extension ids negotiated for this slot, and its media id."""
        self.ext_ids = ext_ids
        self.mid = mid
        self.ext_templates = (
            extension_template(ext_ids, mid, audio_level=False),
            extension_template(ext_ids, mid, audio_level=True),
        )

    def begin(self, header: RtpHeader, clock_rate: int, now: float) -> None:
        """Start (or switch to) a source at this packet: continue our numbering without a jump
        a subscriber would take for loss, and leave a gap in time as long as the pause was."""
        if self.last_seq is None:
            first_seq = self.rng.randint(0, 0x7FFF)
            first_ts = self.rng.randint(0, 0xFFFFFFFF)
        else:
            first_seq = (self.last_seq + 1) & 0xFFFF
            elapsed = max(now - self.last_sent_at, 0.02)
            first_ts = (self.last_ts + int(elapsed * clock_rate)) & 0xFFFFFFFF
        self.seq_offset = (first_seq - header.sequence) & 0xFFFF
        self.ts_offset = (first_ts - header.timestamp) & 0xFFFFFFFF
        self.started = True

    def assign(self, track: PublishedTrack | None, now: float | None = None) -> None:
        """Carry another published track from its next keyframe (or nothing). `now`: as in
        `PublishedTrack.attach`."""
        if self.source is track:
            return
        if self.source is not None:
            self.source.detach(self)
        switch = self.layer_switch
        if switch is not None and switch.last_sent_at is not None:
            # A simulcast source's numbering (kept by its switch): the next one continues it.
            self.last_seq, self.last_ts = switch.last_sequence, switch.last_timestamp
            self.last_sent_at = switch.last_sent_at
        self.source = track
        self.started = False
        self.remb_bps = 0
        self.layer_switch = None
        # The page reports sizes by media id: a new publisher on this slot is another tile.
        self.render_size = None
        self.hidden = False
        if track is not None:
            track.attach(self, now)

    def show(self, size: tuple[int, int], now: float) -> None:
        """The page shows this slot's track at `size` (device pixels; 0 x 0: not at all). A
        hidden track stops being forwarded; shown again, it restarts at a keyframe."""
        self.render_size = size
        hidden = size[0] <= 0 or size[1] <= 0
        if hidden == self.hidden:
            return
        self.hidden = hidden
        track = self.source
        if track is None:
            return
        if hidden:
            track.detach(self)
            if self.layer_switch is not None:
                self.layer_switch.want(None)
        else:
            self.started = False
            track.attach(self, now)

    def retransmit(
        self,
        out_sequences: list[int],
        now: float | None = None,
        budget: RetransmitBudget | None = None,
        forwarded_bytes: int = 0,
    ) -> list[int]:
        """Answer a NACK from the track's history; returns the source sequence numbers missed.
        `now`: when (None: the latest time the track was handed). `budget`: the subscriber's
        retransmission budget, which refuses what cannot arrive in time, was just resent or
        would exceed its share (`forwarded_bytes`: all bytes forwarded to the subscriber so
        far); None: every packet still held is resent."""
        track = self.source
        if track is None:
            return []
        switch = self.layer_switch
        if switch is None and not self.started:
            return []
        if now is None:
            now = track.now
        missed: list[int] = []
        layers_missed: dict[int, list[int]] = {}
        histories = track.histories
        for out_seq in out_sequences:
            prefix, skip = b"", 0
            if switch is None:
                layer, in_seq, ts_offset = 0, (out_seq - self.seq_offset) & 0xFFFF, self.ts_offset
            else:
                found = switch.source_of(out_seq)
                if found is None:
                    if budget is not None:
                        budget.gone()
                    continue
                start, in_seq = found
                layer, ts_offset = start.layer, start.timestamp_offset
            data = histories[layer].get(in_seq)
            if data is None:
                if budget is not None:
                    budget.gone()
                (missed if switch is None else layers_missed.setdefault(layer, [])).append(in_seq)
                continue
            if budget is not None and budget.allow(
                (self.ssrc << 16) | out_seq, histories[layer].arrived_at(in_seq), len(data),
                forwarded_bytes, now,
            ) is not None:  # fmt: skip
                continue
            header = parse_header(data)
            if switch is not None and (start.picture_id_offset or start.tl0_offset):
                prefix, skip, _, _ = rewrite_vp8_descriptor(
                    data[header.payload_start : header.payload_end],
                    start.picture_id_offset, start.tl0_offset,
                )  # fmt: skip
            packet = layer_copy(
                data, header, payload_type=self.payload_type, sequence=out_seq,
                timestamp=(header.timestamp + ts_offset) & 0xFFFFFFFF, ssrc=self.ssrc,
                extensions=track.extensions_for(self, header, now), prefix=prefix, skip=skip,
            )  # fmt: skip
            if self.rtx_payload_type is not None and self.rtx_ssrc:
                packet = wrap_rtx(
                    packet, ssrc=self.rtx_ssrc, payload_type=self.rtx_payload_type,
                    sequence=self.rtx_seq,
                )  # fmt: skip
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            track.retransmitted += 1
            self.send_rtp(packet)
        for layer, sequences in layers_missed.items():  # a layer's own publisher stream
            track.nack_upstream(sequences, now, layer)
        return missed

    def sender_report(
        self, ntp: int, rtp_timestamp: int, layer: int = 0, now: float | None = None
    ) -> None:
        """Forward the publisher's clock mapping, in this slot's timestamp space (lip sync).
        `layer`: the simulcast layer whose stream it describes (only the one forwarded counts).
        `now`: when it is sent, for the subscriber's round trip (`round_trip`; None: not
        measured from this one)."""
        switch = self.layer_switch
        if switch is None:
            if not (self.ready and self.started):
                return
            ts_offset = self.ts_offset
        elif not self.ready or switch.current != layer:
            return
        else:
            ts_offset = switch.switch.timestamp_offset
        report = RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=(rtp_timestamp + ts_offset) & 0xFFFFFFFF,
                packet_count=self.packets & 0xFFFFFFFF,
                octet_count=self.octets & 0xFFFFFFFF,
            ),
        )
        self.send_rtcp(bytes(report))
        if self.round_trip is not None and now is not None:
            self.round_trip.sender_report_sent(self.ssrc, ntp, now)


class PublishedTrack:
    """One stream a participant publishes, and the slots it is forwarded to."""

    layered = False
    """Published in simulcast layers (`sfu.layered.LayeredTrack`): its packets go through
    `forward_layer`, not `forward`."""

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
        self.info = info
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.rtx_payload_type = rtx_payload_type
        self.ext_ids = ext_ids
        self.rtcp_ssrc = rtcp_ssrc
        self.send_to_publisher = send_rtcp
        self.sinks = sinks
        self.slots: list[OutboundSlot] = []
        self.history = RetransmissionBuffer()
        self.histories = [self.history]
        """Each layer's history (one for a track sent as one stream)."""
        self.keyframes = KeyframeRequests()
        self.muted = False
        self.video = info.kind == "video"
        self.codec_name = info.codec.split("/")[-1]
        self.receptions = [StreamReception()]
        """What arrived of each layer's stream (one for a track sent as one stream): a block
        of our receiver reports each."""
        self.reception = self.receptions[0]
        self.forwarded = 0
        self.retransmitted = 0
        self.late = 0
        """Packets kept from the slots for waiting past the real-time bound."""
        self.duplicates = 0
        """Packets dropped as already received (`is_duplicate`)."""
        self.keyframe_requests = 0
        """Keyframe requests (PLI) sent to the publisher: a subscriber that could not go on
        decoding (a frozen picture), a new subscriber, a layer switch (the node's metrics)."""
        self.now = 0.0
        """The latest time this track was handed (a packet's arrival, a tick, a request): what
        the few calls made without a `now` of their own go by."""
        self._nacked: dict[int, float] = {}

    # -- the hot path --------------------------------------------------------------------------

    def is_duplicate(self, history: RetransmissionBuffer, sequence: int) -> bool:
        """Whether a packet with this sequence number was already received (its history keeps
        it): counted, and neither forwarded nor recorded again. A browser's pacer pads its
        sending rate by resending recent packets over RTX (libwebrtc's "payload padding", most
        of what an OpenH264 camera sends under its target rate); forwarded, each reached the
        subscribers as a second copy of a number they had, which their SRTP replay check
        drops unseen: to the subscriber's transport feedback, a third of its packets lost."""
        if history.get(sequence) is None:
            return False
        self.duplicates += 1
        return True

    def forward(self, data: bytes, header: RtpHeader, arrival_ms: int, late: bool = False) -> None:
        """Send one packet to every slot carrying this track (and hand it to the sinks).
        `arrival_ms`: when it arrived, in ms of the monotonic clock (`socket_receive`): the
        forwarder's `now` for this packet. `late`: it waited in the node past the real-time
        bound (`sfu.queue_delay`): the sinks still get it (a recording is not played live, and
        what it misses is missing for good), the slots do not, and a keyframe is asked for."""
        # Hot path, per received packet: watched by bench/forwarding.py.
        now = self.now = arrival_ms * 0.001
        sequence = header.sequence
        if self.is_duplicate(self.history, sequence):
            return
        # A late packet is kept as too old to resend (`LATE_ARRIVAL`): a subscriber's NACK for
        # it is refused as too late, not passed on to the publisher, whose repair would reach a
        # recording a second time.
        self.history.put(sequence, data, LATE_ARRIVAL if late else now)
        self.reception.count(sequence)
        keyframe: bool | None = None
        if self.sinks:
            keyframe = self.video and keyframe_start(
                self.codec_name, data[header.payload_start : header.payload_end]
            )
            if keyframe:
                self.keyframes.keyframe_seen()
            waiting = False
            for sink in self.sinks:
                waiting |= sink.on_rtp(self.info, data, arrival_ms, keyframe)
            if waiting:  # a recording starts this track (or lost its place): ask, rate-limited
                self.request_keyframe(now)
        if self.muted or not self.slots:
            return
        if late:
            self.late += 1
            self.request_keyframe(now)  # video only, rate-limited like every request
            return
        level_id = self.ext_ids.audio_level
        level = header.extensions.get(level_id) if level_id is not None else None
        # Every slot's extension block is its template filled with these (rtp.extension_template).
        values = {b"ast": abs_send_time(now), b"level": level[:1] if level else b""}
        variant = 1 if level else 0
        timestamp = header.timestamp
        marker = data[1] & 0x80
        first_byte = 0x80 | (data[0] & 0x20)  # version 2, the padding bit kept
        payload = memoryview(data)[header.payload_start :]
        payload_size = header.payload_end - header.payload_start
        pack = _RTP_HEADER.pack
        join = b"".join
        sent = 0
        for slot in self.slots:
            # Per forwarded packet and subscriber: what rtp.rewrite does, inlined.
            if not slot.ready:
                continue
            if not slot.started:
                if self.video:
                    if keyframe is None:
                        keyframe = keyframe_start(
                            self.codec_name, data[header.payload_start : header.payload_end]
                        )
                        if keyframe:
                            self.keyframes.keyframe_seen()
                    if not keyframe:
                        continue
                slot.begin(header, self.info.clock_rate, now)
            ext = slot.ext_templates[variant] % values
            out_seq = (sequence + slot.seq_offset) & 0xFFFF
            out_ts = (timestamp + slot.ts_offset) & 0xFFFFFFFF
            packet = join(
                (
                    pack(
                        first_byte | 0x10 if ext else first_byte,
                        marker | slot.payload_type,
                        out_seq,
                        out_ts,
                        slot.ssrc,
                    ),
                    ext,
                    payload,
                )
            )
            if slot.send_rtp(packet):
                sent += 1
                slot.packets += 1
                slot.octets += payload_size
                slot.last_seq = out_seq
                slot.last_ts = out_ts
                slot.last_sent_at = now
        self.forwarded += sent

    def extensions_for(self, slot: OutboundSlot, header: RtpHeader, now: float) -> bytes:
        """The header extensions of `slot`'s copy of a packet (used for retransmissions)."""
        level = (
            header.extensions.get(self.ext_ids.audio_level)
            if self.ext_ids.audio_level is not None
            else None
        )
        return extension_block(slot.ext_ids, slot.mid, abs_send_time(now), level)

    @property
    def received(self) -> int:
        """Packets received, every layer's stream."""
        return sum(reception.received for reception in self.receptions)

    # -- slots ---------------------------------------------------------------------------------

    def attach(self, slot: OutboundSlot, now: float | None = None) -> None:
        """Start forwarding to a slot (from the next keyframe, for video: asked for at `now`;
        None: the latest time this track was handed)."""
        if slot not in self.slots:
            self.slots.append(slot)
        if self.video:
            self.request_keyframe(self.now if now is None else now)

    def detach(self, slot: OutboundSlot) -> None:
        """Stop forwarding to a slot."""
        if slot in self.slots:
            self.slots.remove(slot)

    def set_muted(self, muted: bool, now: float | None = None) -> None:
        """Stop (or resume) forwarding; a resumed video asks for a keyframe (at `now`; None: the
        latest time this track was handed)."""
        if self.muted and not muted and self.video:
            for slot in self.slots:
                slot.started = False
            self.request_keyframe(self.now if now is None else now)
        self.muted = muted

    # -- RTCP towards the publisher ------------------------------------------------------------

    def request_keyframe(self, now: float, layer: int | None = None) -> None:
        """Ask the publisher for a keyframe, at most once per interval (deferred otherwise).
        `layer`: of which simulcast layer (a track sent as one stream has one)."""
        self.now = max(self.now, now)
        if self.video and self.keyframes.request(now):
            self._send_pli()

    def tick(self, now: float) -> None:
        """Periodic work: deferred keyframe requests."""
        self.now = max(self.now, now)
        if self.keyframes.due(now):
            self._send_pli()

    def _send_pli(self) -> None:
        self.keyframe_requests += 1
        packet = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self.rtcp_ssrc, media_ssrc=self.ssrc)
        self.send_to_publisher(bytes(packet))

    def nack_upstream(self, sequences: list[int], now: float, layer: int = 0) -> None:
        """Ask the publisher for packets a subscriber lost and our history lacks (once each
        per 100 ms, so many subscribers missing one packet cause one request). `layer`: the
        simulcast layer whose stream lost them."""
        key = layer << 16
        fresh = [s for s in sequences if now - self._nacked.get(key | s, -1.0) > 0.1]
        media_ssrc = self.layer_ssrc(layer)
        if not fresh or not media_ssrc:
            return
        for s in fresh:
            self._nacked[key | s] = now
        if len(self._nacked) > 4 * HISTORY_SIZE:
            self._nacked = {s: t for s, t in self._nacked.items() if now - t < 1.0}
        packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self.rtcp_ssrc, media_ssrc=media_ssrc)
        packet.lost = sorted(fresh)
        self.send_to_publisher(bytes(packet))

    def layer_ssrc(self, layer: int) -> int:
        """The publisher's SSRC for a layer's stream (0: not seen yet)."""
        return self.ssrc if layer == 0 else 0

    def on_sender_report(self, ntp: int, rtp_timestamp: int, now: float, layer: int = 0) -> None:
        """The publisher's SR for `layer`'s stream, received at `now`: remember it for that
        stream's block of our RR, forward it to the slots that carry its layer."""
        if layer < len(self.receptions):
            self.receptions[layer].sender_report(ntp, now)
        for slot in self.slots:
            slot.sender_report(ntp, rtp_timestamp, layer, now)

    def receiver_reports(self, now: float) -> list[RtcpReceiverInfo]:
        """Our reception of this track at `now`: a report block per stream received (each
        simulcast layer's), for an RR to the publisher (RFC 3550 A.3)."""
        blocks = (
            reception.report(self.layer_ssrc(layer), now)
            for layer, reception in enumerate(self.receptions)
        )
        return [block for block in blocks if block is not None]

    def bitrate_hint(self) -> int | None:
        """What the publisher should aim for, from its subscribers' REMB estimates.

        The median, not the minimum: one subscriber on a poor link must not drag everyone's
        picture down (it gets loss and keyframes instead). Clamped to a sane range.
        """
        estimates = sorted(s.remb_bps for s in self.slots if s.remb_bps > 0)
        if not estimates:
            return None
        median = estimates[len(estimates) // 2]
        return max(150_000, min(median, 4_000_000))


def layer_copy(
    data: bytes,
    header: RtpHeader,
    *,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    extensions: bytes,
    prefix: bytes = b"",
    skip: int = 0,
) -> bytes:
    """`rtp.rewrite`, with the first `skip` payload bytes replaced by `prefix` (a simulcast
    layer's VP8 descriptor renumbered by `sfu.layers`)."""
    if not skip:
        return rewrite(
            data, header, payload_type=payload_type, sequence=sequence, timestamp=timestamp,
            ssrc=ssrc, extensions=extensions,
        )  # fmt: skip
    first = 0x80 | (data[0] & 0x20) | (0x10 if extensions else 0)
    return b"".join((
        _RTP_HEADER.pack(first, (data[1] & 0x80) | payload_type, sequence, timestamp, ssrc),
        extensions, prefix, data[header.payload_start + skip :],
    ))  # fmt: skip


def receiver_report_packet(rtcp_ssrc: int, reports: list[RtcpReceiverInfo]) -> bytes:
    """An RR compound packet."""
    return bytes(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))


def remb_packet(rtcp_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    """A REMB (receiver-estimated maximum bitrate) feedback packet towards a publisher."""
    packet = RtcpPsfbPacket(fmt=15, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs))
    return bytes(packet)
