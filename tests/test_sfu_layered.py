"""A simulcast camera through the forwarder (sfu/layered.py): each slot gets the layer chosen for
it as one stream, keyframe requests go to the layer switched to, a NACK is answered from the
right layer's history, a hidden slot gets nothing, the recording gets the highest layer. Built
VP8 packets, `now` handed in, no event loop."""

from __future__ import annotations

import struct
from random import Random

from aiortc import RTCConfiguration
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket

from core.media.rtp import ExtensionIds, parse_header, unwrap_rtx
from core.media.track import TrackInfo
from sfu.forwarder import OutboundSlot
from sfu.layer_choice import (
    AUDIO_BPS,
    DOWN_CONFIRM_S,
    audio_reserve,
    needed_bps,
    split_budget,
)
from sfu.layered import LayeredTrack
from sfu.subscriber import Subscriber

SSRCS = (1001, 2002, 3003)
SIZES = ((160, 120), (320, 240), (640, 480))
DELTA = b"\x10\x01\x00\x00"  # VP8 descriptor (S bit), frame tag with P = 1


def _key(layer: int) -> bytes:
    """A VP8 keyframe's first bytes: descriptor, frame tag (P = 0), start code, picture size."""
    return b"\x10\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", *SIZES[layer])


class Recording:
    """A sink that keeps what it is handed."""

    def __init__(self) -> None:
        self.packets: list[tuple[bytes, bool]] = []

    def on_track(self, info: TrackInfo) -> None:
        pass

    def on_track_ended(self, info: TrackInfo) -> None:
        pass

    def on_rtp(self, info: TrackInfo, data: bytes, arrival_ms: int, keyframe: bool) -> bool:
        if not self.packets and not keyframe:
            return True  # waiting for a keyframe
        self.packets.append((data, keyframe))
        return False

    def on_data(self, *args: object) -> None:
        pass


def _track(to_publisher: list[bytes], sinks: list[Recording] | None = None) -> LayeredTrack:
    info = TrackInfo("room", "pub", "pub:0", "video", "video/VP8", 90000, 96,
                     layers=("q", "h", "f"))  # fmt: skip
    return LayeredTrack(info, ssrc=SSRCS[0], rtx_ssrc=None, rtx_payload_type=None,
                        ext_ids=ExtensionIds(mid=1), rtcp_ssrc=55,
                        send_rtcp=lambda b: to_publisher.append(b) or True,
                        sinks=sinks or [])  # type: ignore[arg-type]  # fmt: skip


def _slot(sent: list[bytes]) -> OutboundSlot:
    return OutboundSlot(
        "sub", "video", send_rtp=lambda b: sent.append(b) or True, send_rtcp=lambda b: True,
        mid=b"2", ssrc=777, rtx_ssrc=778, payload_type=100, rtx_payload_type=101,
        ext_ids=ExtensionIds(mid=4), ready=True, rng=Random(3),
    )  # fmt: skip


def _send(track: LayeredTrack, frame: int, at_s: float, keyframe: bool = False) -> None:
    """Frame `frame` of all three layers, one packet each (each layer numbered its own way)."""
    for layer, ssrc in enumerate(SSRCS):
        seq = (layer * 20_000 + frame) & 0xFFFF
        data = struct.pack("!BBHII", 0x80, 96, seq, layer * 7 + frame * 3000, ssrc)
        data += (_key(layer) if keyframe else DELTA) + bytes([layer]) * (100 * (layer + 1))
        track.forward_layer(data, parse_header(data), int(at_s * 1000), layer)


def _layers(sent: list[bytes]) -> list[int]:
    """The layer of each packet the subscriber received (its payload's filler byte)."""
    return [packet[-1] for packet in sent]


def _plis(rtcp: list[bytes]) -> list[int]:
    return [
        p.media_ssrc for b in rtcp for p in RtcpPacket.parse(b)
        if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI
    ]  # fmt: skip


def test_a_slot_gets_one_layer_and_switches_at_its_keyframe_as_one_stream() -> None:
    rtcp: list[bytes] = []
    track = _track(rtcp)
    _send(track, 0, 10.0, keyframe=True)  # the layers become known
    sent: list[bytes] = []
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    track.choose(slot, 0, 10.0)  # a thumbnail (sfu.layer_choice picks, tested there)
    for frame in range(1, 4):
        _send(track, frame, 10.0 + frame / 30, keyframe=frame == 1)
    assert set(_layers(sent)) == {0}, "the thumbnail gets the lowest layer"

    rtcp.clear()
    track.choose(slot, 2, 12.0)  # (a while after the attach's request: rate-limited)
    assert _plis(rtcp) == [SSRCS[2]], "the keyframe is asked of the layer switched to"
    _send(track, 4, 12.03)
    assert _layers(sent)[-1] == 0, "the old layer until the new one's keyframe"
    _send(track, 5, 12.06, keyframe=True)
    assert _layers(sent)[-1] == 2
    numbers = [parse_header(p).sequence for p in sent]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert {parse_header(p).ssrc for p in sent} == {777}


