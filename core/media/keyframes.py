"""Keyframes: spotting them in RTP payloads, and asking publishers for them sparingly.

A subscriber can only start decoding video at a keyframe, so a new subscription starts on the
first packet of one, and the SFU asks the publisher for one (PLI). Ten subscribers joining at once
must cause one request, not ten: `KeyframeRequests` is the per-publisher rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.media.payloads import FU_A, NAL_IDR, NAL_SPS, STAP_A


def vp8_keyframe_start(payload: bytes) -> bool:
    """True for the first packet of a VP8 keyframe (RFC 7741 payload descriptor + header).

    The descriptor's layout as `core.media.payloads.parse_vp8_descriptor` reads it, walked here
    without building it: this runs per forwarded video packet while recording, and for every
    packet a new subscriber waits on (bench/forwarding.py watches it)."""
    if not payload:
        return False
    b0 = payload[0]
    start_of_partition = b0 & 0x10
    partition_id = b0 & 0x07
    if not start_of_partition or partition_id != 0:
        return False
    pos = 1
    if b0 & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= len(payload):
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    if pos >= len(payload):
        return False
    # VP8 frame header: the P bit (bit 0 of the first byte) is 0 for a keyframe.
    return payload[pos] & 0x01 == 0


def h264_keyframe_start(payload: bytes) -> bool:
    """True for a packet that starts an H.264 IDR picture (or carries its SPS) — RFC 6184."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (NAL_IDR, NAL_SPS):
        return True
    if nal_type == STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            if size == 0 or pos + 2 + size > len(payload):
                return False
            if payload[pos + 2] & 0x1F in (NAL_IDR, NAL_SPS):
                return True
            pos += 2 + size
        return False
    if nal_type == FU_A and len(payload) >= 2:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) in (NAL_IDR, NAL_SPS)
    return False


def keyframe_start(codec: str, payload: bytes) -> bool:
    """True when this payload starts a keyframe of `codec` (mime subtype, e.g. "VP8")."""
    name = codec.upper()
    if name == "VP8":
        return vp8_keyframe_start(payload)
    if name == "H264":
        return h264_keyframe_start(payload)
    return False


@dataclass(slots=True)
class KeyframeRequests:
    """Rate-limits keyframe requests to one publisher: at most one per `interval_s`.

    A request inside the interval is not dropped but deferred: `due` says when to send it, so a
    subscriber that joined just after a keyframe still gets one soon.
    """

    interval_s: float = 0.5
    """Least time between two requests sent to the publisher."""
    last_sent: float = -1e9
    """When the last request went out."""
    pending: bool = False
    """A request arrived inside the interval and waits."""

    def request(self, now: float) -> bool:
        """A subscriber wants a keyframe; True means send a request to the publisher now."""
        if now - self.last_sent >= self.interval_s:
            self.last_sent = now
            self.pending = False
            return True
        self.pending = True
        return False

    def due(self, now: float) -> bool:
        """True when a deferred request should go out now (call periodically)."""
        if self.pending and now - self.last_sent >= self.interval_s:
            self.last_sent = now
            self.pending = False
            return True
        return False

    def keyframe_seen(self) -> None:
        """A keyframe arrived: deferred requests are answered."""
        self.pending = False
