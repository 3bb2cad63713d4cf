"""Which simulcast layer one subscriber gets of one track, and the one stream it sees.

A subscriber's slot receives a single RTP stream, while a simulcast track arrives as up to three
(`sfu.simulcast`, `sfu.demux`), each with its own sequence numbers, timestamps and VP8 picture
ids. `LayerSwitch` forwards one layer at a time and renumbers it so the subscriber's decoder
sees one continuous stream:

- a switch waits for a keyframe of the wanted layer (nothing before one decodes), and the old
  layer is forwarded until then, so the picture never stops for a switch;
- sequence numbers continue from the last one forwarded (a gap only where a packet was really
  lost); packets of the old layer, and of the new one from before its keyframe, are dropped, since
  they would land on numbers already used;
- timestamps continue too, advanced by the time that passed since the last packet (at least one
  tick: the receiver must not take the new keyframe for part of the previous frame);
- VP8 picture ids (7 or 15 bits) and TL0PICIDX continue across the switch (RFC 7741 §4.2):
  the receiver uses them to detect lost frames, and a jump would look like loss of thousands;
  KEYIDX and the temporal layer ids are left as they are (one temporal layering per stream).

The switch itself, as mediasoup, LiveKit and Janus do it; which layer is wanted (the subscriber's
bandwidth estimate, the size of the tile showing it, the active speaker) is decided elsewhere and
handed in with `want`. Pure: packets' headers and payloads in, numbers and bytes out; `now` is
passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.media.keyframes import keyframe_start
from core.media.rtp import RtpHeader, seq_newer

SWITCHES_KEPT = 8
"""Past switches remembered, to map a NACKed sequence number back to its layer's packet."""

Forwarded = tuple[int, int, bytes, int]
"""How to send one packet: sequence number, timestamp, and the payload as `prefix +
payload[skip:]` (a rewritten VP8 descriptor; `b"", 0` when the payload is unchanged)."""


@dataclass(frozen=True, slots=True)
class Switch:
    """One start of a layer on the subscriber's stream: the offsets its packets are sent with."""

    first_sequence: int
    """The subscriber-side sequence number of the layer's first packet (its keyframe)."""
    layer: int
    """The layer forwarded from there on."""
    sequence_offset: int
    timestamp_offset: int
    picture_id_offset: int
    tl0_offset: int