def test_a_nack_is_answered_from_the_layer_the_packet_came_from() -> None:
    track = _track([])
    _send(track, 0, 10.0, keyframe=True)
    sent: list[bytes] = []
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    track.choose(slot, 0, 10.0)
    _send(track, 1, 10.03, keyframe=True)
    _send(track, 2, 10.06)
    track.choose(slot, 1, 10.1)
    _send(track, 3, 10.1, keyframe=True)
    _send(track, 4, 10.13)
    lost = [parse_header(p).sequence for p in sent]
    assert _layers(sent) == [0, 0, 0, 1, 1], "layer 0 until layer 1's keyframe, in frame 3"
    resent: list[bytes] = []
    slot.send_rtp = lambda b: resent.append(b) or True
    assert slot.retransmit([lost[1], lost[4]], now=10.2) == []
    unwrapped = [unwrap_rtx(p, parse_header(p), ssrc=777, payload_type=100) for p in resent]
    assert [parse_header(p).sequence for p in unwrapped] == [lost[1], lost[4]]
    assert [p[-1] for p in unwrapped] == [0, 1], "each from its own layer's history"
    for again, first in zip(unwrapped, (sent[1], sent[4]), strict=True):
        h1, h2 = parse_header(again), parse_header(first)
        assert again[h1.payload_start :] == first[h2.payload_start :]
        assert h1.timestamp == h2.timestamp, "in the subscriber's timestamp space"


def test_a_hidden_slot_gets_nothing_and_restarts_at_a_keyframe() -> None:
    rtcp: list[bytes] = []
    track = _track(rtcp)
    _send(track, 0, 10.0, keyframe=True)
    sent: list[bytes] = []
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    _send(track, 1, 10.03, keyframe=True)
    count = len(sent)
    assert _layers(sent) == [2], "shown at an unknown size: the largest (no budget yet)"
    slot.show((0, 0), 10.05)
    _send(track, 2, 10.06, keyframe=True)
    assert len(sent) == count, "hidden: nothing forwarded"
    rtcp.clear()
    slot.show((160, 120), 11.0)
    assert _plis(rtcp) == [SSRCS[0]], "shown again, as a thumbnail: a keyframe of the lowest"
    _send(track, 3, 11.0)
    assert len(sent) == count, "not from a delta frame"
    _send(track, 4, 11.03, keyframe=True)
    assert len(sent) == count + 1


def test_the_recording_gets_the_highest_layer_sent_from_a_keyframe() -> None:
    rtcp: list[bytes] = []
    recording = Recording()
    track = _track(rtcp, [recording])
    for frame in range(3):
        _send(track, frame, 10.0 + frame / 30, keyframe=frame == 1)
    track.tick(10.1)
    for frame in range(3, 6):
        _send(track, frame, 10.1 + frame / 30, keyframe=frame == 4)
    assert recording.packets, "recorded"
    assert recording.packets[0][1], "from a keyframe"
    assert {p[-1] for p, _ in recording.packets} == {2}, "the highest layer only"
    numbers = [parse_header(p).sequence for p, _ in recording.packets]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert {parse_header(p).ssrc for p, _ in recording.packets} == {SSRCS[0]}


def test_a_late_layer_packet_is_recorded_but_kept_from_the_slots() -> None:
    """Past the node's real-time bound (sfu.queue_delay): the recording still stores the packet,
    the subscriber does not get it seconds late, and its layer is asked for a keyframe."""
    rtcp: list[bytes] = []
    recording = Recording()
    track = _track(rtcp, [recording])
    _send(track, 0, 10.0, keyframe=True)
    track.tick(10.1)
    sent: list[bytes] = []
    slot = _slot(sent)
    slot.assign(track, now=10.1)
    _send(track, 1, 10.13, keyframe=True)
    recorded, forwarded = len(recording.packets), len(sent)
    assert forwarded == 1 and recorded >= 1
    rtcp.clear()
    for layer, ssrc in enumerate(SSRCS):
        data = struct.pack("!BBHII", 0x80, 96, (layer * 20_000 + 2) & 0xFFFF, 6000, ssrc)
        data += DELTA + bytes([layer]) * 100
        track.forward_layer(data, parse_header(data), 12_000, layer, late=True)
    assert len(sent) == forwarded, "not forwarded late"
    assert len(recording.packets) == recorded + 1, "the recorded layer's late packet is stored"
    assert track.late == 1, "counted once: only the slot's layer had a slot to keep it from"
    assert _plis(rtcp) == [SSRCS[2]], "a keyframe asked of the late layer the slot carries"


