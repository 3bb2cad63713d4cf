"""Which published track an arriving RTP packet belongs to: by SSRC, by MID, through RTX.

Pure: bytes in, a decision out (the track and the packet as the publisher sent it, or nothing);
no socket, no clock. `sfu.publisher` hands it each decrypted packet of its publish session and
forwards what it returns.

How a packet finds its track: the SSRCs the SDP announced are known when the track is published;
an SSRC the SDP did not announce is learned once from the MID header extension. A packet on a
track's RTX SSRC is unwrapped (RFC 4588) to the original packet; an RTX packet with no payload
is a bandwidth probe and is neither forwarded nor counted as dropped.
"""

from __future__ import annotations

from core.media.rtp import RtpHeader, parse_header, unwrap_rtx
from sfu.forwarder import PublishedTrack

Routed = tuple[PublishedTrack, bytes, RtpHeader]
"""A packet's track, the packet (RTX unwrapped) and its header."""


class Demux:
    """One publish session's inbound streams: SSRC (media or RTX) → published track."""

    __slots__ = ("by_mid", "by_ssrc", "dropped")

    def __init__(self) -> None:
        self.by_ssrc: dict[int, tuple[PublishedTrack, bool]] = {}
        """Publisher SSRC → (track, is RTX)."""
        self.by_mid: dict[str, PublishedTrack] = {}
        """Published tracks by the publish session's media id."""
        self.dropped = 0
        """Packets refused as malformed or unroutable (a misbehaving peer shows here)."""

    def add(self, mid: str, track: PublishedTrack) -> None:
        """A track is published on media id `mid`, with the SSRCs its SDP announced (if any)."""
        self.by_mid[mid] = track
        if track.ssrc:
            self.by_ssrc[track.ssrc] = (track, False)
        if track.rtx_ssrc:
            self.by_ssrc[track.rtx_ssrc] = (track, True)

    def remove(self, mid: str) -> PublishedTrack | None:
        """The track on `mid` is unpublished: forget it and every SSRC that led to it."""
        track = self.by_mid.pop(mid, None)
        if track is None:
            return None
        for ssrc, (known, _) in list(self.by_ssrc.items()):
            if known is track:
                del self.by_ssrc[ssrc]
        return track

    def route(self, data: bytes) -> Routed | None:
        """The track of one received RTP packet, and the packet to forward (RTX unwrapped);
        None when it is not forwarded (malformed, unknown, wrong payload type: counted in
        `dropped`; an empty RTX probe: not counted)."""
        # Hot path, per received packet: watched by bench/forwarding.py.
        entry = self.by_ssrc.get(int.from_bytes(data[8:12], "big"))
        try:
            if entry is None:
                entry = self._learn_ssrc(data)
                if entry is None:
                    self.dropped += 1
                    return None
            track, is_rtx = entry
            header = parse_header(data)
            if is_rtx:
                if header.payload_end - header.payload_start <= 2:
                    return None  # padding-only probe
                assert track.rtx_payload_type is not None
                data = unwrap_rtx(data, header, ssrc=track.ssrc,
                                  payload_type=track.info.payload_type)  # fmt: skip
                header = parse_header(data)
            elif header.payload_type != track.info.payload_type:
                self.dropped += 1
                return None
        except ValueError:
            self.dropped += 1
            return None
        return track, data, header

    def media_track(self, ssrc: int) -> PublishedTrack | None:
        """The track whose media (not RTX) stream has this SSRC (a sender report names it)."""
        entry = self.by_ssrc.get(ssrc)
        return entry[0] if entry is not None and not entry[1] else None

    def _learn_ssrc(self, data: bytes) -> tuple[PublishedTrack, bool] | None:
        """An SSRC the SDP did not announce: find its track by the MID header extension."""
        header = parse_header(data)
        for mid, track in self.by_mid.items():
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
            self.by_ssrc[header.ssrc] = (track, is_rtx)
            return track, is_rtx
        return None
