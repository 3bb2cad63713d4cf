"""Which layer a subscriber should get (sfu/layer_choice.py): nothing for a hidden tile, the
smallest layer covering the tile, within the bandwidth budget with hysteresis, never less than
the lowest layer sent. Plain functions, no event loop."""

from __future__ import annotations

import struct

from sfu.layer_choice import (
    DOWN_CONFIRM_S,
    LayerMeter,
    LayerState,
    budget_to_climb,
    choose_layer,
    confirm_down,
)

NOW = 100.0


def _layers(*rates: int, sizes: tuple[tuple[int, int], ...] = ((320, 180), (640, 360),
            (1280, 720)), silent: tuple[int, ...] = ()) -> list[LayerState]:  # fmt: skip
    states = []
    for index, (rate, (w, h)) in enumerate(zip(rates, sizes, strict=False)):
        heard = None if index in silent else NOW - 0.1
        states.append(LayerState(width=w, height=h, bitrate=rate, last_packet_at=heard))
    return states


LAYERS = _layers(150_000, 500_000, 1_500_000)


def _choose(layers: list[LayerState], tile: tuple[int, int] | None, budget: int | None = None,
            current: int | None = None) -> int | None:  # fmt: skip
    return choose_layer(layers, tile=tile, budget_bps=budget, current=current, now=NOW)


def test_a_hidden_tile_gets_nothing() -> None:
    assert _choose(LAYERS, None) is None
    assert _choose(LAYERS, (0, 0), current=2) is None


def test_the_smallest_layer_covering_the_tile() -> None:
    assert _choose(LAYERS, (160, 90)) == 0, "a thumbnail gets the thumbnail layer"
    assert _choose(LAYERS, (320, 180)) == 0
    assert _choose(LAYERS, (600, 340)) == 1, "a little smaller than the tile still covers it"
    assert _choose(LAYERS, (700, 400)) == 1, "640x360 is 90% of 700x400"
    assert _choose(LAYERS, (720, 420)) == 2
    assert _choose(LAYERS, (2560, 1440)) == 2, "nothing covers it: the largest there is"


def test_a_layer_the_browser_stopped_sending_is_not_chosen() -> None:
    paused_top = _layers(150_000, 500_000, 1_500_000, silent=(2,))
    assert _choose(paused_top, (1280, 720)) == 1
    assert _choose(_layers(150_000, 500_000, 1_500_000, silent=(0, 1, 2)), (640, 360),
                   current=1) == 1, "nothing arrives: keep what was chosen"  # fmt: skip


def test_the_budget_caps_the_layer_but_never_below_the_lowest_sent() -> None:
    assert _choose(LAYERS, (1280, 720), budget=3_000_000) == 2
    assert _choose(LAYERS, (1280, 720), budget=800_000) == 1
    assert _choose(LAYERS, (1280, 720), budget=50_000) == 0, "a small picture beats a frozen one"
    only_top_two = _layers(150_000, 500_000, 1_500_000, silent=(0,))
    assert _choose(only_top_two, (160, 90), budget=50_000) == 1


def test_climbing_needs_headroom_and_staying_does_not() -> None:
    # Layer 1 runs at 500 kbps; the estimate hovers around 550 kbps.
    assert _choose(LAYERS, (1280, 720), budget=550_000, current=0) == 0, "no headroom to climb"
    assert _choose(LAYERS, (1280, 720), budget=550_000, current=1) == 1, "no reason to drop"
    assert _choose(LAYERS, (1280, 720), budget=700_000, current=0) == 1
    assert _choose(LAYERS, (1280, 720), budget=450_000, current=1) == 0, "no longer fits"


def test_unknown_picture_sizes_leave_the_choice_to_the_budget() -> None:
    unsized = _layers(150_000, 500_000, 1_500_000, sizes=((0, 0),) * 3)
    assert _choose(unsized, (160, 90)) == 2
    assert _choose(unsized, (160, 90), budget=800_000) == 1