TWO_VOICES = 2 * AUDIO_BPS
"""Two audio tracks, each at the floor `audio_reserve` counts them at."""


def test_the_budget_is_split_with_the_speaker_getting_more() -> None:
    assert split_budget(None, [3, 1], TWO_VOICES) == [None, None]
    assert split_budget(1_080_000, [3, 1, 1, 1], TWO_VOICES) == [500_000, 166_666, 166_666, 166_666]
    nothing_left = split_budget(50_000, [1], TWO_VOICES)
    assert nothing_left == [0], "audio first: nothing left is still a budget"


def test_a_share_beyond_what_a_tile_wants_goes_to_the_others() -> None:
    """4 Mbps, the speaker's top layer wanting 1 Mbps of its 2 Mbps share: the rest is split
    among the three others (water-filling), who then get 1 Mbps each, not 666 kbps."""
    wants = [1_000_000, 1_000_000, 1_000_000, 1_000_000]
    budgets = split_budget(4_080_000, [3, 1, 1, 1], TWO_VOICES, wants)
    assert budgets == [1_000_000, 1_000_000, 1_000_000, 1_000_000]
    assert split_budget(3_080_000, [3, 1, 1, 1], TWO_VOICES, [100_000, None, None, None]) == [
        100_000, 966_666, 966_666, 966_666,
    ]  # fmt: skip
    assert needed_bps(wants, TWO_VOICES) == 4_080_000
    assert needed_bps([None, None], TWO_VOICES) is None


def test_audio_is_counted_at_what_it_takes_on_the_wire_at_least_its_floor() -> None:
    """A browser's 32 kbps Opus takes ~58 kbps on the wire; a silent one still has room kept."""
    assert audio_reserve([]) == 0
    assert audio_reserve([58_000, 0]) == 58_000 + AUDIO_BPS
    assert audio_reserve([90_000, 90_000]) == 180_000


def _measured(track: LayeredTrack, now: float) -> None:
    """Layers as the meter would know them after a second of a browser's three encodings."""
    for state, size, bitrate in zip(
        track.meter.layers, SIZES, (150_000, 500_000, 1_400_000), strict=True
    ):
        state.width, state.height = size
        state.bitrate, state.last_packet_at = bitrate, now


def test_a_subscriber_s_budget_goes_mostly_to_the_speaker() -> None:
    subscriber = Subscriber(None, "sub", RTCConfiguration(), lambda event: None, None)  # type: ignore[arg-type]
    tracks = []
    for n in range(3):
        track = _track([])
        track.info = TrackInfo("room", f"pub{n}", f"pub{n}:0", "video", "video/VP8", 90000, 96,
                               layers=("q", "h", "f"))  # fmt: skip
        slot = _slot([])
        slot.assign(track, now=10.0)
        subscriber.slots.append(slot)
        tracks.append(track)

    def choose(now: float, speaker: str | None) -> None:
        for track in tracks:
            _measured(track, now)
        subscriber.choose_layers(now, speaker)

    def layers() -> list[int | None]:
        return [s.layer_switch.target for s in subscriber.slots if s.layer_switch is not None]

    choose(10.0, speaker=None)
    assert layers() == [0, 0, 0], "the start estimate (300 kbps, `sfu.probing`): the lowest"
    # A subscriber whose answer took no transport-cc (REMB only): no start value.
    subscriber.downlink.forget_start()
    choose(10.2, speaker=None)
    assert layers() == [2, 2, 2], "no estimate yet, tiles of unknown size: the top layer"
    subscriber.downlink.on_remb(
        3_500_000
    )  # (its REMB, no transport feedback): shares 0.7, 2.1 and 0.7 Mbps
    choose(10.5, speaker="pub1")
    assert layers() == [1, 2, 1], "the speaker's share fits the top layer, the others' not"
    subscriber.slots[0].show((160, 120), 11.0)
    choose(11.0, speaker="pub1")
    assert layers()[0] == 0, "a thumbnail needs no more than the lowest"
    subscriber.slots[2].show((0, 0), 11.5)
    choose(11.5, speaker="pub1")
    assert layers()[2] is None and subscriber.slots[2] not in tracks[2].slots, "hidden: nothing"


