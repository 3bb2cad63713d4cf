"""Transport-wide congestion control feedback (transport-cc) towards a publisher.

Design note (issue 15, part 4). A browser that negotiated transport-cc numbers every packet it
sends on the transport (audio, video, RTX and padding probes alike) in one 16-bit sequence, the
transport-wide sequence number header extension, and estimates its own uplink (Chromium's GCC)
from when those packets arrived. The receiver only reports: an RTCP transport feedback message
(RTPFB, FMT=15, draft-holmer-rmcat-transport-wide-cc-extensions-01 section 3.1) listing, from a
base sequence number on, which packets arrived and each arrival's delta to the one before.

`TransportFeedback` is that receiver: `record` is called per received packet and only appends
to two arrays (the sequence number and the arrival in ms); `build` turns what was recorded into
feedback packets, every ~100 ms or every `PACKETS_PER_FEEDBACK` packets (whichever first), as
libwebrtc's receiver does. What `build` handles:

- the 16-bit sequence wraps: numbers are extended (`core.media.rtp.Unwrapper`) before sorting;
- reordering: packets are reported in sequence order; an arrival earlier than the packet before
  it is a negative delta, which the large (signed 16-bit) form carries;
- loss: numbers never received between two reported ones are "not received";
- late packets: one older than what the last feedback already covered (reported lost there) is
  not reported again (the sender has acted on that loss); `late` counts them;
- duplicates: the first arrival counts;
- a run of losses longer than one packet reports (`MAX_STATUSES`) is skipped, not reported;
- a gap in time longer than a large delta can say (8 s) starts a new feedback packet, with its
  own reference time.

Arrival times are whole milliseconds (the transport hook's monotonic clock,
`sfu.aiortc_hooks.RtpHandler`), so deltas are multiples of 4 units of 250 us; GCC's filters work
on groups of packets 5 ms apart and are unaffected by the rounding.

SDP: aiortc negotiates neither the extension nor the `transport-cc` feedback type;
`read_transport_cc_offers` reads what the offer proposes, and `sfu.aiortc_hooks` adds both to the
answer (`negotiate_transport_cc`).

The other direction (a subscriber's downlink): on the subscribe session the SFU is the offerer;
`offer_transport_cc` adds the extension and the feedback type to the offer aiortc wrote, the
transport hook numbers every packet sent (`sfu.srtp_send.rtp_sender`), and the subscriber's
feedback is read back by `read_transport_feedback` (the parser, beside the builder) for the
estimator in `sfu.downlink`.

Pure: packets and arrival times in, RTCP bytes out (and back); no socket, no clock.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from core.media.rtp import TRANSPORT_CC_URI, Unwrapper

FEEDBACK_INTERVAL_MS = 100
"""Most time between two feedback packets while media flows (libwebrtc's default period)."""
PACKETS_PER_FEEDBACK = 100
"""Packets recorded before feedback is sent early (a high-rate publisher gets it more often)."""
MAX_PENDING = 2000
"""Packets kept for feedback while nothing can carry it (no track published yet: the first
packets can arrive before the track they belong to is); beyond, they are let go."""
MAX_STATUSES = 500
"""Most packets one feedback packet reports: at two bytes a delta it stays below a UDP packet
that crosses any path (~1,200 bytes)."""

NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2
"""Packet status symbols (section 3.1.1): not received; received, delta in 0..63.75 ms (one
byte); received, delta negative or larger (two bytes, signed)."""
_MAX_RUN = 0x1FFF
"""Longest run a run-length chunk can count (13 bits)."""
_RTPFB = 205
_FMT_TRANSPORT_CC = 15
_HEADER = struct.Struct("!BBHIIHHI")
_TICKS_PER_MS = 4
"""Receive deltas are in units of 250 us."""
_REFERENCE_MS = 64
"""The reference time is in units of 64 ms (24 bits, wrapping)."""


@dataclass(frozen=True, slots=True)
class TransportCcOffer:
    """What one m-section of an offer proposes for transport-cc."""

    extension_id: int | None
    """Id of the transport-wide sequence number header extension (None: not offered)."""
    payload_types: frozenset[int]
    """Payload types offered with `a=rtcp-fb:<pt> transport-cc` (`*` lists as -1)."""

    def offers_feedback(self, payload_type: int) -> bool:
        """Whether the offer asks for transport-cc feedback on this payload type."""
        return payload_type in self.payload_types or -1 in self.payload_types


def read_transport_cc_offers(sdp: str) -> dict[str, TransportCcOffer]:
    """The transport-cc proposal of each m-section of an offer, by media id (sections that
    propose neither the extension nor the feedback type are left out)."""
    offers: dict[str, TransportCcOffer] = {}
    for section in sdp.replace("\r\n", "\n").split("\nm=")[1:]:
        mid: str | None = None
        extension_id: int | None = None
        payload_types: set[int] = set()
        for line in section.split("\n"):
            if line.startswith("a=mid:"):
                mid = line[6:].strip()
            elif line.startswith("a=extmap:") and line.split()[1:2] == [TRANSPORT_CC_URI]:
                ext_id = line[9:].split()[0].split("/")[0]
                extension_id = int(ext_id) if ext_id.isdigit() else None
            elif line.startswith("a=rtcp-fb:") and line.split()[1:2] == ["transport-cc"]:
                payload_type = line[10:].split()[0]
                if payload_type == "*":
                    payload_types.add(-1)
                elif payload_type.isdigit():
                    payload_types.add(int(payload_type))
        if mid is not None and (extension_id is not None or payload_types):
            offers[mid] = TransportCcOffer(extension_id, frozenset(payload_types))
    return offers


class TransportFeedback:
    """One publish transport's transport-cc receiver: records arrivals, builds the feedback."""

    __slots__ = ("_arrivals", "_count", "_last_sent_ms", "_next", "_sequences", "_unwrapper",
                 "late", "sent")  # fmt: skip

    def __init__(self) -> None:
        self._sequences = array("H")
        """Transport-wide sequence numbers recorded since the last feedback, in arrival order."""
        self._arrivals = array("q")
        """Their arrival times (ms, monotonic), index for index."""
        self._unwrapper = Unwrapper(16)
        self._next: int | None = None
        """Extended sequence number the next feedback starts at (the first not yet reported)."""
        self._count = 0
        """Feedback packet count (8 bits, wrapping): lets the sender see lost feedback."""
        self._last_sent_ms: int | None = None
        self.sent = 0
        """Feedback packets built (the node's `twcc_feedback_packets`)."""
        self.late = 0
        """Packets that arrived after the feedback covering them (reported lost there)."""

    @property
    def pending(self) -> int:
        """Packets recorded and not yet in any feedback."""
        return len(self._sequences)

    def record(self, sequence: int, arrival_ms: int) -> bool:
        """A packet with this transport-wide sequence number arrived; True when feedback is due
        (`build` should be called now)."""
        # Hot path, per received packet: watched by bench/forwarding.py.
        self._sequences.append(sequence)
        self._arrivals.append(arrival_ms)
        last = self._last_sent_ms
        if last is None:
            self._last_sent_ms = arrival_ms
            return False
        return arrival_ms - last >= FEEDBACK_INTERVAL_MS or len(self._sequences) >= (
            PACKETS_PER_FEEDBACK
        )

    def build(self, sender_ssrc: int, media_ssrc: int, now_ms: int) -> list[bytes]:
        """RTCP transport feedback packets for everything recorded since the last call (none when
        nothing new arrived). `media_ssrc` names one of the publisher's streams (the message
        covers the whole transport; libwebrtc puts a media SSRC there too)."""
        self._last_sent_ms = now_ms
        received: dict[int, int] = {}
        unwrap = self._unwrapper.unwrap
        start = self._next
        for sequence, arrival in zip(self._sequences, self._arrivals, strict=True):
            extended = unwrap(sequence)
            if start is not None and extended < start:
                self.late += 1
            elif extended not in received:
                received[extended] = arrival
        del self._sequences[:]
        del self._arrivals[:]
        if not received:
            return []
        order = sorted(received)
        if start is None or order[0] - start > MAX_STATUSES:
            start = order[0]  # the first feedback, or a gap too long to be worth reporting
        packets = []
        index = 0
        while index < len(order):
            packet, index, start = self._packet(order, received, index, start, sender_ssrc,
                                                media_ssrc)  # fmt: skip
            packets.append(packet)
        self._next = start
        self.sent += len(packets)
        return packets

    def _packet(
        self,
        order: list[int],
        received: dict[int, int],
        index: int,
        base: int,
        sender_ssrc: int,
        media_ssrc: int,
    ) -> tuple[bytes, int, int]:
        """One feedback packet from `base` on, reporting `order[index:]` as far as it can; returns
        it, the index of the first packet left out and the sequence number after the last
        status reported."""
        if order[index] - base >= MAX_STATUSES:
            base = order[index]  # a loss run longer than a packet reports: it is not reported
        reference = received[order[index]] // _REFERENCE_MS
        previous = reference * _REFERENCE_MS * _TICKS_PER_MS
        symbols: list[int] = []
        deltas = bytearray()
        sequence = base
        while index < len(order) and len(symbols) < MAX_STATUSES:
            wanted = order[index]
            if wanted - base >= MAX_STATUSES:
                break
            ticks = received[wanted] * _TICKS_PER_MS
            delta = ticks - previous
            if not -0x8000 <= delta <= 0x7FFF:
                break  # too far apart in time for one packet: the next starts here
            symbols.extend([NOT_RECEIVED] * (wanted - sequence))
            if 0 <= delta <= 0xFF:
                symbols.append(SMALL_DELTA)
                deltas.append(delta)
            else:
                symbols.append(LARGE_DELTA)
                deltas += struct.pack("!h", delta)
            previous = ticks
            sequence = wanted + 1
            index += 1
        chunks = encode_chunks(symbols)
        body = chunks + deltas
        padding = -len(body) % 4
        words = (_HEADER.size + len(body) + padding) // 4 - 1
        header = _HEADER.pack(
            0x80 | (0x20 if padding else 0) | _FMT_TRANSPORT_CC, _RTPFB, words,
            sender_ssrc, media_ssrc, base & 0xFFFF, len(symbols),
            (reference & 0xFFFFFF) << 8 | (self._count & 0xFF),
        )  # fmt: skip
        self._count += 1
        # RTCP padding (RFC 3550): zero bytes, the last one saying how many (libwebrtc's way).
        tail = bytes(padding - 1) + bytes([padding]) if padding else b""
        return header + body + tail, index, sequence


def encode_chunks(symbols: list[int]) -> bytes:
    """The packet status chunks (section 3.1.3 and 3.1.4) for a list of status symbols.

    A run of 14 or more equal symbols (or the equal symbols that end the list) is a run-length
    chunk; otherwise the next 14 symbols as a one-bit vector when none is a large delta, or the
    next 7 as a two-bit vector. A vector's unused tail is zeros (the status count says where
    the statuses end).
    """
    out = bytearray()
    index = 0
    count = len(symbols)
    while index < count:
        symbol = symbols[index]
        run = 1
        while index + run < count and symbols[index + run] == symbol and run < _MAX_RUN:
            run += 1
        if run >= 14 or index + run == count:
            out += struct.pack("!H", symbol << 13 | run)
            index += run
            continue
        window = symbols[index : index + 14]
        if LARGE_DELTA not in window:
            bits = 0
            for position, value in enumerate(window):
                bits |= value << (13 - position)
            out += struct.pack("!H", 0x8000 | bits)
            index += 14
        else:
            bits = 0
            for position, value in enumerate(symbols[index : index + 7]):
                bits |= value << (12 - 2 * position)
            out += struct.pack("!H", 0xC000 | bits)
            index += 7
    return bytes(out)


SUBSCRIBER_EXTENSION_ID = 5
"""The transport-wide sequence number's extension id in our subscribe offers: free in every
m-section aiortc writes (it uses 1 for MID, 2 for the audio level, 3 for abs-send-time), and one
id for every section, as BUNDLE requires."""


def offer_transport_cc(sdp: str, extension_id: int = SUBSCRIBER_EXTENSION_ID) -> str:
    """aiortc's offer with transport-cc proposed in every audio and video m-section: the
    transport-wide sequence number extension and `a=rtcp-fb:<pt> transport-cc` on each media
    codec (RTX repairs, it is not fed back on). A section whose `extension_id` is taken by
    another extension is left as it was."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    sections = sdp.split(newline + "m=")
    out = [sections[0]]
    for section in sections[1:]:
        lines = section.split(newline)
        kind = lines[0].split(" ", 1)[0]
        taken = any(line.startswith(f"a=extmap:{extension_id} ")
                    or line.startswith(f"a=extmap:{extension_id}/") for line in lines)  # fmt: skip
        if kind not in ("audio", "video") or taken:
            out.append(section)
            continue
        payload_types = [
            line[9:].split()[0]
            for line in lines
            if line.startswith("a=rtpmap:") and not line.split()[-1].lower().startswith("rtx/")
        ]
        end = len(lines)
        while end > 1 and not lines[end - 1]:
            end -= 1  # the blank that ends the description stays last
        added = [f"a=extmap:{extension_id} {TRANSPORT_CC_URI}"]
        added += [f"a=rtcp-fb:{pt} transport-cc" for pt in payload_types]
        out.append(newline.join([*lines[:end], *added, *lines[end:]]))
    return (newline + "m=").join(out)


def accepted_transport_cc(sdp: str) -> dict[str, int]:
    """The sections of an answer to our offer that accepted transport-cc: the extension id by
    media id (the answer must echo the extension; the feedback type alone numbers nothing)."""
    return {
        mid: offer.extension_id
        for mid, offer in read_transport_cc_offers(sdp).items()
        if offer.extension_id is not None
    }


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """One transport feedback packet as the media sender reads it."""

    base_sequence: int
    """Transport-wide sequence number of the first packet reported (16 bits)."""
    feedback_count: int
    """The receiver's count of feedback packets (8 bits, wrapping)."""
    sequences: list[int]
    """Each packet reported, in order: its transport-wide sequence number (16 bits)."""
    arrivals_us: list[int | None]
    """Index for index: its arrival in us on the receiver's clock (reference time plus the
    deltas; only differences mean anything), None when reported not received."""


def read_transport_feedback(compound: bytes) -> list[FeedbackReport]:
    """The transport feedback packets (RTPFB, FMT 15) of an RTCP compound packet, parsed; other
    packets are skipped. ValueError when a feedback packet is malformed."""
    return split_transport_feedback(compound)[0]


def split_transport_feedback(compound: bytes) -> tuple[list[FeedbackReport], bytes]:
    """The transport feedback packets of an RTCP compound packet, parsed, and the compound's
    other packets (for `sfu.feedback.read_feedback`: aiortc's parser refuses the padding
    Chromium puts on transport feedback, and would refuse the NACKs and PLIs beside it too).
    ValueError when a feedback packet is malformed, or a length runs past the compound."""
    reports = []
    rest = []
    position = 0
    size = len(compound)
    while position + 4 <= size:
        length = (int.from_bytes(compound[position + 2 : position + 4], "big") + 1) * 4
        if position + length > size:
            raise ValueError("RTCP packet longer than its compound packet")
        packet = compound[position : position + length]
        if packet[1] == _RTPFB and packet[0] & 0x1F == _FMT_TRANSPORT_CC:
            reports.append(parse_transport_feedback(packet))
        else:
            rest.append(packet)
        position += length
    return reports, compound if not reports else b"".join(rest)


def parse_transport_feedback(packet: bytes) -> FeedbackReport:
    """One transport feedback packet (section 3.1), padding included; ValueError when it is not
    well formed (too short, statuses or deltas running past its end, a vector chunk's unused
    tail aside)."""
    if len(packet) < _HEADER.size:
        raise ValueError("transport feedback shorter than its header")
    first, packet_type, words, _sender, _media, base, count, reference_and_count = (
        _HEADER.unpack_from(packet)
    )
    if first >> 6 != 2 or packet_type != _RTPFB or first & 0x1F != _FMT_TRANSPORT_CC:
        raise ValueError("not a transport feedback packet")
    end = (words + 1) * 4
    if end > len(packet):
        raise ValueError("transport feedback longer than the packet")
    if first & 0x20:
        padding = packet[end - 1]
        if not 0 < padding <= end - _HEADER.size:
            raise ValueError("transport feedback with bad padding")
        end -= padding
    position = _HEADER.size
    symbols: list[int] = []
    while len(symbols) < count:
        if position + 2 > end:
            raise ValueError("transport feedback statuses run past its end")
        chunk = packet[position] << 8 | packet[position + 1]
        position += 2
        if not chunk & 0x8000:  # run length: symbol, 13-bit count
            symbols.extend([(chunk >> 13) & 0x3] * (chunk & _MAX_RUN))
        elif not chunk & 0x4000:  # one-bit vector: 14 symbols
            symbols.extend((chunk >> shift) & 1 for shift in range(13, -1, -1))
        else:  # two-bit vector: 7 symbols
            symbols.extend((chunk >> shift) & 0x3 for shift in range(12, -1, -2))
    del symbols[count:]
    reference = reference_and_count >> 8
    time_us = reference * _REFERENCE_MS * 1000
    sequences = []
    arrivals: list[int | None] = []
    for offset, symbol in enumerate(symbols):
        sequences.append((base + offset) & 0xFFFF)
        if symbol == NOT_RECEIVED:
            arrivals.append(None)
            continue
        if symbol == SMALL_DELTA:
            if position + 1 > end:
                raise ValueError("transport feedback deltas run past its end")
            delta = packet[position]
            position += 1
        elif symbol == LARGE_DELTA:
            if position + 2 > end:
                raise ValueError("transport feedback deltas run past its end")
            delta = int.from_bytes(packet[position : position + 2], "big", signed=True)
            position += 2
        else:
            raise ValueError("transport feedback with the reserved status symbol")
        time_us += delta * 250
        arrivals.append(time_us)
    return FeedbackReport(base, reference_and_count & 0xFF, sequences, arrivals)
