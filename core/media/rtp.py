"""RTP packets as bytes (RFC 3550): read the header, write a subscriber's copy, and extend the
wrapping sequence numbers and timestamps.

Plain functions over bytes (no parse into objects and back), because they run for every
forwarded packet. `bench/forwarding.py` watches them. The recorder reads stored packets with
the same `parse_header` when it turns them back into frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")
_U16 = struct.Struct("!H")
_EXTENSION_HEADER = struct.Struct("!HH")
_ONE_BYTE_PROFILE = 0xBEDE

# Header-extension URIs the SFU understands (the ones aiortc negotiates).
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
# Simulcast (RFC 8852): which layer a packet is, on media packets and on their RTX packets.
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01): one
# 16-bit sequence number across every packet of the transport, for transport-cc feedback. Not
# in `ExtensionIds`: it belongs to the transport, not to one media session (`sfu.publisher`
# keeps the offer's id for all of them).
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


@dataclass(slots=True)
class RtpHeader:
    """What forwarding needs to know of one RTP packet."""

    payload_type: int
    """7-bit payload type."""
    marker: bool
    """Marker bit (last packet of a video frame)."""
    sequence: int
    """16-bit sequence number."""
    timestamp: int
    """32-bit media timestamp."""
    ssrc: int
    """Synchronisation source."""
    payload_start: int
    """Offset of the payload (after CSRCs and header extensions)."""
    payload_end: int
    """End of the payload (before padding)."""
    extensions: dict[int, bytes]
    """Header-extension elements by id (one-byte or two-byte form)."""


def parse_header(data: bytes) -> RtpHeader:
    """Read an RTP header; ValueError for anything that is not a well-formed RTP packet."""
    # Hot path, per received packet: watched by bench/forwarding.py.
    size = len(data)
    if size < 12:
        raise ValueError("RTP packet shorter than its fixed header")
    b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise ValueError("not RTP version 2")
    pos = 12 + 4 * (b0 & 0x0F)
    extensions: dict[int, bytes] = {}
    if b0 & 0x10:
        if pos + 4 > size:
            raise ValueError("truncated header extension")
        profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
        pos += 4
        end = pos + 4 * words
        if end > size:
            raise ValueError("truncated header extension")
        if profile == _ONE_BYTE_PROFILE:
            _one_byte_elements(data, pos, end, extensions)
        elif profile >> 4 == 0x100:
            _two_byte_elements(data, pos, end, extensions)
        pos = end
    payload_end = size
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0 or pos + padding > size:
            raise ValueError("bad padding")
        payload_end -= padding
    if pos > payload_end:
        raise ValueError("header longer than packet")
    return RtpHeader(b1 & 0x7F, b1 > 127, sequence, timestamp, ssrc, pos, payload_end, extensions)


def _one_byte_elements(data: bytes, pos: int, end: int, out: dict[int, bytes]) -> None:
    while pos < end:
        byte = data[pos]
        if byte == 0:  # padding
            pos += 1
            continue
        ext_id, length = byte >> 4, (byte & 0x0F) + 1
        if ext_id == 15:
            return
        pos += 1
        if pos + length > end:
            raise ValueError("truncated header extension element")
        out[ext_id] = data[pos : pos + length]
        pos += length


def _two_byte_elements(data: bytes, pos: int, end: int, out: dict[int, bytes]) -> None:
    while pos + 1 < end:
        ext_id = data[pos]
        if ext_id == 0:
            pos += 1
            continue
        length = data[pos + 1]
        pos += 2
        if pos + length > end:
            raise ValueError("truncated header extension element")
        out[ext_id] = data[pos : pos + length]
        pos += length


def is_rtcp(data: bytes) -> bool:
    """RTCP and RTP share a port (RFC 5761): RTCP packet types 192-223 sit where RTP's PT is."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def abs_send_time(now: float) -> bytes:
    """The abs-send-time header extension's value at `now`: 24 bits, 6.18 fixed-point seconds.

    Receivers use only the differences between packets (it wraps every 64 s), so the forwarder's
    monotonic `now` serves as well as the NTP clock (libwebrtc stamps its monotonic clock too).
    """
    return (int(now * (1 << 18)) & 0xFFFFFF).to_bytes(3, "big")


@dataclass(frozen=True, slots=True)
class ExtensionIds:
    """Header-extension ids negotiated on one media session (None: not negotiated)."""

    mid: int | None = None
    abs_send_time: int | None = None
    audio_level: int | None = None
    rid: int | None = None
    """RTP stream id: the simulcast layer of a media packet (received only, never sent)."""
    repaired_rid: int | None = None
    """Repaired RTP stream id: the simulcast layer an RTX packet repairs (received only)."""
    transport_cc: int | None = None
    """Transport-wide sequence number: written first in a sent block as a zero placeholder,
    which the transport numbers as the packet leaves (`TRANSPORT_CC_OFFSET`)."""

    @classmethod
    def from_uris(cls, uris: dict[str, int]) -> ExtensionIds:
        """From `uri -> id` as negotiated in SDP."""
        return cls(
            uris.get(MID_URI),
            uris.get(ABS_SEND_TIME_URI),
            uris.get(AUDIO_LEVEL_URI),
            uris.get(RID_URI),
            uris.get(REPAIRED_RID_URI),
            uris.get(TRANSPORT_CC_URI),
        )


