"""The demux's decisions, from packets as bytes: which published track a packet belongs to, RTX
unwrapped, unknown SSRCs learned from the MID header extension, garbage counted. No event loop."""

from __future__ import annotations

import struct

from core.media.rtp import ExtensionIds, extension_block, parse_header
from core.media.track import TrackInfo
from sfu.demux import Demux
from sfu.forwarder import PublishedTrack

IDS = ExtensionIds(mid=1, abs_send_time=3, audio_level=None)
VIDEO_PT, RTX_PT = 96, 97


def _track(mid: str, ssrc: int = 0, rtx_ssrc: int | None = None) -> PublishedTrack:
    info = TrackInfo("room", "pub", f"pub:{mid}", "video", "video/VP8", 90000, VIDEO_PT)
    return PublishedTrack(
        info, ssrc=ssrc, rtx_ssrc=rtx_ssrc, rtx_payload_type=RTX_PT, ext_ids=IDS, rtcp_ssrc=1,
        send_rtcp=lambda data: True, sinks=[],
    )  # fmt: skip


def _rtp(ssrc: int, seq: int = 7, pt: int = VIDEO_PT, payload: bytes = b"\x10\x00frame",
         mid: str | None = None) -> bytes:  # fmt: skip
    ext = extension_block(IDS, mid.encode(), None, None) if mid is not None else b""
    first = 0x90 if ext else 0x80
    return struct.pack("!BBHII", first, pt, seq, 90_000, ssrc) + ext + payload


def test_a_packet_on_an_announced_ssrc_goes_to_its_track_unchanged() -> None:
    demux = Demux()
    camera, screen = _track("0", ssrc=1111), _track("1", ssrc=2222)
    demux.add("0", camera)
    demux.add("1", screen)
    packet = _rtp(2222)
    routed = demux.route(packet)
    assert routed is not None
    track, data, header, layer = routed
    assert track is screen and data == packet and header.sequence == 7 and layer == 0
    assert demux.dropped == 0


def test_a_retransmission_is_unwrapped_to_the_original_packet() -> None:
    demux = Demux()
    camera = _track("0", ssrc=1111, rtx_ssrc=1112)
    demux.add("0", camera)
    original_seq = 4242
    rtx = _rtp(1112, seq=9, pt=RTX_PT, payload=struct.pack("!H", original_seq) + b"\x10\x00frame")
    routed = demux.route(rtx)
    assert routed is not None
    track, data, header, _ = routed
    assert track is camera
    assert (header.ssrc, header.payload_type, header.sequence) == (1111, VIDEO_PT, original_seq)
    assert data[header.payload_start :] == b"\x10\x00frame"


def test_an_empty_retransmission_is_a_probe_neither_forwarded_nor_dropped() -> None:
    demux = Demux()
    demux.add("0", _track("0", ssrc=1111, rtx_ssrc=1112))
    assert demux.route(_rtp(1112, pt=RTX_PT, payload=b"\x00\x01")) is None
    assert demux.dropped == 0


def test_an_unannounced_ssrc_is_learned_from_the_mid_extension() -> None:
    demux = Demux()
    camera, screen = _track("0"), _track("1")
    demux.add("0", camera)
    demux.add("1", screen)
    routed = demux.route(_rtp(5555, mid="1"))
    assert routed is not None and routed[0] is screen
    assert screen.ssrc == 5555 and camera.ssrc == 0
    # From now on the SSRC alone finds the track (browsers stop sending the MID).
    routed = demux.route(_rtp(5555))
    assert routed is not None and routed[0] is screen
    assert demux.media_track(5555) is screen


def test_an_unannounced_rtx_ssrc_is_learned_as_rtx() -> None:
    demux = Demux()
    camera = _track("0", ssrc=1111)
    demux.add("0", camera)
    rtx = _rtp(6666, pt=RTX_PT, payload=struct.pack("!H", 3) + b"\x10\x00frame", mid="0")
    routed = demux.route(rtx)
    assert routed is not None and routed[0] is camera
    assert camera.rtx_ssrc == 6666 and camera.ssrc == 1111
    assert routed[2].ssrc == 1111 and routed[2].sequence == 3
    assert demux.media_track(6666) is None, "a sender report never names an RTX stream"


def test_packets_no_track_claims_are_dropped_and_counted() -> None:
    demux = Demux()
    demux.add("0", _track("0", ssrc=1111))
    assert demux.route(_rtp(9999)) is None  # unknown SSRC, no MID
    assert demux.route(_rtp(9999, mid="7")) is None  # a MID nobody published
    assert demux.route(_rtp(9998, pt=111, mid="0")) is None  # right MID, wrong payload type
    assert demux.route(_rtp(1111, pt=111)) is None  # known SSRC, wrong payload type
    assert demux.dropped == 4
    assert 9998 not in demux.by_ssrc, "a refused packet teaches nothing"


def test_malformed_packets_are_dropped_not_raised() -> None:
    demux = Demux()
    demux.add("0", _track("0", ssrc=1111, rtx_ssrc=1112))
    good = _rtp(1111)
    malformed = [
        good[:11],  # shorter than the fixed header
        bytes([0x40]) + good[1:],  # RTP version 1
        bytes([0x90]) + good[1:12] + b"\xbe\xde\x00\x05",  # extension longer than the packet
        _rtp(1111, pt=VIDEO_PT | 0x80)[:1] + b"\x60",  # two bytes
    ]
    for packet in malformed:
        assert demux.route(packet) is None
    assert demux.dropped == len(malformed)
    assert parse_header(good).ssrc == 1111