class LayerSwitch:
    """One subscriber's layer of one simulcast track, switched at keyframes, one stream out."""

    __slots__ = (
        "clock_rate",
        "codec",
        "current",
        "last_picture_id",
        "last_sent_at",
        "last_sequence",
        "last_timestamp",
        "last_tl0",
        "since",
        "switch",
        "switches",
        "target",
        "vp8",
    )

    def __init__(
        self,
        codec: str,
        clock_rate: int,
        *,
        first_sequence: int,
        first_timestamp: int,
        first_picture_id: int = 0,
        first_tl0: int = 0,
    ) -> None:
        self.codec = codec.split("/")[-1].upper()
        """Codec name (`VP8`, `H264`): how keyframes are spotted."""
        self.vp8 = self.codec == "VP8"
        self.clock_rate = clock_rate
        self.target: int | None = None
        """The layer wanted (None: nothing, e.g. the tile is hidden)."""
        self.current: int | None = None
        """The layer being forwarded (None: none yet, or stopped)."""
        self.since = 0
        """The publisher-side sequence number the current layer started at (its keyframe)."""
        self.switch = Switch(first_sequence, -1, 0, 0, 0, 0)
        """The offsets in force (the latest of `switches`)."""
        self.switches: list[Switch] = []
        """The latest starts, oldest first (at most `SWITCHES_KEPT`)."""
        # The newest values sent, which the next switch continues from; until the first switch,
        # one before the (random, RFC 3550) starting values the caller chose.
        self.last_sequence = (first_sequence - 1) & 0xFFFF
        self.last_timestamp = first_timestamp
        self.last_picture_id = (first_picture_id - 1) & 0x7FFF
        self.last_tl0 = (first_tl0 - 1) & 0xFF
        self.last_sent_at: float | None = None

    @property
    def pending(self) -> bool:
        """A switch waits for a keyframe of the target layer."""
        return self.target is not None and self.target != self.current

    def want(self, layer: int | None) -> bool:
        """Forward `layer` from its next keyframe (None: stop now). True when the caller should
        ask the publisher for a keyframe of that layer (rate-limited there)."""
        self.target = layer
        if layer is None:
            self.current = None
            return False
        return layer != self.current

    def forward(
        self, layer: int, header: RtpHeader, payload: bytes, now: float
    ) -> Forwarded | None:
        """How to send this packet of `layer` to the subscriber, or None when it is not sent.
        `payload`: the packet's payload (from `header.payload_start` to `header.payload_end`)."""
        # Per forwarded packet of a simulcast track and subscriber: bench/forwarding.py.
        sequence = header.sequence
        if layer != self.current:
            if layer != self.target or not keyframe_start(self.codec, payload):
                return None
            self._start(layer, header, payload, now)
        elif seq_newer(self.since, sequence):
            return None  # from before this layer's keyframe: its numbers are taken
        switch = self.switch
        out_sequence = (sequence + switch.sequence_offset) & 0xFFFF
        out_timestamp = (header.timestamp + switch.timestamp_offset) & 0xFFFFFFFF
        newest = seq_newer(out_sequence, self.last_sequence)
        if newest:
            self.last_sequence = out_sequence
            self.last_timestamp = out_timestamp
            self.last_sent_at = now
        if not self.vp8:
            return out_sequence, out_timestamp, b"", 0
        prefix, skip, picture_id, tl0 = rewrite_vp8_descriptor(
            payload, switch.picture_id_offset, switch.tl0_offset
        )
        if newest:  # the newest packet carries the newest picture: the next switch follows it
            if picture_id is not None:
                self.last_picture_id = picture_id
            if tl0 is not None:
                self.last_tl0 = tl0
        return out_sequence, out_timestamp, prefix, skip

    def source_of(self, out_sequence: int) -> tuple[Switch, int] | None:
        """Which layer's packet a subscriber-side sequence number was, and its publisher-side
        number (a NACK is answered from that layer's history); None when too old to know."""
        for switch in reversed(self.switches):
            start = switch.first_sequence
            if out_sequence == start or seq_newer(out_sequence, start):
                return switch, (out_sequence - switch.sequence_offset) & 0xFFFF
        return None

    def _start(self, layer: int, header: RtpHeader, payload: bytes, now: float) -> None:
        """Start forwarding `layer` at this packet (the first of a keyframe)."""
        first_sequence = (self.last_sequence + 1) & 0xFFFF
        elapsed = 0.0 if self.last_sent_at is None else max(now - self.last_sent_at, 0.0)
        ticks = round(elapsed * self.clock_rate) if self.last_sent_at is not None else 0
        first_timestamp = (self.last_timestamp + max(ticks, 1 if self.switches else 0)) & 0xFFFFFFFF
        picture_id_offset = tl0_offset = 0
        if self.vp8:
            picture_id, tl0 = vp8_picture(payload)
            if picture_id is not None:
                picture_id_offset = (self.last_picture_id + 1 - picture_id) & 0x7FFF
            if tl0 is not None:
                tl0_offset = (self.last_tl0 + 1 - tl0) & 0xFF
        self.switch = Switch(
            first_sequence=first_sequence,
            layer=layer,
            sequence_offset=(first_sequence - header.sequence) & 0xFFFF,
            timestamp_offset=(first_timestamp - header.timestamp) & 0xFFFFFFFF,
            picture_id_offset=picture_id_offset,
            tl0_offset=tl0_offset,
        )
        self.switches = [*self.switches[-(SWITCHES_KEPT - 1) :], self.switch]
        self.current = layer
        self.since = header.sequence


def vp8_picture(payload: bytes) -> tuple[int | None, int | None]:
    """The picture id (7 or 15 bits) and TL0PICIDX of a VP8 payload descriptor, where present."""
    _, _, picture_id, tl0 = rewrite_vp8_descriptor(payload, 0, 0)
    return picture_id, tl0


def rewrite_vp8_descriptor(
    payload: bytes, picture_id_offset: int, tl0_offset: int
) -> tuple[bytes, int, int | None, int | None]:
    """A VP8 payload descriptor (RFC 7741 §4.2) with its picture id and TL0PICIDX shifted:
    `(new descriptor, bytes it replaces, new picture id, new TL0PICIDX)`. The picture id keeps
    its width (a 7-bit id wraps at 128). Unchanged (`b"", 0`) when it has neither field or is
    truncated (the packet is forwarded as it came)."""
    size = len(payload)
    if size < 2 or not payload[0] & 0x80:
        return b"", 0, None, None
    ext = payload[1]
    if not ext & 0xC0:
        return b"", 0, None, None
    pos = 2
    picture_at = tl0_at = -1
    wide = False
    if ext & 0x80:
        if pos >= size:
            return b"", 0, None, None
        picture_at = pos
        wide = bool(payload[pos] & 0x80)
        pos += 2 if wide else 1
    if ext & 0x40:
        tl0_at = pos
        pos += 1
    if ext & 0x30:
        pos += 1
    if pos > size:
        return b"", 0, None, None
    descriptor = bytearray(payload[:pos])
    picture_id = tl0 = None
    if picture_at >= 0:
        if wide:
            picture_id = (((descriptor[picture_at] & 0x7F) << 8 | descriptor[picture_at + 1])
                          + picture_id_offset) & 0x7FFF  # fmt: skip
            descriptor[picture_at] = 0x80 | picture_id >> 8
            descriptor[picture_at + 1] = picture_id & 0xFF
        else:
            picture_id = (descriptor[picture_at] + picture_id_offset) & 0x7F
            descriptor[picture_at] = picture_id
    if tl0_at >= 0:
        tl0 = (descriptor[tl0_at] + tl0_offset) & 0xFF
        descriptor[tl0_at] = tl0
    return bytes(descriptor), pos, picture_id, tl0