def extension_block(
    ids: ExtensionIds, mid: bytes, abs_send_time: bytes | None, audio_level: bytes | None
) -> bytes:
    """A one-byte-form header-extension block (with its 4-byte header), padded to 32 bits."""
    body = _transport_cc_placeholder(ids)
    if ids.mid is not None and mid:
        body += bytes([ids.mid << 4 | (len(mid) - 1)]) + mid
    if ids.abs_send_time is not None and abs_send_time is not None:
        body += bytes([ids.abs_send_time << 4 | 2]) + abs_send_time
    if ids.audio_level is not None and audio_level is not None:
        body += bytes([ids.audio_level << 4]) + audio_level[:1]
    if not body:
        return b""
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", _ONE_BYTE_PROFILE, len(body) // 4) + body


def extension_template(ids: ExtensionIds, mid: bytes, *, audio_level: bool) -> bytes:
    """`extension_block` for one slot as a bytes %-template, built once when the slot is
    negotiated: `template % {b"ast": abs_send_time, b"level": audio_level}` is the block of a
    packet (abs-send-time always present, 3 bytes; the audio level when `audio_level`, 1 byte).

    Formatting a template costs a twentieth of building the block element by element, and it
    runs per forwarded packet (bench/forwarding.py watches it).
    """
    body = _literal(_transport_cc_placeholder(ids))  # literal bytes escaped for %-formatting
    size = len(_transport_cc_placeholder(ids))
    if ids.mid is not None and mid:
        body += _literal(bytes([ids.mid << 4 | (len(mid) - 1)]) + mid)
        size += 1 + len(mid)
    if ids.abs_send_time is not None:
        body += _literal(bytes([ids.abs_send_time << 4 | 2])) + b"%(ast)b"
        size += 4
    if ids.audio_level is not None and audio_level:
        body += _literal(bytes([ids.audio_level << 4])) + b"%(level)b"
        size += 2
    if not size:
        return b""
    padding = -size % 4
    header = struct.pack("!HH", _ONE_BYTE_PROFILE, (size + padding) // 4)
    return _literal(header) + body + b"\x00" * padding


TRANSPORT_CC_OFFSET = 17
"""Where the transport-wide sequence number sits in a packet built by `rewrite` with a block from
`extension_block` / `extension_template` (no CSRCs; the block's 4-byte header; the element's
one-byte header): the transport writes it there as the packet leaves."""


def _transport_cc_placeholder(ids: ExtensionIds) -> bytes:
    """The transport-wide sequence number element, zero until the transport numbers the packet
    (first in the block, so it is always at `TRANSPORT_CC_OFFSET`)."""
    return b"" if ids.transport_cc is None else bytes([ids.transport_cc << 4 | 1, 0, 0])


def _literal(data: bytes) -> bytes:
    return data.replace(b"%", b"%%")


def rewrite(
    data: bytes,
    header: RtpHeader,
    *,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    extensions: bytes,
) -> bytes:
    """A subscriber's copy: new PT/sequence/timestamp/SSRC and header extensions, same payload.

    CSRCs are dropped (an SFU forwards one source per stream) and padding is kept.
    """
    b0 = 0x80 | (data[0] & 0x20) | (0x10 if extensions else 0)
    b1 = (data[1] & 0x80) | payload_type
    return (
        _HEADER.pack(b0, b1, sequence, timestamp, ssrc) + extensions + data[header.payload_start :]
    )


def unwrap_rtx(data: bytes, header: RtpHeader, *, ssrc: int, payload_type: int) -> bytes:
    """The original packet inside an RTX retransmission (RFC 4588): its sequence number is the
    first two payload bytes; payload type and SSRC are those of the media stream."""
    start = header.payload_start
    if header.payload_end - start < 2:
        raise ValueError("RTX packet without an original sequence number")
    (original_sequence,) = _U16.unpack_from(data, start)
    prefix = bytearray(data[:start])
    prefix[1] = (data[1] & 0x80) | payload_type
    _U16.pack_into(prefix, 2, original_sequence)
    struct.pack_into("!I", prefix, 8, ssrc)
    return bytes(prefix) + data[start + 2 :]


def wrap_rtx(packet: bytes, *, ssrc: int, payload_type: int, sequence: int) -> bytes:
    """An RTX retransmission (RFC 4588) of a packet built by `rewrite` (no CSRCs)."""
    header = parse_header(packet)
    start = header.payload_start
    b1 = (packet[1] & 0x80) | payload_type
    return (
        _HEADER.pack(packet[0], b1, sequence, header.timestamp, ssrc)
        + packet[12:start]
        + _U16.pack(header.sequence)
        + packet[start:]
    )


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number `a` comes after `b` (RFC 1982 serial arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class Unwrapper:
    """Extends a wrapping counter (16-bit sequence number, 32-bit timestamp) to an unbounded
    integer, taking each value as the nearest to the last one (so reordering is fine)."""

    def __init__(self, bits: int) -> None:
        self._modulus = 1 << bits
        self._last: int | None = None

    def unwrap(self, value: int) -> int:
        """The extended value of `value`."""
        if self._last is None:
            self._last = value
            return value
        delta = (value - self._last) % self._modulus
        if delta >= self._modulus // 2:
            delta -= self._modulus
        extended = self._last + delta
        if delta > 0:
            self._last = extended
        return extended