def test_a_dip_in_the_estimate_on_a_clean_link_is_confirmed_before_the_layer_drops() -> None:
    """The estimate falls under the top layer's rate with no loss (the delay detector's cut):
    the top layer is kept for `DOWN_CONFIRM_S` while a probe is asked for, then left; with
    loss, at once."""
    subscriber = Subscriber(None, "sub", RTCConfiguration(), lambda event: None, None)  # type: ignore[arg-type]
    track = _track([])
    track.info = TrackInfo("room", "pub", "pub:0", "video", "video/VP8", 90000, 96,
                           layers=("q", "h", "f"))  # fmt: skip
    slot = _slot([])
    slot.assign(track, now=10.0)
    subscriber.slots.append(slot)
    subscriber.downlink.forget_start()
    switch = slot.layer_switch
    assert switch is not None

    def choose(now: float) -> int | None:
        _measured(track, now)
        subscriber.choose_layers(now, None)
        return switch.target

    subscriber.downlink.on_remb(2_500_000)
    assert choose(10.0) == 2
    switch.current = 2  # its keyframe came: the top layer is forwarded
    subscriber.downlink.on_remb(1_200_000)
    assert choose(11.0) == 2, "held: the link may still carry it"
    assert subscriber._confirming, "a probe is asked for"
    assert choose(11.5) == 2
    assert choose(11.0 + DOWN_CONFIRM_S) == 1, "not confirmed: the step down"
    assert not subscriber._confirming
    switch.current = 1
    subscriber.downlink.on_remb(2_500_000)
    assert choose(13.0) == 2
    switch.current = 2
    subscriber.downlink.on_remb(1_200_000)
    subscriber.downlink.loss_fraction = 0.1
    assert choose(14.0) == 1, "a dip with loss: the link dropped, at once"


def test_a_layer_s_packet_received_twice_is_forwarded_once() -> None:
    """An OpenH264 layer's padding resends its recent packets over RTX: each reached the
    subscriber a second time (half of what one got in an H.264 room, seen by its transport
    feedback as a third lost, so its estimate sat at 120 kbps on loopback)."""
    sent: list[bytes] = []
    track = _track([])
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    track.choose(slot, 0, 10.0)
    _send(track, 0, at_s=10.0, keyframe=True)
    _send(track, 1, at_s=10.033)
    count = len(sent)
    _send(track, 1, at_s=10.05)  # every layer's frame 1 again
    assert len(sent) == count, "nothing forwarded twice"
    assert track.duplicates == 3, "one per layer"
    _send(track, 2, at_s=10.066)
    assert len(sent) == count + 1


def test_receiver_reports_have_a_block_for_each_layer_with_its_own_loss_and_sender_report() -> None:
    track = _track([])
    for frame in range(10):
        if frame not in (3, 4):
            _send(track, frame, at_s=1.0 + frame / 30)
    # Layer 2 loses two more packets than the others (frames 3 and 4 lost by all).
    for frame in (10, 13):
        seq = 40_000 + frame
        data = struct.pack("!BBHII", 0x80, 96, seq, frame * 3000, SSRCS[2]) + DELTA
        track.forward_layer(data, parse_header(data), 2000, 2)
    track.on_sender_report(0x1111_2222_3333_4444, 0, now=2.0, layer=1)
    blocks = {block.ssrc: block for block in track.receiver_reports(now=2.25)}
    assert set(blocks) == set(SSRCS), "one block per layer's stream"
    assert blocks[SSRCS[0]].packets_lost == 2 and blocks[SSRCS[0]].highest_sequence == 9
    assert blocks[SSRCS[2]].packets_lost == 4 and blocks[SSRCS[2]].highest_sequence == 40_013
    assert (blocks[SSRCS[1]].lsr, blocks[SSRCS[1]].dlsr) == (0x2222_3333, 65536 // 4)
    assert blocks[SSRCS[0]].lsr == 0 and blocks[SSRCS[0]].dlsr == 0, "no SR of its own yet"


def test_a_layer_not_received_yet_has_no_block() -> None:
    track = _track([])
    data = struct.pack("!BBHII", 0x80, 96, 5, 0, SSRCS[0]) + _key(0)
    track.forward_layer(data, parse_header(data), 1000, 0)
    assert [block.ssrc for block in track.receiver_reports(now=1.5)] == [SSRCS[0]]
