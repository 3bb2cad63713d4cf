"""Which published track an arriving RTP packet belongs to: by SSRC, by MID and RID, through RTX.

Pure: bytes in, a decision out (the track, the simulcast layer and the packet as the publisher
sent it, or nothing); no socket, no clock. `sfu.publisher` hands it each decrypted packet of its
publish session and forwards what it returns.

How a packet finds its track: the SSRCs the SDP announced are known when the track is published;
an SSRC the SDP did not announce is learned once from the MID header extension. A packet on a
track's RTX SSRC is unwrapped (RFC 4588) to the original packet; an RTX packet with no payload
is a bandwidth probe and is neither forwarded nor counted as dropped.

Simulcast (`sfu.simulcast`): a track published with layers (`TrackInfo.layers`, lowest first)
receives one SSRC per layer, none announced. Each is learned from its first packets, which carry
the MID and the RID header extensions; a layer's RTX SSRC from the repaired-RID extension. Every
packet is routed with its layer's index (0 for a track sent as one stream).
"""

from __future__ import annotations

from core.media.rtp import RtpHeader, parse_header, unwrap_rtx
from sfu.forwarder import PublishedTrack

Routed = tuple[PublishedTrack, bytes, RtpHeader, int]
"""A packet's track, the packet (RTX unwrapped), its header and its simulcast layer (0: the
only one)."""


class InboundStream:
    """One SSRC arriving on the publish session: which track and layer it carries."""

    __slots__ = ("layer", "media_ssrc", "rtx", "track")

    def __init__(self, track: PublishedTrack, rtx: bool, layer: int = 0, media_ssrc: int = 0):
        self.track = track
        """The published track."""
        self.rtx = rtx
        """An RTX stream (RFC 4588): its packets are retransmissions to unwrap."""
        self.layer = layer
        """Index of its simulcast layer in `track.info.layers` (0 without simulcast)."""
        self.media_ssrc = media_ssrc
        """For a layer's RTX stream: the SSRC of the media stream it repairs, once known
        (0: the track's own `ssrc`)."""


class Demux:
    """One publish session's inbound streams: SSRC (media or RTX, of any layer) → track."""

    __slots__ = ("by_mid", "by_ssrc", "dropped")

    def __init__(self) -> None:
        self.by_ssrc: dict[int, InboundStream] = {}
        """Publisher SSRC → the stream it is."""
        self.by_mid: dict[str, PublishedTrack] = {}
        """Published tracks by the publish session's media id."""
        self.dropped = 0
        """Packets refused as malformed or unroutable (a misbehaving peer shows here)."""

    def add(self, mid: str, track: PublishedTrack) -> None:
        """A track is published on media id `mid`, with the SSRCs its SDP announced (if any)."""
        self.by_mid[mid] = track
        if track.ssrc:
            self.by_ssrc[track.ssrc] = InboundStream(track, False)
        if track.rtx_ssrc:
            self.by_ssrc[track.rtx_ssrc] = InboundStream(track, True)

    def remove(self, mid: str) -> PublishedTrack | None:
        """The track on `mid` is unpublished: forget it and every SSRC that led to it."""
        track = self.by_mid.pop(mid, None)
        if track is None:
            return None
        for ssrc, stream in list(self.by_ssrc.items()):
            if stream.track is track:
                del self.by_ssrc[ssrc]
        return track

    def route(self, data: bytes) -> Routed | None:
        """The track and layer of one received RTP packet, and the packet to forward (RTX
        unwrapped); None when it is not forwarded (malformed, unknown, wrong payload type:
        counted in `dropped`; an empty RTX probe: not counted)."""
        # Hot path, per received packet: watched by bench/forwarding.py.
        stream = self.by_ssrc.get(int.from_bytes(data[8:12], "big"))
        try:
            if stream is None:
                stream = self._learn_ssrc(data)
                if stream is None:
                    self.dropped += 1
                    return None
            track = stream.track
            header = parse_header(data)
            if stream.rtx:
                if header.payload_end - header.payload_start <= 2:
                    return None  # padding-only probe
                assert track.rtx_payload_type is not None
                data = unwrap_rtx(data, header, ssrc=stream.media_ssrc or track.ssrc,
                                  payload_type=track.info.payload_type)  # fmt: skip
                header = parse_header(data)
            elif header.payload_type != track.info.payload_type:
                self.dropped += 1
                return None
        except ValueError:
            self.dropped += 1
            return None
        return track, data, header, stream.layer

    def media_track(self, ssrc: int) -> PublishedTrack | None:
        """The track whose media (not RTX) stream has this SSRC (a sender report names it); for
        a simulcast track, only its lowest layer's stream (the one its `ssrc` names)."""
        stream = self.by_ssrc.get(ssrc)
        if stream is None or stream.rtx or stream.layer:
            return None
        return stream.track

    def media_stream(self, ssrc: int) -> InboundStream | None:
        """The media (not RTX) stream with this SSRC, of any layer (a sender report names it:
        each layer's SR describes that layer's clock)."""
        stream = self.by_ssrc.get(ssrc)
        return None if stream is None or stream.rtx else stream

    def _learn_ssrc(self, data: bytes) -> InboundStream | None:
        """An SSRC the SDP did not announce: find its track by the MID header extension (and
        its layer by the RID extensions)."""
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
            if track.info.layers:
                return self._learn_layer(track, header, is_rtx)
            if not is_rtx and not track.ssrc:
                track.ssrc = header.ssrc
            elif is_rtx:
                track.rtx_ssrc = header.ssrc
            stream = self.by_ssrc[header.ssrc] = InboundStream(track, is_rtx)
            return stream
        return None

    def _learn_layer(
        self, track: PublishedTrack, header: RtpHeader, is_rtx: bool
    ) -> InboundStream | None:
        """A simulcast track's new SSRC: its layer from the RID (media) or repaired-RID (RTX)
        extension; None when the packet names no layer the track has."""
        ext_id = track.ext_ids.repaired_rid if is_rtx else track.ext_ids.rid
        value = header.extensions.get(ext_id) if ext_id is not None else None
        rid = value.decode(errors="replace") if value is not None else None
        if rid not in track.info.layers:
            return None
        layer = track.info.layers.index(rid)
        if is_rtx:
            media_ssrc = next(
                (ssrc for ssrc, s in self.by_ssrc.items()
                 if s.track is track and not s.rtx and s.layer == layer),
                0,
            )  # fmt: skip
            stream = InboundStream(track, True, layer, media_ssrc)
            if layer == 0:
                track.rtx_ssrc = header.ssrc
        else:
            stream = InboundStream(track, False, layer)
            if layer == 0:
                track.ssrc = header.ssrc
            for known in self.by_ssrc.values():
                if known.track is track and known.rtx and known.layer == layer:
                    known.media_ssrc = header.ssrc
        self.by_ssrc[header.ssrc] = stream
        return stream

    def layer_ssrcs(self, track: PublishedTrack) -> list[int]:
        """The media SSRC of each of a simulcast track's layers (0: not seen yet), lowest
        first: where keyframe requests for a layer go."""
        ssrcs = [0] * max(len(track.info.layers), 1)
        for ssrc, stream in self.by_ssrc.items():
            if stream.track is track and not stream.rtx and stream.layer < len(ssrcs):
                ssrcs[stream.layer] = ssrc
        return ssrcs