def test_an_unpublished_track_forgets_its_ssrcs() -> None:
    demux = Demux()
    camera = _track("0", ssrc=1111, rtx_ssrc=1112)
    demux.add("0", camera)
    assert demux.remove("0") is camera
    assert demux.by_ssrc == {} and demux.by_mid == {}
    assert demux.route(_rtp(1111)) is None and demux.dropped == 1
    assert demux.remove("0") is None


# -- simulcast: one track, a layer per SSRC, learned from the RID extensions -----------------

SIMULCAST_IDS = ExtensionIds(mid=1, abs_send_time=3, audio_level=None, rid=10, repaired_rid=11)


def _layered_track(mid: str = "0") -> PublishedTrack:
    info = TrackInfo("room", "pub", f"pub:{mid}", "video", "video/VP8", 90000, VIDEO_PT,
                     layers=("q", "h", "f"))  # fmt: skip
    return PublishedTrack(
        info, ssrc=0, rtx_ssrc=None, rtx_payload_type=RTX_PT, ext_ids=SIMULCAST_IDS,
        rtcp_ssrc=1, send_rtcp=lambda data: True, sinks=[],
    )  # fmt: skip


def _element(ext_id: int, value: bytes) -> bytes:
    return bytes([ext_id << 4 | (len(value) - 1)]) + value


def _layer_rtp(ssrc: int, *, mid: str | None = "0", rid: str | None = None,
               repaired: str | None = None, seq: int = 7, pt: int = VIDEO_PT,
               payload: bytes = b"\x10\x00frame") -> bytes:  # fmt: skip
    body = b""
    if mid is not None:
        body += _element(1, mid.encode())
    if rid is not None:
        body += _element(10, rid.encode())
    if repaired is not None:
        body += _element(11, repaired.encode())
    ext = b""
    if body:
        body += b"\x00" * (-len(body) % 4)
        ext = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    first = 0x90 if ext else 0x80
    return struct.pack("!BBHII", first, pt, seq, 90_000, ssrc) + ext + payload


def test_each_layers_ssrc_is_learned_from_its_rid() -> None:
    demux = Demux()
    camera = _layered_track()
    demux.add("0", camera)
    # Browsers send the layers in any order; the RID says which is which.
    for ssrc, rid, layer in ((3003, "f", 2), (1001, "q", 0), (2002, "h", 1)):
        routed = demux.route(_layer_rtp(ssrc, rid=rid))
        assert routed is not None and routed[0] is camera and routed[3] == layer
    assert demux.layer_ssrcs(camera) == [1001, 2002, 3003]
    assert camera.ssrc == 1001, "the track's own SSRC is its lowest layer's (PLI, RR, REMB)"
    # Later packets carry neither MID nor RID: the SSRC alone gives track and layer.
    routed = demux.route(_layer_rtp(2002, mid=None, seq=8))
    assert routed is not None and routed[3] == 1 and routed[2].sequence == 8
    assert demux.media_track(1001) is camera
    assert demux.media_track(2002) is None, "a higher layer's SR is not the track's clock"
    assert demux.dropped == 0


def test_a_layers_retransmission_is_unwrapped_to_that_layer() -> None:
    demux = Demux()
    camera = _layered_track()
    demux.add("0", camera)
    # The RTX stream of `h` shows up before `h` itself (a NACK answered early).
    rtx = _layer_rtp(2102, repaired="h", pt=RTX_PT, payload=struct.pack("!H", 500) + b"\x10\x00x")
    routed = demux.route(rtx)
    assert routed is not None and routed[3] == 1
    assert demux.route(_layer_rtp(2002, rid="h")) is not None
    routed = demux.route(_layer_rtp(2102, mid=None, pt=RTX_PT,
                                    payload=struct.pack("!H", 501) + b"\x10\x00x"))  # fmt: skip
    assert routed is not None
    track, _, header, layer = routed
    assert (track, layer) == (camera, 1)
    assert (header.ssrc, header.payload_type, header.sequence) == (2002, VIDEO_PT, 501)
    assert demux.media_track(2102) is None


def test_a_layered_packet_without_a_known_rid_teaches_nothing() -> None:
    demux = Demux()
    camera = _layered_track()
    demux.add("0", camera)
    assert demux.route(_layer_rtp(4004)) is None  # MID but no RID
    assert demux.route(_layer_rtp(4005, rid="x")) is None  # a RID that was not offered
    assert demux.route(_layer_rtp(4006, pt=RTX_PT, rid="q")) is None  # RTX names its layer
    assert demux.dropped == 3 and demux.by_ssrc == {}
    assert demux.layer_ssrcs(camera) == [0, 0, 0]


def test_an_unpublished_simulcast_track_forgets_every_layer() -> None:
    demux = Demux()
    camera = _layered_track()
    demux.add("0", camera)
    for ssrc, rid in ((1001, "q"), (2002, "h")):
        demux.route(_layer_rtp(ssrc, rid=rid))
    demux.route(_layer_rtp(1101, repaired="q", pt=RTX_PT, payload=b"\x00\x01\x10\x00x"))
    assert len(demux.by_ssrc) == 3 and camera.rtx_ssrc == 1101
    demux.remove("0")
    assert demux.by_ssrc == {}