def test_a_layer_whose_size_is_not_known_yet_is_taken_as_larger_than_those_below() -> None:
    """Only the thumbnail layer's keyframe was seen (the others' came before the SFU knew the
    layers, and a browser sends no more unasked): a large tile must still climb."""
    only_low_sized = _layers(150_000, 500_000, 1_500_000,
                             sizes=((320, 180), (0, 0), (0, 0)))  # fmt: skip
    assert _choose(only_low_sized, (1280, 720)) == 2
    assert _choose(only_low_sized, (1280, 720), budget=800_000) == 1
    assert _choose(only_low_sized, (320, 180)) == 0, "a known layer that covers it is enough"
    top_unknown = _layers(150_000, 500_000, 1_500_000, sizes=((320, 180), (640, 360), (0, 0)))
    assert _choose(top_unknown, (600, 340)) == 1
    assert _choose(top_unknown, (1280, 720)) == 2


def _vp8_keyframe(width: int, height: int) -> bytes:
    descriptor = bytes([0x90, 0x80, 0x80, 0x01])  # X, S, 15-bit picture id
    return descriptor + b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"data"


def test_the_meter_learns_rates_sizes_and_which_layers_are_sent() -> None:
    meter = LayerMeter(3)
    for tick in range(31):  # 30 packets of 1,000 bytes a second on layer 0, 1.0 s
        meter.on_packet(0, 1_000, NOW - 1.0 + tick / 30)
    meter.on_packet(1, 1_000, NOW - 2.0)
    meter.on_keyframe(0, _vp8_keyframe(320, 180))
    meter.on_keyframe(1, b"\x90")  # truncated: ignored
    state = meter.layers[0]
    assert (state.width, state.height) == (320, 180)
    assert 230_000 < state.bitrate < 250_000  # 30,000 bytes in 1 s, the first packet's included
    assert [s.active(NOW) for s in meter.layers] == [True, False, False]
    assert meter.layers[1].width == 0


def test_a_step_down_the_budget_alone_asks_for_on_a_clean_link_is_held_a_moment() -> None:
    """The estimate dipped under the top layer (a delay spike): the top layer is kept for
    `DOWN_CONFIRM_S` while a probe checks the link, then left if the dip is still there."""
    assert confirm_down(1, 2, 2, None, NOW, clean=True) == (2, NOW)
    assert confirm_down(1, 2, 2, NOW, NOW + 0.5, clean=True) == (2, NOW)
    assert confirm_down(1, 2, 2, NOW, NOW + DOWN_CONFIRM_S, clean=True) == (1, None)
    # The probe found the link: the budget holds the layer again, the hold is over.
    assert confirm_down(2, 2, 2, NOW, NOW + 0.6, clean=True) == (2, None)


def test_a_step_down_for_the_tile_or_a_lossy_link_is_not_held() -> None:
    assert confirm_down(1, 2, 2, None, NOW, clean=False) == (1, None), "loss: the link dropped"
    assert confirm_down(0, 2, 0, None, NOW, clean=True) == (0, None), "the tile shrank"
    assert confirm_down(None, 2, None, None, NOW, clean=True) == (None, None), "hidden"
    assert confirm_down(2, 1, 2, None, NOW, clean=True) == (2, None), "a step up"


def test_the_budget_a_track_wants_for_its_layer_is_enough_to_climb_to_it() -> None:
    # Rounded down (int(rate / UP_HEADROOM)), the want missed its own layer for most bitrates:
    # a loaded subscriber flapped between the two layers below the one its tile wanted.
    for top in range(300_001, 2_000_000, 997):
        layers = _layers(100_000, 300_000, top)
        budget = budget_to_climb(top)
        assert _choose(layers, (1280, 720), budget, current=1) == 2, top
        assert _choose(layers, (1280, 720), budget - 1, current=1) == 1, top  # the least such
