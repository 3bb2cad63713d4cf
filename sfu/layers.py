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
  Until a switch shifts them the publisher's own numbers go out, and the descriptor is read
  only at a switch (of the newest packet sent and the new keyframe), so a subscriber that stays
  on its first layer costs no per-packet descriptor work (measured: 0.2 us a packet against
  0.65 us with the rewrite).

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
        "first_picture_id",
        "first_tl0",
        "last_sent_at",
        "last_sequence",
        "last_timestamp",
        "newest_payload",
        "rewrite",
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
        first_picture_id: int | None = None,
        first_tl0: int | None = None,
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
        self.rewrite = False
        """The VP8 descriptor needs rewriting (a picture id or TL0PICIDX offset is not 0)."""
        # The newest values sent, which the next switch continues from; until the first switch,
        # one before the (random, RFC 3550) starting values the caller chose.
        self.last_sequence = (first_sequence - 1) & 0xFFFF
        self.last_timestamp = first_timestamp
        self.last_sent_at: float | None = None
        self.newest_payload: bytes | None = None
        """The payload of the newest packet sent: its picture id and TL0PICIDX are read only
        when the next switch needs them, not per packet."""
        self.first_picture_id = first_picture_id
        self.first_tl0 = first_tl0
        """Where VP8 numbering starts (None: where the publisher's first layer has it)."""

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
        self, layer: int, header: RtpHeader, payload: bytes, now: float,
        rewrites: dict[tuple[int, int], tuple[bytes, int]] | None = None,
    ) -> Forwarded | None:  # fmt: skip
        """How to send this packet of `layer` to the subscriber, or None when it is not sent.
        `payload`: the packet's payload (from `header.payload_start` to `header.payload_end`);
        `rewrites`: this packet's rewritten VP8 descriptors by (picture id, TL0PICIDX)
        offsets, shared by the slots it is sent to (subscribers that switched at the same
        keyframe share offsets: the descriptor is rewritten once for all of them)."""
        # Per forwarded packet of a simulcast track and subscriber: bench/forwarding.py.
        sequence = header.sequence
        if layer != self.current:
            if layer != self.target or not keyframe_start(self.codec, payload):
                return None
            self._start(layer, header, payload, now)
        elif 0 < (self.since - sequence) & 0xFFFF < 0x8000:  # seq_newer(since, sequence)
            return None  # from before this layer's keyframe: its numbers are taken
        switch = self.switch
        out_sequence = (sequence + switch.sequence_offset) & 0xFFFF
        out_timestamp = (header.timestamp + switch.timestamp_offset) & 0xFFFFFFFF
        newest = 0 < (out_sequence - self.last_sequence) & 0xFFFF < 0x8000  # seq_newer
        if newest:
            self.last_sequence = out_sequence
            self.last_timestamp = out_timestamp
            self.last_sent_at = now
            self.newest_payload = payload
        if not self.rewrite:
            return out_sequence, out_timestamp, b"", 0
        if rewrites is None:
            prefix, skip, _, _ = rewrite_vp8_descriptor(
                payload, switch.picture_id_offset, switch.tl0_offset
            )
            return out_sequence, out_timestamp, prefix, skip
        offsets = (switch.picture_id_offset, switch.tl0_offset)
        rewritten = rewrites.get(offsets)
        if rewritten is None:
            prefix, skip, _, _ = rewrite_vp8_descriptor(payload, *offsets)
            rewritten = rewrites[offsets] = (prefix, skip)
        return out_sequence, out_timestamp, rewritten[0], rewritten[1]

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
            next_picture_id, next_tl0 = self._next_vp8_numbers()
            picture_id, tl0 = vp8_picture(payload)
            if picture_id is not None and next_picture_id is not None:
                picture_id_offset = (next_picture_id - picture_id) & 0x7FFF
            if tl0 is not None and next_tl0 is not None:
                tl0_offset = (next_tl0 - tl0) & 0xFF
        self.rewrite = bool(picture_id_offset or tl0_offset)
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

    def _next_vp8_numbers(self) -> tuple[int | None, int | None]:
        """The picture id and TL0PICIDX a switch continues from: one after the newest sent (as
        the subscriber saw them), or the starting values before anything was sent."""
        if self.newest_payload is None:
            return self.first_picture_id, self.first_tl0
        switch = self.switch
        _, _, picture_id, tl0 = rewrite_vp8_descriptor(
            self.newest_payload, switch.picture_id_offset, switch.tl0_offset
        )
        return (
            None if picture_id is None else (picture_id + 1) & 0x7FFF,
            None if tl0 is None else (tl0 + 1) & 0xFF,
        )


def vp8_picture(payload: bytes) -> tuple[int | None, int | None]:
    """The picture id (7 or 15 bits) and TL0PICIDX of a VP8 payload descriptor, where present."""
    _, _, picture_id, tl0 = rewrite_vp8_descriptor(payload, 0, 0)
    return picture_id, tl0


_UNCHANGED: tuple[bytes, int, None, None] = (b"", 0, None, None)


def rewrite_vp8_descriptor(
    payload: bytes, picture_id_offset: int, tl0_offset: int
) -> tuple[bytes, int, int | None, int | None]:
    """A VP8 payload descriptor (RFC 7741 §4.2) with its picture id and TL0PICIDX shifted:
    `(prefix, bytes it replaces, new picture id, new TL0PICIDX)`. The prefix ends with the last
    field changed (what follows, the TID/KEYIDX byte and the VP8 data, is not copied). The
    picture id keeps its width (a 7-bit id wraps at 128). Unchanged (`b"", 0`) when it has
    neither field or is truncated (the packet is forwarded as it came)."""
    # Per forwarded VP8 packet of a simulcast track and subscriber: bench/forwarding.py.
    size = len(payload)
    if size < 3 or not payload[0] & 0x80:
        return _UNCHANGED
    ext = payload[1]
    picture_id = None
    picture: tuple[int, ...] = ()
    end = 2
    if ext & 0x80:  # I: picture id
        first = payload[2]
        if first & 0x80:  # M: 15 bits
            if size < 4:
                return _UNCHANGED
            picture_id = (((first & 0x7F) << 8 | payload[3]) + picture_id_offset) & 0x7FFF
            picture = (0x80 | picture_id >> 8, picture_id & 0xFF)
        else:
            picture_id = (first + picture_id_offset) & 0x7F
            picture = (picture_id,)
        end += len(picture)
    if ext & 0x40:  # L: TL0PICIDX
        if size <= end:
            return _UNCHANGED
        tl0 = (payload[end] + tl0_offset) & 0xFF
        return bytes((payload[0], ext, *picture, tl0)), end + 1, picture_id, tl0
    if picture_id is None:
        return _UNCHANGED
    return bytes((payload[0], ext, *picture)), end, picture_id, None
