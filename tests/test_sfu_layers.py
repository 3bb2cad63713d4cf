"""One subscriber's simulcast layer (sfu/layers.py): switches wait for a keyframe of the wanted
layer, and what the subscriber receives is one stream, its sequence numbers, timestamps, VP8
picture ids and TL0PICIDX continuous across every switch. Built VP8 packets, no event loop."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

from core.media.payloads import parse_vp8_descriptor
from core.media.rtp import RtpHeader
from sfu.layers import LayerSwitch, rewrite_vp8_descriptor, vp8_picture

CLOCK = 90_000
FRAME_TICKS = 3_000  # 30 fps
KEY, DELTA = b"\x10\x02\x00\x9d\x01\x2a", b"\x11\x02\x00"  # VP8 frame header: P bit 0 / 1


@dataclass
class Layer:
    """One simulcast layer as the publisher numbers it (each starts somewhere else)."""

    sequence: int
    timestamp: int
    picture_id: int
    tl0: int


@dataclass
class Packet:
    layer: int
    frame: int
    header: RtpHeader
    payload: bytes


def _vp8(picture_id: int, tl0: int, *, first: bool, keyframe: bool) -> bytes:
    descriptor = bytes(
        [0x90 if first else 0x80, 0xE0, 0x80 | picture_id >> 8, picture_id & 0xFF, tl0, 0x00]
    )
    return descriptor + (KEY if keyframe else DELTA) + b"data" if first else descriptor + b"more"


def publish(frames: range, keyframes: dict[int, set[int]], per_frame: int = 2) -> list[Packet]:
    """Three layers' packets, frame by frame, as they arrive interleaved. `keyframes`: frame
    index → the layers whose frame is a keyframe there."""
    layers = [Layer(100, 1_000, 7_000, 40), Layer(30_000, 5_000_000, 20, 250),
              Layer(65_530, 4_294_960_000, 32_760, 3)]  # fmt: skip
    packets: list[Packet] = []
    for frame in frames:
        for index, layer in enumerate(layers):
            picture_id = (layer.picture_id + frame) & 0x7FFF
            tl0 = (layer.tl0 + frame) & 0xFF
            timestamp = (layer.timestamp + frame * FRAME_TICKS) & 0xFFFFFFFF
            for part in range(per_frame):
                sequence = (layer.sequence + frame * per_frame + part) & 0xFFFF
                payload = _vp8(picture_id, tl0, first=part == 0,
                               keyframe=index in keyframes.get(frame, set()))  # fmt: skip
                header = RtpHeader(96, part == per_frame - 1, sequence, timestamp, 1000 + index,
                                   12, 12 + len(payload), {})  # fmt: skip
                packets.append(Packet(index, frame, header, payload))
    return packets


@dataclass
class Received:
    """What the subscriber got of one packet."""

    layer: int
    frame: int
    sequence: int
    timestamp: int
    picture_id: int | None
    tl0: int | None


def run(switch: LayerSwitch, packets: list[Packet], wants: dict[int, int | None] | None = None,
        ) -> list[Received]:  # fmt: skip
    """Feed packets in order (a frame's index is its time); `wants`: frame → layer wanted from
    that frame on."""
    received: list[Received] = []
    for packet in packets:
        if wants and packet.frame in wants and packet.layer == 0 and packet.header.marker is False:
            switch.want(wants.pop(packet.frame))
        out = switch.forward(packet.layer, packet.header, packet.payload, packet.frame / 30)
        if out is None:
            continue
        sequence, timestamp, prefix, skip = out
        payload = prefix + packet.payload[skip:]
        descriptor = parse_vp8_descriptor(payload)
        assert payload[descriptor.size :] == packet.payload[descriptor.size :], "VP8 data intact"
        received.append(Received(packet.layer, packet.frame, sequence, timestamp,
                                 descriptor.picture_id, descriptor.tl0_pic_idx))  # fmt: skip
    return received


def assert_one_stream(received: list[Received]) -> None:
    """No sequence gap, timestamps rising frame to frame, picture ids and TL0PICIDX +1 per frame."""
    for before, after in itertools.pairwise(received):
        assert after.sequence == (before.sequence + 1) & 0xFFFF, (before, after)
        new_frame = (after.layer, after.frame) != (before.layer, before.frame)
        step = (after.timestamp - before.timestamp) & 0xFFFFFFFF
        if new_frame:
            assert 0 < step < 0x8000_0000, ("timestamp must rise", before, after)
            assert after.picture_id == (before.picture_id + 1) & 0x7FFF, (before, after)  # type: ignore[operator]
            assert after.tl0 == (before.tl0 + 1) & 0xFF, (before, after)  # type: ignore[operator]
        else:
            assert step == 0 and after.picture_id == before.picture_id


def _switch() -> LayerSwitch:
    return LayerSwitch("video/VP8", CLOCK, first_sequence=5_000, first_timestamp=77_000,
                       first_picture_id=300, first_tl0=9)  # fmt: skip


def test_a_subscriber_starts_at_a_keyframe_of_the_wanted_layer() -> None:
    switch = _switch()
    assert switch.want(1) is True, "ask the publisher for a keyframe of layer 1"
    received = run(switch, publish(range(10), {0: {0, 2}, 4: {1}}))
    assert {r.layer for r in received} == {1}
    assert received[0].frame == 4, "nothing before layer 1's keyframe"
    assert (received[0].sequence, received[0].timestamp) == (5_000, 77_000)
    assert (received[0].picture_id, received[0].tl0) == (300, 9)
    assert_one_stream(received)
    assert not switch.pending and switch.want(1) is False


def test_switching_up_keeps_the_old_layer_until_the_new_ones_keyframe() -> None:
    switch = _switch()
    switch.want(0)
    received = run(switch, publish(range(20), {0: {0}, 8: {2}}), wants={3: 2})
    layers = [(r.frame, r.layer) for r in received]
    assert layers[0] == (0, 0)
    assert all(layer == 0 for frame, layer in layers if frame < 8), "no freeze while waiting"
    # Frame 8 arrives in both layers: layer 0's copy goes out, then layer 2's keyframe.
    assert [layer for frame, layer in layers if frame == 8] == [0, 0, 2, 2]
    assert all(layer == 2 for frame, layer in layers if frame > 8)
    assert_one_stream(received)


def test_switching_down_and_up_again_stays_one_stream() -> None:
    switch = _switch()
    switch.want(2)
    received = run(switch, publish(range(30), {0: {0, 1, 2}, 6: {0}, 12: {1}, 20: {2}}),
                   wants={4: 0, 10: 1, 15: 2})  # fmt: skip
    at_switches = [[r.layer for r in received if r.frame == f] for f in (0, 6, 12, 20)]
    assert at_switches == [[2, 2], [0, 0], [0, 0, 1, 1], [1, 1, 2, 2]]
    assert len(switch.switches) == 4
    assert_one_stream(received)


def test_a_lost_packet_is_the_only_gap() -> None:
    switch = _switch()
    switch.want(0)
    packets = publish(range(6), {0: {0}})
    lost = next(p for p in packets if p.layer == 0 and p.frame == 3 and p.header.marker)
    received = run(switch, [p for p in packets if p is not lost])
    gaps = [(b.sequence, a.sequence) for b, a in itertools.pairwise(received)
            if a.sequence != (b.sequence + 1) & 0xFFFF]  # fmt: skip
    assert len(gaps) == 1 and (gaps[0][1] - gaps[0][0]) & 0xFFFF == 2


def test_late_packets_never_land_on_numbers_already_used() -> None:
    switch = _switch()
    switch.want(0)
    packets = publish(range(12), {0: {0}, 5: {1}})
    run(switch, [p for p in packets if p.frame < 4])
    switch.want(1)
    after = run(switch, [p for p in packets if 4 <= p.frame < 8])
    # Reordered in the network: an old-layer packet and a new-layer one from before its
    # keyframe arrive after the switch.
    old_layer = next(p for p in packets if p.layer == 0 and p.frame == 4)
    before_key = next(p for p in packets if p.layer == 1 and p.frame == 4)
    for late in (old_layer, before_key):
        assert switch.forward(late.layer, late.header, late.payload, 0.3) is None
    # A late packet of the current layer, after its keyframe, takes its own number.
    late = next(p for p in packets if p.layer == 1 and p.frame == 6 and p.header.marker)
    out = switch.forward(late.layer, late.header, late.payload, 0.3)
    assert out is not None
    assert out[0] in {r.sequence for r in after if r.layer == 1 and r.frame == 6}


def test_timestamps_advance_by_the_time_nothing_was_sent() -> None:
    switch = _switch()
    switch.want(0)
    packets = publish(range(40), {0: {0}, 30: {0}})
    sent = run(switch, [p for p in packets if p.frame < 10])
    assert switch.want(None) is False, "stopping needs no keyframe"
    hidden = run(switch, [p for p in packets if 10 <= p.frame < 20])
    assert hidden == [], "a hidden tile gets nothing"
    switch.want(0)
    resumed = run(switch, [p for p in packets if p.frame >= 20])
    assert resumed[0].frame == 30, "resumes at a keyframe"
    assert resumed[0].sequence == (sent[-1].sequence + 1) & 0xFFFF
    gap = (resumed[0].timestamp - sent[-1].timestamp) & 0xFFFFFFFF
    assert gap == 21 * FRAME_TICKS, "frame 9 to frame 30 at 30 fps: 0.7 s of the 90 kHz clock"
    assert_one_stream(sent + resumed)


def test_a_nack_finds_the_layer_and_number_of_each_packet() -> None:
    switch = _switch()
    switch.want(0)
    packets = publish(range(12), {0: {0}, 6: {2}}, per_frame=3)
    switch.want(0)
    first = run(switch, [p for p in packets if p.frame < 4])
    switch.want(2)
    second = run(switch, [p for p in packets if p.frame >= 4])
    sources = {(p.layer, p.header.sequence): p for p in packets}
    for got in first + second:
        found = switch.source_of(got.sequence)
        assert found is not None
        kept, in_sequence = found
        assert kept.layer == got.layer
        assert sources[(got.layer, in_sequence)].frame == got.frame


def test_h264_switches_at_an_idr_and_keeps_its_payload() -> None:
    switch = LayerSwitch("video/H264", CLOCK, first_sequence=1, first_timestamp=1)
    switch.want(1)
    idr, slice_ = bytes([0x65, 0x88]), bytes([0x41, 0x9A])
    delta = RtpHeader(102, True, 50, 9_000, 2, 12, 14, {})
    assert switch.forward(1, delta, slice_, 0.0) is None
    key = RtpHeader(102, True, 51, 12_000, 2, 12, 14, {})
    assert switch.forward(1, key, idr, 0.0) == (1, 1, b"", 0)
    assert switch.forward(1, RtpHeader(102, True, 52, 15_000, 2, 12, 14, {}), slice_, 0.0) == (
        2, 3_001, b"", 0,
    )  # fmt: skip


def test_vp8_descriptor_fields_are_shifted_in_place_and_wrap() -> None:
    wide = bytes([0x90, 0xC0, 0x80 | 0x7F, 0xFF, 0xFF]) + KEY
    prefix, skip, picture_id, tl0 = rewrite_vp8_descriptor(wide, 2, 1)
    assert (picture_id, tl0, skip) == (1, 0, 5), "15-bit id and TL0PICIDX wrap"
    assert prefix == bytes([0x90, 0xC0, 0x80, 0x01, 0x00])
    narrow = bytes([0x90, 0x80, 0x7E]) + KEY
    assert rewrite_vp8_descriptor(narrow, 3, 0)[:3] == (bytes([0x90, 0x80, 0x01]), 3, 1)
    assert vp8_picture(narrow) == (0x7E, None)
    plain = bytes([0x10]) + KEY  # no X bit: nothing to shift
    assert rewrite_vp8_descriptor(plain, 5, 5) == (b"", 0, None, None)
    truncated = bytes([0x90, 0xC0, 0x80])
    assert rewrite_vp8_descriptor(truncated, 5, 5) == (b"", 0, None, None)


def test_without_chosen_starting_numbers_the_first_layer_goes_out_unrewritten() -> None:
    switch = LayerSwitch("video/VP8", CLOCK, first_sequence=1, first_timestamp=1)
    switch.want(0)
    packets = publish(range(12), {0: {0}, 6: {1}})
    untouched = [switch.forward(p.layer, p.header, p.payload, p.frame / 30)
                 for p in packets if p.frame < 3]  # fmt: skip
    assert all(out is not None and out[2:] == (b"", 0) for out in untouched if out is not None)
    first = run(switch, [p for p in packets if 3 <= p.frame < 5])
    assert first[0].picture_id == 7_003 and first[0].tl0 == 43, "the publisher's own numbers"
    switch.want(1)
    assert_one_stream(first + run(switch, [p for p in packets if p.frame >= 5]))


def test_subscribers_sharing_a_packet_get_each_their_own_rewrite() -> None:
    """The rewritten descriptors of one packet are shared by the slots it goes to (keyed by
    their offsets): two subscribers that came to layer 1 from different layers (different
    picture id offsets) and a third that came as the first did get what each would get alone."""
    packets = publish(range(12), {0: {0, 1, 2}, 4: {1}})
    switches = []
    for started_on in (0, 2, 0):
        switch = LayerSwitch("video/VP8", CLOCK, first_sequence=900, first_timestamp=5)
        switch.want(started_on)
        for packet in (p for p in packets if p.frame < 8):  # to layer 1 at frame 4's keyframe
            if packet.frame == 2 and packet.layer == 0:
                switch.want(1)
            switch.forward(packet.layer, packet.header, packet.payload, packet.frame / 30)
        assert switch.current == 1
        switches.append(switch)
    assert switches[0].switch.picture_id_offset != switches[1].switch.picture_id_offset
    alone = [copy.deepcopy(s) for s in switches]
    for packet in (p for p in packets if p.frame >= 8 and p.layer == 1):
        rewrites: dict[tuple[int, int], tuple[bytes, int]] = {}
        shared = [s.forward(1, packet.header, packet.payload, 0.5, rewrites) for s in switches]
        own = [s.forward(1, packet.header, packet.payload, 0.5) for s in alone]
        assert shared == own and None not in shared
        assert len(rewrites) == 2, "the third subscriber's rewrite is the first's"
